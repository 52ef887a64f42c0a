"""Pruning from history: the rule on constructed curves, and a bad trial pruned in a real cycle."""

from __future__ import annotations

from pathlib import Path

import pytest

from factory_lib.objective import PruningSpec
from factory_lib.prune import prune_reason
from tests.conftest import run_cycle, write_objective

SPEC = PruningSpec(rule="percentile", percentile=50, warmup_epochs=3, min_trials=3)
GOOD = [[0.5, 0.7, 0.8, 0.85, 0.9], [0.4, 0.6, 0.75, 0.8, 0.88], [0.5, 0.65, 0.78, 0.84, 0.9]]


def test_the_clearly_bad_is_pruned_after_warm_up() -> None:
    bad = [0.3, 0.35, 0.4]
    assert prune_reason(bad[:2], GOOD, SPEC, "maximize") is None  # never before warm-up
    reason = prune_reason(bad, GOOD, SPEC, "maximize")
    assert reason is not None and "epoch 3" in reason and "0.78" in reason


def test_the_good_is_kept_and_directions_are_respected() -> None:
    assert prune_reason([0.5, 0.7, 0.79], GOOD, SPEC, "maximize") is None
    rmse = [[50.0, 40.0, 30.0], [55.0, 42.0, 31.0], [52.0, 41.0, 29.0]]
    assert prune_reason([60.0, 50.0, 45.0], rmse, SPEC, "minimize") is not None
    assert prune_reason([50.0, 40.0, 28.0], rmse, SPEC, "minimize") is None


def test_too_few_earlier_curves_never_prune() -> None:
    assert prune_reason([0.1, 0.1, 0.1], GOOD[:2], SPEC, "maximize") is None
    off = SPEC.model_copy(update={"rule": "none"})
    assert prune_reason([0.1, 0.1, 0.1], GOOD, off, "maximize") is None


@pytest.mark.slow
def test_a_bad_configuration_is_pruned_in_cycle_two_with_its_curve(tmp_path: Path) -> None:
    good = [{"lr": 0.05, "width": 16 + i, "depth": 1} for i in range(3)]
    bad = {"lr": 0.001, "width": 4, "depth": 1}
    objective = write_objective(
        tmp_path,
        "prune",
        budget={"trials_per_cycle": 3, "max_epochs": 8, "early_stopping_patience": 8},
        pruning={"rule": "percentile", "percentile": 50, "warmup_epochs": 2, "min_trials": 3},
        proposers={"enqueue": [*good, bad]},
    )
    first = run_cycle(objective, fresh=True)["end"].task.data
    assert all(r.status == "ok" and r.result.epochs == 8 for r in first.history)
    second = run_cycle(objective, trials=1)["end"].task.data
    pruned = second.records[0]
    assert pruned.proposal.params == bad
    assert pruned.status == "pruned", pruned.result.cause
    assert "worse than the 50th-percentile bar" in pruned.result.cause
    assert 2 <= pruned.result.epochs < 8 and len(pruned.result.curve) == pruned.result.epochs
    assert second.history[:3] == first.history
