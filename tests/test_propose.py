"""The Optuna proposer: rebuilt from history, no repeats, and blind to the test split."""

from __future__ import annotations

import pytest

from factory_lib.history import HistoryRewriteError, append, check_extends
from factory_lib.objective import load_objective
from factory_lib.propose.base import seen_by_proposers
from factory_lib.propose.optuna_proposer import OptunaProposer, build_study
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


def _warm_objective():
    return SMOKE.model_copy(
        update={"proposers": SMOKE.proposers.model_copy(update={"warm_start": "iris-wide"})}
    )


def test_a_warm_start_seeds_the_study_and_is_marked() -> None:
    objective = _warm_objective()
    # The other objective's history: good trials only at high learning rates and widths.
    other = [
        record(SMOKE, i, val=0.3 + 0.6 * (i % 2), lr=0.002 if i % 2 == 0 else 0.08, width=4 + i)
        for i in range(12)
    ]
    other.append(record(SMOKE, 12, val=0.9, lr=5.0, width=8, depth=1))  # outside this space
    warm = seen_by_proposers(objective, other)
    study = build_study(objective, [], seed=0, warm=warm)
    assert len(study.trials) == 12  # the one that does not fit this search space is left out
    assert {t.user_attrs["warm_start"] for t in study.trials} == {"iris-wide"}
    proposals = OptunaProposer(objective).propose(objective, [], 8, 1, 0, warm=warm)
    cold = OptunaProposer(objective).propose(objective, [], 8, 1, 0)
    assert all("warm-started from 12 trials of 'iris-wide'" in p.rationale for p in proposals)
    assert not any("warm" in p.rationale for p in cold)
    # Seeded, TPE samples where the other data's good trials were; cold, it samples at random.
    warm_lrs = sorted(p.params["lr"] for p in proposals)
    cold_lrs = sorted(p.params["lr"] for p in cold)
    assert warm_lrs[len(warm_lrs) // 2] > cold_lrs[len(cold_lrs) // 2]


def test_a_cycle_plans_its_warm_start_from_the_other_objectives_history(monkeypatch) -> None:
    from factory_lib.cycle import plan as cycle_module
    from factory_lib.cycle.propose import propose_cycle
    from factory_lib.history import CycleState
    from factory_lib.runs.client import Chain

    objective = _warm_objective()
    other = CycleState(
        run_pathspec="CycleFlow/7",
        cycle=1,
        history=tuple(_history(9)),
        bundle=None,
        stale_cycles=0,
        llm_usd_total=0.0,
    )
    asked = []

    def latest(flow: str, name: str, exclude_run: str | None = None, branch: str | None = None):
        asked.append(name)
        return other if name == "iris-wide" else None

    def chain(
        flow: str,
        name: str,
        exclude_run: str | None = None,
        from_run: str | None = None,
        branch: str | None = None,
    ):
        asked.append(name)
        return Chain(previous=None, newest=None)

    monkeypatch.setattr(cycle_module, "latest_cycle", latest)
    monkeypatch.setattr(cycle_module, "chain_from", chain)
    plan = cycle_module.plan_cycle(objective, "CycleFlow", "8")
    assert asked == ["smoke", "iris-wide"] and plan.cycle == 1 and plan.history == ()
    assert plan.warm_start == other.history
    assert any("seeded with 9 trials of objective 'iris-wide'" in n for n in plan.notices)
    batch = propose_cycle(plan)
    assert all("warm-started from 9 trials" in p.rationale for p in batch.proposals)
