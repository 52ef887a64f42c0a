"""The Optuna proposer: rebuilt from history, no repeats, and blind to the test split."""

from __future__ import annotations

import pytest

from factory_lib.history import HistoryRewriteError, append, check_extends
from factory_lib.objective import load_objective
from factory_lib.propose import OptunaProposer, seen_by_proposers
from factory_lib.propose.optuna_proposer import build_study
from factory_lib.records import params_key
from tests.conftest import ROOT
from tests.records import record

SMOKE = load_objective(ROOT / "objectives" / "smoke.yaml")
DIGITS = load_objective(ROOT / "objectives" / "digits.yaml")


def _history(n: int) -> list:
    return [
        record(SMOKE, i, val=0.5 + i / 100, lr=0.001 * (i + 1), width=4 + i, depth=1)
        for i in range(n)
    ]


def test_proposals_are_distinct_and_untried() -> None:
    history = _history(12)
    seen = seen_by_proposers(SMOKE, history)
    proposals = OptunaProposer(SMOKE).propose(SMOKE, seen, 6, cycle=2, first_number=12)
    keys = [p.key for p in proposals]
    assert len(proposals) == 6
    assert len(set(keys)) == 6
    assert not set(keys) & {params_key(r.proposal.params) for r in history}
    assert [p.number for p in proposals] == list(range(12, 18))
    assert all(p.trial_id.startswith("c002-") and p.source == "optuna:tpe" for p in proposals)


def test_small_space_is_not_repeated() -> None:
    tiny = SMOKE.model_copy(
        update={"search_space": {"depth": SMOKE.search_space["depth"]}, "fixed": {}}
    )
    first = OptunaProposer(tiny).propose(tiny, [], 5, cycle=1, first_number=0)
    assert sorted(p.params["depth"] for p in first) == [1, 2]  # the space has two points


def test_same_history_same_proposals() -> None:
    seen = seen_by_proposers(SMOKE, _history(10))
    a = OptunaProposer(SMOKE).propose(SMOKE, seen, 3, cycle=2, first_number=10)
    b = OptunaProposer(SMOKE).propose(SMOKE, seen, 3, cycle=2, first_number=10)
    assert a == b


def test_conditional_parameters_follow_the_family() -> None:
    proposals = OptunaProposer(DIGITS).propose(DIGITS, [], 8, cycle=1, first_number=0)
    for p in proposals:
        if p.params["family"] == "mlp":
            assert "depth" in p.params and "blocks" not in p.params
        else:
            assert "blocks" in p.params and "depth" not in p.params
        assert p.params["optimizer"] == "adamw"  # fixed parameters travel with every proposal


def test_enqueued_configurations_come_first() -> None:
    objective = SMOKE.model_copy(
        update={
            "proposers": SMOKE.proposers.model_copy(
                update={"enqueue": ({"lr": 0.01, "width": 16, "depth": 2},)}
            )
        }
    )
    proposals = OptunaProposer(objective).propose(objective, [], 2, cycle=1, first_number=0)
    assert proposals[0].params == {"lr": 0.01, "width": 16, "depth": 2}
    assert "enqueued" in proposals[0].rationale


def test_study_is_rebuilt_with_every_outcome() -> None:
    history = [
        *_history(3),
        record(SMOKE, 3, status="failed", val=None, test=None, lr=0.05, width=9, depth=2),
    ]
    study = build_study(SMOKE, seen_by_proposers(SMOKE, history), seed=0)
    states = [t.state.name for t in study.trials]
    assert states == ["COMPLETE", "COMPLETE", "COMPLETE", "FAIL"]
    assert study.best_value == pytest.approx(history[2].val_reward)


def test_proposers_never_see_the_test_split() -> None:
    history = _history(2)
    for seen in seen_by_proposers(SMOKE, history):
        dumped = seen.model_dump_json()
        assert "test" not in dumped
        assert set(seen.val) >= {"accuracy", "params"}


def test_history_is_append_only() -> None:
    history = _history(3)
    extended = append(history, [record(SMOKE, 3, cycle=2)])
    check_extends(history, extended)
    with pytest.raises(HistoryRewriteError):
        append(history, [record(SMOKE, 1)])
    with pytest.raises(HistoryRewriteError):
        check_extends(history, extended[1:])


def test_multi_objective_study_when_asked() -> None:
    mo = SMOKE.model_copy(
        update={
            "proposers": SMOKE.proposers.model_copy(update={"multi_objective": True}),
            "reward": SMOKE.reward.model_copy(update={"pareto": ("accuracy", "params")}),
        }
    )
    history = [
        record(mo, i, val=0.6 + i / 10, params=1000 * (i + 1), lr=0.01 * (i + 1)) for i in range(3)
    ]
    study = build_study(mo, seen_by_proposers(mo, history), seed=0)
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    assert [t.values for t in study.trials] == [[0.6, 1000.0], [0.7, 2000.0], [0.8, 3000.0]]
    assert len(OptunaProposer(mo).propose(mo, seen_by_proposers(mo, history), 3, 2, 3)) == 3
