"""The README and docs/ run: every command and snippet in them is executed here, or listed with
the reason it cannot be, so they cannot drift from the code.

What counts: fenced blocks tagged bash, sh, shell or console (one command per line, `\\`
continuations joined, a `#` comment after a space dropped; in console blocks only `$ ` lines)
and python (one snippet per block). Untagged blocks are output samples and diagrams, and yaml
and json blocks are data shown; neither is run.

How they run: in document order (README.md, then docs/*.md by name), each distinct command once,
with bash, in a throw-away directory that holds this checkout's code by link and is also the
local datastore (METAFLOW_DATASTORE_SYSROOT_LOCAL), so cards land where the Client API reads
them (README: run flows from the repository root). Its `.venv` is the environment running these
tests, and its bin/ leads PATH, as `source .venv/bin/activate` does. Snippets run as scripts in
the same place and environment, without ANTHROPIC_API_KEY (the cycles use Optuna alone here).

The objectives there are the shipped ones with their budget cut (CUT_BUDGET): what drifts is the
commands' flags, files and chaining, not the budget's numbers, and a digits cycle as shipped
takes half a minute on a free two-core machine and minutes on a busy one.

Every command must exit 0 without a traceback, or as EXPECTED says. NOT_RUN says what does not
run here and why, CHANGED what runs in another form and why, PLACEHOLDERS which value from the
cycles run here stands in for a doc's example value. Keys are the commands' text (whitespace
normalised), so editing a listed command forces a look at its entry, and an entry whose
command left the docs fails.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import yaml

from factory_lib.data import load_splits
from factory_lib.objective import load_objective
from factory_lib.runs.client import branch_name
from tests.conftest import ROOT, run_and_kill_after_first
from tests.scale_doc import DOC as SCALE_OUT_DOC
from tests.scale_doc import EXERCISED, NOT_RUN_HERE

DOCS = (ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")))
SHELLS = ("bash", "sh", "shell", "console")
FENCE = re.compile(
    r"^(?P<indent>[ \t]*)```(?P<lang>[\w-]*)[^\n]*\n(?P<body>.*?)^(?P=indent)```", re.M | re.S
)
COMMENT = re.compile(r"(^|\s)#.*$")
# What a command still holds that only a person can fill in: `<run-id>`, `$IMAGE`.
UNFILLED = re.compile(r"<[\w-]+>|\$\{?[A-Z_]+")
TIME = "time: one chained cycle runs the command; tests/test_cli.py runs loops to their stops"
SCALE_OUT = "scale-out: tests/test_scale_out.py runs it (moto server, Metaflow compilers)"
NO_DOCKER = "needs a Docker engine or a Kubernetes cluster, which CI does not have"
PENDING = f"'digits' on {branch_name()} has no promotion awaiting approval"
NO_APPROVAL = "digits has no promotion.require_approval; tests/test_registry.py approves one"
NOTHING_TO_ADOPT = "'digits' has no runs from before branches left to adopt"
ALL_ON_BRANCHES = (
    "every cycle run here is on a branch; tests/test_branches.py adopts a history that the "
    "code from before branches ran"
)

SERVER = "a server that runs until stopped: tests/test_serve.py runs it on a free loopback port"
NEEDS_SERVER = "needs `factory serve` running: tests/test_serve.py sends such requests to one"
NOT_RUN: dict[str, str] = {
    "factory serve --objective digits --port 8000": SERVER,
    "curl -s localhost:8000/health": NEEDS_SERVER,
    'curl -s localhost:8000/predict -d \'{"input": [0, 0, 5, 13, 9, 1, 0, 0, 0, 0, 13, 15, 10, '
    "15, 5, 0, 0, 3, 15, 2, 0, 11, 8, 0, 0, 4, 12, 0, 0, 8, 8, 0, 0, 5, 8, 0, 0, 9, 8, 0, 0, 4, "
    "11, 0, 1, 12, 7, 0, 0, 2, 14, 5, 10, 12, 0, 0, 0, 0, 6, 13, 10, 0, 0, 0]}'": NEEDS_SERVER,
    "curl -s localhost:8000/model": NEEDS_SERVER,
    "curl -s localhost:8000/metrics": NEEDS_SERVER,
    "factory loop --cycles 1 --watch --watch-every 600": (
        "watches until stopped; the --watch-checks 1 line runs here, and tests/test_serve.py "
        "runs a watch that starts a cycle"
    ),
    "docker build -f infra/docker/serve.Dockerfile -t dark-factory-serve .": NO_DOCKER,
    "docker run -p 8000:8000 -e METAFLOW_PROFILE=aws -v ~/.metaflowconfig:/root/.metaflowconfig "
    "dark-factory-serve factory serve --objective digits --host 0.0.0.0": NO_DOCKER,
    "python benchmarks/serve.py": (
        "two digits cycles and 12,000 requests; tests/test_benchmarks.py runs it shrunk"
    ),
    "python benchmarks/serve.py --requests 400 --clients 1 8": (
        "two digits cycles; tests/test_benchmarks.py runs it shrunk"
    ),
    "bash .ci/setup && .venv/bin/python flows/cycle.py run": (
        "set-up: CI runs .ci/setup before these tests (.ci/run); the cycle, "
        "`python flows/cycle.py run`, runs here"
    ),
    "bash .ci/setup dev && .venv/bin/lint-imports && .venv/bin/python -m pytest": (
        "what CI runs (.ci/run): these tests themselves"
    ),
    "ruff check . && ruff format --check . && mypy && lint-imports && pytest": (
        "the checks before a commit, and these tests themselves"
    ),
    'pytest -m "not slow"': "these tests themselves",
    "python flows/cycle.py card view <run-id>/end": (
        "opens a browser; `card get` of the same card runs here"
    ),
    "python benchmarks/overhead.py": (
        "full digits cycles for minutes; its numbers are written down in docs/benchmarks.md"
    ),
    "python benchmarks/overhead.py --vs-baseline": (
        "three pairs of digits cycles and baseline scripts, minutes; tests/test_benchmarks.py "
        "runs one pair, shrunk"
    ),
    "python benchmarks/search.py": (
        "writes its plots into docs/; tests/test_benchmarks.py runs it shrunk, plots elsewhere"
    ),
    "python benchmarks/pruning.py": "minutes; tests/test_benchmarks.py runs it shrunk",
    "MLFLOW_ALLOW_FILE_STORE=true mlflow ui --backend-store-uri mlruns/": (
        "a server waiting for a browser, from the full mlflow package (not installed); the "
        "snippet before it reads the runs with MLflow's client"
    ),
    "tensorboard --logdir logs/": (
        "a server waiting for a browser; tests/test_tracking.py reads the event files with "
        "TensorBoard's own reader"
    ),
    "python benchmarks/data.py": (
        "writes 12 GiB and trains on it for minutes; tests/test_benchmarks.py runs it --quick"
    ),
}
# A doc's command → (what runs instead, why).
CHANGED: dict[str, tuple[str, str]] = {
    "factory loop --cycles 5": ("factory loop --cycles 1", TIME),
    "factory loop --cycles 3 --objective wine --trials 4": (
        "factory loop --cycles 1 --objective wine --trials 4",
        TIME,
    ),
    "factory loop --cycles 10 --config my/objective.yaml --fresh": (
        "factory loop --cycles 1 --config my/objective.yaml --fresh",
        TIME,
    ),
    ".venv/bin/jupyter lab notebooks/explore.ipynb": (
        ".venv/bin/jupyter lab --version",
        "a server waiting for a browser: only that .ci/setup installs it (the nbconvert "
        "command executes the notebook)",
    ),
}
# A doc's command → (its exit code, what its output must hold, why), where not 0 and anything.
EXPECTED: dict[str, tuple[int, str, str]] = {
    'factory approve --objective digits --reason "checked the card"': (1, PENDING, NO_APPROVAL),
    "factory reject --objective digits": (1, PENDING, NO_APPROVAL),
    "factory adopt --objective digits": (1, NOTHING_TO_ADOPT, ALL_ON_BRANCHES),
    "factory adopt --objective digits --production": (1, NOTHING_TO_ADOPT, ALL_ON_BRANCHES),
    "factory drift --objective digits --served": (
        1,
        "no served traffic of 'digits' sampled",
        "nothing was served in this datastore; tests/test_serve.py samples real traffic",
    ),
    "factory loop --cycles 3 --drift-data new.npz": (
        0,
        "stop: no drift, no cycle started",
        "new.npz here is digits' held-out split (place)",
    ),
}
# A doc's example value → the value from the cycles run here that replaces it (Values).
PLACEHOLDERS = {
    "<run-id>": "run",  # the latest cycle of digits run by `python flows/cycle.py ...`
    "<newest-run-id>": "newest",  # the newest cycle of digits, as `factory status` lists it
    "c002-t05": "champion",  # a trial of that search: its champion
    "1733000000000001": "first_run",  # the first cycle of that search
    "c001-t01": "first_champion",  # an earlier champion: that first cycle's
}
# A doc's command → a file it must leave in the working directory.
LEAVES = {
    "python flows/cycle.py card get <run-id>/end card.html": "card.html",
    "factory export-optuna --objective digits sqlite:///digits.db": "digits.db",
    ".venv/bin/jupyter nbconvert --to html --execute notebooks/explore.ipynb": (
        "notebooks/explore.html"
    ),
}
# Every objective's budget in the throw-away copy: seconds per cycle, the gate still measures.
CUT_BUDGET = {"budget": {"trials_per_cycle": 2, "max_epochs": 3}, "promotion": {"seeds": 2}}
# What the code is reached through there; objectives/ and notebooks/ are copies (written to).
LINKED = ("flows", "factory_lib", "benchmarks", "infra")


@dataclass(frozen=True)
class DocCode:
    """A command or snippet of a doc; `key` is its text, whitespace normalised."""

    doc: str
    kind: str  # "shell" or "python"
    text: str

    @property
    def key(self) -> str:
        return " ".join(self.text.split())


def doc_code(path: Path) -> list[DocCode]:
    """The commands and snippets of one markdown file, in order."""
    name = str(path.relative_to(ROOT))
    found = []
    for block in FENCE.finditer(path.read_text()):
        lang, body = block["lang"], textwrap.dedent(block["body"])
        if lang == "python":
            found.append(DocCode(name, "python", body))
        elif lang in SHELLS:
            found += [DocCode(name, "shell", c) for c in shell_commands(body, lang)]
    return found


def shell_commands(body: str, lang: str) -> list[str]:
    """One command per line: continuations joined, comments dropped, console output skipped."""
    commands = []
    for line in body.replace("\\\n", " ").splitlines():
        if lang == "console":
            if not line.startswith("$ "):
                continue
            line = line[2:]
        command = " ".join(COMMENT.sub("", line).split())
        if command:
            commands.append(command)
    return commands


def all_doc_code() -> list[DocCode]:
    return [code for path in DOCS for code in doc_code(path)]


def not_run_reason(code: DocCode) -> str | None:
    """Why a command is not run here, or None when it runs."""
    if code.key in NOT_RUN:
        return NOT_RUN[code.key]
    if code.doc == str(SCALE_OUT_DOC.relative_to(ROOT)):
        if f"{code.key}\n".startswith(EXERCISED):
            return SCALE_OUT
        if re.match(NOT_RUN_HERE, code.key):
            return NO_DOCKER
    return None


def as_run(code: DocCode) -> str:
    """The command that runs for a doc's command, before its placeholders are filled in."""
    return CHANGED[code.key][0] if code.key in CHANGED else code.text


