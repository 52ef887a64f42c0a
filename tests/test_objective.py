"""Objective parsing: every shipped file loads; every bad file names the field."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from factory_lib.objective import ObjectiveError, load_objective, parse_objective
from tests.conftest import FLOW, ROOT

SHIPPED = sorted((ROOT / "objectives").glob("*.yaml"))


def _smoke() -> dict:
    return yaml.safe_load((ROOT / "objectives" / "smoke.yaml").read_text())


def _error(spec: dict) -> str:
    with pytest.raises(ObjectiveError) as info:
        parse_objective(yaml.safe_dump(spec, sort_keys=False), "bad.yaml")
    return str(info.value)


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_shipped_objectives_load(path: Path) -> None:
    objective = load_objective(path)
    assert objective.name == path.stem
    assert objective.budget.trials_per_cycle >= 1


def test_unknown_field_is_named() -> None:
    spec = _smoke()
    spec["budget"]["trails_per_cycle"] = 4
    message = _error(spec)
    assert "bad.yaml" in message
    assert "budget.trails_per_cycle: unknown field" in message


def test_wrong_type_is_named() -> None:
    spec = _smoke()
    spec["budget"]["max_epochs"] = "many"
    assert "budget.max_epochs" in _error(spec)


def test_empty_range_is_named() -> None:
    spec = _smoke()
    spec["search_space"]["lr"] = {"type": "float", "low": 0.1, "high": 0.01}
    message = _error(spec)
    assert "search_space.lr: empty range" in message


def test_missing_dataset_is_named() -> None:
    spec = _smoke()
    spec["data"]["dataset"] = "mnist"
    assert "data.dataset" in _error(spec)
    del spec["data"]["dataset"]
    assert "give exactly one source: 'dataset'" in _error(spec)


def test_unknown_metric_in_constraint() -> None:
    spec = _smoke()
    spec["reward"]["constraints"] = ["flops <= 10"]
    assert "unknown metric 'flops'" in _error(spec)


def test_malformed_constraint() -> None:
    spec = _smoke()
    spec["reward"]["constraints"] = ["params is small"]
    assert "'<metric> <op> <number>'" in _error(spec)


def test_condition_must_follow_its_parameter() -> None:
    spec = _smoke()
    spec["search_space"] = {
        "width": {"type": "int", "low": 4, "high": 8, "when": {"family": "mlp"}},
        "family": {"type": "categorical", "choices": ["mlp"]},
    }
    assert "search_space.width.when" in _error(spec)


def test_cnn_needs_images() -> None:
    spec = _smoke()
    spec["model"]["families"] = ["mlp", "cnn"]
    assert "'cnn' needs image-shaped data" in _error(spec)


def test_task_must_match_dataset() -> None:
    spec = _smoke()
    spec["task"] = "regression"
    assert "classification data set" in _error(spec)


def test_not_yaml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ObjectiveError, match="not valid YAML"):
        parse_objective("name: [unclosed", "x.yaml")
    with pytest.raises(ObjectiveError, match="cannot read objective"):
        load_objective(tmp_path / "nope.yaml")


def test_overrides_change_only_the_budget() -> None:
    objective = load_objective(ROOT / "objectives" / "smoke.yaml")
    changed = objective.with_overrides(trials=7, epochs=0)
    assert changed.budget.trials_per_cycle == 7
    assert changed.budget.max_epochs == objective.budget.max_epochs
    assert changed.search_space == objective.search_space


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        ({"budget": {"trials_per_cycle": 0}}, "budget.trials_per_cycle"),
        ({"data": {"module": "no_such_package.data:DM"}}, "data.module"),
        (
            {"search_space": {"widht": {"type": "int", "low": 4, "high": 8}}},
            "search_space.widht: no parameter 'widht'",
        ),
    ],
    ids=["bad-budget", "module-does-not-import", "misspelt-parameter"],
)
def test_flow_rejects_bad_objective_before_running(
    tmp_path: Path, edit: dict, expected: str
) -> None:
    spec = _smoke()
    for section, values in edit.items():
        spec[section] = values if section == "data" else {**spec[section], **values}
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(spec))
    proc = subprocess.run(
        [sys.executable, FLOW, "--config", "objective", str(path), "run"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert proc.returncode != 0
    output = proc.stdout + proc.stderr
    assert str(path) in output
    assert expected in output
    assert "Workflow starting" not in output
