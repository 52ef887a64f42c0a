"""The import contracts in pyproject.toml bite: an import planted against each one breaks it.

CI runs `lint-imports` on the tree itself; this checks that the contracts would catch what they
are there for, in a copy of `factory_lib` with one wrong import planted per contract.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT

# contract name: (module to plant in, the import, what lint-imports reports for it)
PLANTED = {
    "Stages are layered: a stage imports only the stages below it": (
        "records.py",
        "import factory_lib.history",
        "factory_lib.records -> factory_lib.history",
    ),
    "The evaluator is sealed: proposers never see the data or the evaluator": (
        "propose/mix.py",
        "import factory_lib.evaluate",
        "factory_lib.propose.mix -> factory_lib.evaluate",
    ),
    "Training never proposes": (
        "train/prune.py",
        "import factory_lib.propose.base",
        "factory_lib.train.prune -> factory_lib.propose.base",
    ),
    "Only the modules that need Metaflow import it": (
        "history.py",
        "import metaflow",
        "factory_lib.history -> metaflow",
    ),
    "No import cycles between siblings, at any depth": (
        "train/callbacks.py",  # train.trial imports train.callbacks
        "import factory_lib.train.trial",
        "No cycles are allowed in factory_lib.train.",
    ),
}


def _broken_sections(output: str) -> dict[str, str]:
    """lint-imports' report of each broken contract, by contract name."""
    report = output.split("Broken contracts", 1)[-1]
    names = [n for n in PLANTED if re.search(rf"^{re.escape(n)}\n-+$", report, re.M)]
    starts = sorted((report.index(f"{n}\n-"), n) for n in names)
    ends = [s for s, _ in starts[1:]] + [len(report)]
    return {n: report[s:e] for (s, n), e in zip(starts, ends, strict=True)}


def test_each_contract_breaks_on_its_planted_import(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "factory_lib", tmp_path / "factory_lib")
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    for module, line, _ in PLANTED.values():
        with (tmp_path / "factory_lib" / module).open("a") as f:
            f.write(f"\n{line}\n")
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "lint-imports"), "--no-cache"],
        capture_output=True,
        text=True,
        cwd=tmp_path,  # lint-imports imports factory_lib from here: the planted copy
        timeout=120,
    )
    output = re.sub(r"\s+\(l\.\d+\)", "", proc.stdout + proc.stderr)
    assert proc.returncode == 1, output
    assert f"0 kept, {len(PLANTED)} broken" in output, output
    sections = _broken_sections(output)
    for name, (_, _, reported) in PLANTED.items():
        assert reported in sections[name], f"{name}:\n{sections.get(name, output)}"