def to_run() -> list[DocCode]:
    """The doc code that runs here: in document order, each distinct command once."""
    seen: set[str] = set()
    runs = []
    for code in all_doc_code():
        if not_run_reason(code) is None and code.key not in seen:
            seen.add(code.key)
            runs.append(code)
    return runs


def test_every_doc_command_runs_or_is_listed_with_a_reason() -> None:
    found = all_doc_code()
    keys = {code.key for code in found}
    assert "python flows/cycle.py run" in keys and any(c.kind == "python" for c in found)
    stale = [k for table in (NOT_RUN, CHANGED, EXPECTED, LEAVES) for k in table if k not in keys]
    assert not stale, f"listed here but no longer in the docs: {stale}"
    runs = to_run()
    for placeholder in PLACEHOLDERS:
        assert any(placeholder in as_run(c) for c in runs), f"{placeholder} is in no run command"
    for code in runs:
        command = as_run(code)
        for placeholder in PLACEHOLDERS:
            command = command.replace(placeholder, "x")
        assert not (code.kind == "shell" and UNFILLED.search(command)), (
            f"{code.doc}: `{code.key}` needs a value filled in: add it to PLACEHOLDERS, or list "
            "the command in NOT_RUN with the reason it cannot run here"
        )


class Values(dict[str, str]):
    """What the cycles run here stand in for the docs' example values (PLACEHOLDERS)."""

    RUN = re.compile(r"\(run-id (\d+)\)")
    CHAMPION = re.compile(r"; champion (c\d+-t\d+)")
    DONE = re.compile(r"\] (\w+): cycle (\d+) done")
    # The start step's "digits on user.alice: cycle 2, ...": the docs' examples are of your search
    ON_YOURS = re.compile(r"\] digits on user\.\S+: cycle \d+")

    def learn(self, output: str) -> None:
        """Take the run id and champion from a cycle of digits on your own branch's output
        (flows/cycle.py run; not a quick try's, not production's)."""
        run, champion, done = (p.search(output) for p in (self.RUN, self.CHAMPION, self.DONE))
        if run and champion and done and done[1] == "digits" and self.ON_YOURS.search(output):
            self.update(run=run[1], champion=champion[1])
            if done[2] == "1":
                self.update(first_run=run[1], first_champion=champion[1])

    # Asked when the command runs, as a person would read it off `factory status`: `factory
    # loop` cycles make newer runs than the last `python flows/cycle.py` one.
    NEWEST = (
        "$(factory status --objective digits --json | python -c "
        '\'import json, sys; print(json.load(sys.stdin)["cycles"][-1]["run_id"])\')'
    )

    def fill(self, command: str) -> str:
        self.setdefault("newest", self.NEWEST)
        for placeholder, name in PLACEHOLDERS.items():
            if placeholder in command:
                assert name in self, f"no {name} yet for {placeholder} in `{command}`"
                command = command.replace(placeholder, self[name])
        return command


