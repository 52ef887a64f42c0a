"""infra/ and the scale-out plumbing that needs no AWS: templates, code package, deployment files,
and that every command docs/scale-out.md shows is exercised by tests/test_scale_out.py."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from factory_lib.runs.deploy import DeploymentError, parse_deployment
from tests.conftest import FLOW, ROOT
from tests.scale_doc import EXERCISED, NOT_RUN_HERE, doc_commands

TEMPLATES = sorted((ROOT / "infra" / "cloudformation").glob("*.yaml"))


def test_cloudformation_templates_pass_cfn_lint() -> None:
    assert TEMPLATES
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "cfn-lint"), *map(str, TEMPLATES)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_code_package_carries_factory_lib() -> None:
    proc = subprocess.run(
        [sys.executable, FLOW, "package", "list", "--archive"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    files = set((proc.stdout + proc.stderr).split())  # Metaflow echoes the list to stderr
    assert "cycle.py" in files
    for module in (
        "__init__",
        "cycle/plan",
        "train/group",
        "runs/deploy",
        "propose/optuna_proposer",
    ):
        assert f".mf_code/factory_lib/{module}.py" in files


def test_deployment_files_validate() -> None:
    for path in (ROOT / "infra" / "deploy").glob("*.yaml"):
        spec = parse_deployment(path.read_text(), str(path))
        assert spec["schedule"] or spec["chain"], path
    assert parse_deployment("") == {
        "schedule": None,
        "chain": False,
        "secrets": [],
        "optuna_storage": None,
    }


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ("schedule: '0 * * * *'", "6 fields"),
        ("chian: true", "chian"),
        ("secrets: 3", "secrets"),
    ],
)
def test_bad_deployment_names_the_field(text: str, names: str) -> None:
    with pytest.raises(DeploymentError, match=names):
        parse_deployment(text, "x.yaml")


def test_every_documented_command_is_exercised() -> None:
    commands = doc_commands("bash")
    assert commands
    uncovered = [c for c in commands if not any(c.startswith(p) for p in EXERCISED)]
    assert uncovered == []
    # and each exercised prefix names exactly one documented command (no stale entries)
    for prefix in EXERCISED:
        assert sum(c.startswith(prefix) for c in commands) == 1, prefix
    # the commands that cannot run here (docker, a Kubernetes cluster) are the only others
    others = doc_commands("sh")
    assert all(re.match(NOT_RUN_HERE, c) for c in others), others
