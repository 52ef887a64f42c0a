"""Shared set-up: torch before Metaflow, one throw-away datastore, helpers to run real cycles."""

from __future__ import annotations

# Import torch before anything runs metaflow.Runner (Metaflow's vendored typing_extensions,
# upstream issue #2462, can otherwise break a later first `import torch`).
import torch  # noqa: F401  isort: skip

import os
import re
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
FLOW = str(ROOT / "flows" / "cycle.py")
EXAMPLE_DATA = ROOT / "objectives" / "examples" / "data"
_DATASTORE = tempfile.mkdtemp(prefix="factory-tests-")
# "[c001-t00] ok", "[c001-t00-s1] failed (...)": what train_group prints for each trial.
TRIAL_OUTCOME = re.compile(r"^\[([\w-]+)\] (?:ok|failed|diverged|timeout|pruned)\b", re.M)

# Metaflow reads its configuration when first imported: point this process and every flow it
# starts at one throw-away local datastore, and give Metaflow a user name.
os.environ["METAFLOW_DATASTORE_SYSROOT_LOCAL"] = _DATASTORE
os.environ.setdefault("USERNAME", "factory-tests")
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p
)


@pytest.fixture(scope="session", autouse=True)
def example_data() -> None:
    """The example objectives' data (objectives/examples/make_data.py), written once."""
    import runpy

    if not (EXAMPLE_DATA / "digits.npz").exists():
        runpy.run_path(str(ROOT / "objectives" / "examples" / "make_data.py"))["main"]()


def write_objective(tmp_path: Path, name: str, base: str = "smoke", **overrides: Any) -> Path:
    """A copy of objectives/<base>.yaml under a unique name, with top-level sections merged."""
    spec = yaml.safe_load((ROOT / "objectives" / f"{base}.yaml").read_text())
    spec["name"] = name
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(spec.get(key), dict):
            spec[key] = {**spec[key], **value}
        else:
            spec[key] = value
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def run_cycle(
    objective: Path,
    env: dict[str, str] | None = None,
    deployment: Path | None = None,
    branch: str | None = None,
    production: bool = False,
    **params: Any,
) -> Any:
    """Run one real cycle through metaflow.Runner (on the @project branch that `branch` and
    `production` name, as the flow's own options do); returns the finished metaflow.Run."""
    from metaflow import Runner

    on_branch: dict[str, Any] = {"branch": branch} if branch else {}
    if production:
        on_branch["production"] = True

    # cwd: Metaflow 2.19 writes cards under the working directory's `.metaflow/mf.cards` but
    # the Client API reads them from the datastore root's; the same place only from here.
    with Runner(
        FLOW,
        show_output=False,
        cwd=_DATASTORE,
        env=env or {},
        config=[
            ("objective", str(objective)),
            *([("deployment", str(deployment))] if deployment else []),
        ],
        **on_branch,
    ).run(**{"max_workers": 2, **params}) as running:
        assert running.status == "successful", running.stderr[-3000:]
        return running.run


def trained_in(task: Any) -> list[str]:
    """The trials a Metaflow task trained: train_group prints one outcome line for each."""
    return TRIAL_OUTCOME.findall(task.stdout)


def factory_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the `factory` command (as `python -m factory_lib.ops.cli`) from the repo root."""
    return subprocess.run(
        [sys.executable, "-m", "factory_lib.ops.cli", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        timeout=600,
    )


def run_and_kill_after_first(step: str, objective: Path, env: dict[str, str] | None = None) -> str:
    """Start a cycle, SIGKILL it (runtime and tasks) once a task of `step` has finished: a
    crashed machine (mid-foreach, for `train`). Returns the killed run's id."""
    run_id = None
    with subprocess.Popen(
        [
            sys.executable,
            FLOW,
            "--config",
            "objective",
            str(objective),
            "run",
            "--max-workers",
            "1",
        ],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            found = re.search(r"\(run-id (\w+)\)", line)
            run_id = found[1] if found else run_id
            if f"/{step}/" in line and "Task finished successfully" in line:
                os.killpg(proc.pid, signal.SIGKILL)
                break
        proc.wait(timeout=60)
    assert run_id is not None and proc.returncode == -signal.SIGKILL
    return run_id


@pytest.fixture(scope="session")
def datastore() -> Iterator[str]:
    yield _DATASTORE


# The moto server standing in for AWS (tests/aws.py), for the scale-out tests.
from tests.aws import aws, network  # noqa: E402, F401