@pytest.fixture(scope="module")
def place(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The throw-away checkout and datastore the docs' commands run in."""
    here = tmp_path_factory.mktemp("docs-run")
    for name in LINKED:
        (here / name).symlink_to(ROOT / name)
    (here / ".venv").symlink_to(Path(sys.prefix))
    shutil.copytree(ROOT / "notebooks", here / "notebooks")
    (here / "objectives").mkdir()
    for shipped in sorted((ROOT / "objectives").glob("*.yaml")):
        spec = yaml.safe_load(shipped.read_text())
        for section, cut in CUT_BUDGET.items():
            spec[section] = {**spec.get(section, {}), **cut}
        (here / "objectives" / shipped.name).write_text(yaml.safe_dump(spec, sort_keys=False))
    # The script that writes the example data (docs/data.md runs it), without that data.
    ignore = shutil.ignore_patterns("data", "__pycache__")
    shutil.copytree(
        ROOT / "objectives" / "examples", here / "objectives" / "examples", ignore=ignore
    )
    # The files the docs' commands name.
    (here / "my").mkdir()
    shutil.copy(here / "objectives" / "smoke.yaml", here / "my" / "objective.yaml")
    digits = load_objective(here / "objectives" / "digits.yaml")
    splits = load_splits(digits.data, digits.task)
    np.savez(here / "new.npz", x=splits.raw_x["test"], y=splits.raw_y["test"])
    yield here


def environment(place: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "ANTHROPIC_API_KEY"}
    env["METAFLOW_DATASTORE_SYSROOT_LOCAL"] = str(place)
    env["PATH"] = os.pathsep.join((str(place / ".venv" / "bin"), env.get("PATH", "")))
    env["VIRTUAL_ENV"] = str(place / ".venv")
    return env


def kill_a_cycle(place: Path, env: dict[str, str]) -> None:
    """A cycle to resume: one of smoke, killed once a train task has finished."""
    run_and_kill_after_first("train", place / "objectives" / "smoke.yaml", env)


# A doc's command → what must happen before it runs.
PREPARE: dict[str, Callable[[Path, dict[str, str]], None]] = {
    "python flows/cycle.py resume": kill_a_cycle,
}


@pytest.mark.slow
def test_the_docs_commands_and_snippets_run(place: Path) -> None:
    env, values = environment(place), Values()
    for i, code in enumerate(to_run()):
        if code.key in PREPARE:
            PREPARE[code.key](place, env)
        if code.kind == "python":
            script = place / f"snippet-{i}.py"
            script.write_text(code.text)
            command = f"python {script.name}"
        else:
            command = values.fill(as_run(code))
        proc = subprocess.run(
            ["bash", "-c", command],
            cwd=place,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=600,
        )
        exit_code, holds, _ = EXPECTED.get(code.key, (0, "", ""))
        shown = f"{code.doc}: `{command}`" + (f" (for `{code.key}`)" if command != code.key else "")
        assert proc.returncode == exit_code and "Traceback" not in proc.stdout, (
            f"{shown} exited {proc.returncode}, expected {exit_code}:\n{proc.stdout[-4000:]}\n"
            "Fix the doc or the code; if it cannot run here as written, list it in "
            "tests/test_docs_run.py with the reason (NOT_RUN, CHANGED or PLACEHOLDERS)."
        )
        assert holds in proc.stdout, f"{shown} does not say {holds!r}:\n{proc.stdout[-4000:]}"
        if code.key in LEAVES:
            assert (place / LEAVES[code.key]).stat().st_size > 0, shown
        values.learn(proc.stdout)
