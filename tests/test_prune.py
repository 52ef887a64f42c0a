"""Pruning from history: the rule on constructed curves, and curves shared between tasks.

The real cycle in which a bad configuration is pruned is in tests/test_fidelity.py.
"""

from __future__ import annotations

from pathlib import Path

from factory_lib.objective import PruningSpec
from factory_lib.train.prune import prune_reason

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


def test_trials_in_other_tasks_count_through_a_shared_optuna_storage(tmp_path: Path) -> None:
    import optuna

    from factory_lib.objective import load_objective
    from factory_lib.propose.base import make_proposal
    from factory_lib.train.group import train_group
    from factory_lib.train.prune import Curves
    from tests.conftest import ROOT

    smoke = load_objective(ROOT / "objectives" / "smoke.yaml")
    objective = smoke.model_copy(
        update={
            "pruning": PruningSpec(rule="percentile", warmup_epochs=2, min_trials=3),
            "budget": smoke.budget.model_copy(update={"max_epochs": 4, "fuse": False}),
        }
    )
    journal = str(tmp_path / "curves.journal")
    good = [
        make_proposal(objective, 1, i, i, {"lr": 0.05, "width": 16 + i, "depth": 1}, "test", "")
        for i in range(3)
    ]
    bad = make_proposal(objective, 1, 3, 3, {"lr": 0.001, "width": 4, "depth": 1}, "test", "")
    # Two train tasks of one cycle, each with its own board on the same storage and no history.
    first = train_group(objective, good, references=Curves((), journal, "cycle-1"))
    [late] = train_group(objective, [bad], references=Curves((), journal, "cycle-1"))
    assert all(o.result.status == "ok" for o in first)
    assert late.result.status == "pruned", late.result.cause
    assert "of 3 earlier trials" in late.result.cause
    # Alone, with nothing to compare with, the same trial runs to the end.
    [alone] = train_group(objective, [bad])
    assert alone.result.status == "ok" and alone.result.epochs == 4
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(journal))
    trials = optuna.load_study(study_name="cycle-1", storage=storage).trials
    by_id = {t.user_attrs["trial_id"]: t for t in trials}
    assert by_id["c001-t03"].state.name == "PRUNED"
    for out in [*first, late]:
        shared = by_id[out.result.proposal.trial_id].intermediate_values
        assert [shared[e] for e in sorted(shared)] == list(out.result.curve)
