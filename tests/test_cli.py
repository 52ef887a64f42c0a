"""`factory loop`: chained cycles through Runner, stopping on budget and on patience."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import factory_cli, write_objective


@pytest.mark.slow
def test_loop_stops_when_the_budget_is_spent(tmp_path: Path) -> None:
    objective = write_objective(tmp_path, "cli-budget", budget={"max_cycles": 1})
    proc = factory_cli(
        "loop", "--cycles", "5", "--config", str(objective), "--trials", "2", "--fresh"
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    cycles = [ln for ln in lines if ln.startswith("[")]
    assert [ln.split(":")[0] for ln in cycles] == ["[1/5] cycle 1"]
    assert "2 trials (2 ok)" in cycles[0]
    # live progress: one line per finished trial, counting up
    progress = [ln.split(":")[1].strip() for ln in lines if ln.startswith("  [")]
    assert [p.split(" finished")[0] for p in progress] == ["1 of 2", "2 of 2"]
    assert "best val reward before this cycle none yet" in lines[1]
    assert lines[-1] == "stop: budget spent (1 of budget.max_cycles=1)"


@pytest.mark.slow
def test_loop_stops_after_patience_cycles_without_gain(tmp_path: Path) -> None:
    objective = write_objective(
        tmp_path,
        "cli-patience",
        model={"builder": "tests.builders:planted"},
        budget={"patience": 1},
    )
    proc = factory_cli(
        "loop",
        "--cycles",
        "3",
        "--config",
        str(objective),
        "--trials",
        "1",
        "--fresh",
        env={"FACTORY_TEST_FAIL_ALL": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "[1/3] cycle 1: 1 trials (1 failed)" in proc.stdout
    assert "[2/3]" not in proc.stdout
    assert proc.stdout.splitlines()[-1] == "stop: no better reward for 1 cycles (budget.patience)"


def test_loop_rejects_a_bad_objective_before_running(tmp_path: Path) -> None:
    bad = write_objective(tmp_path, "cli-bad", budget={"max_epochs": 0})
    proc = factory_cli("loop", "--cycles", "1", "--config", str(bad))
    assert proc.returncode == 2
    assert f"invalid objective {bad}" in proc.stderr
    assert "budget.max_epochs" in proc.stderr
