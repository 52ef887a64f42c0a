"""Reward, feasibility and the champion/challenger gate, on hand-made records."""

from __future__ import annotations

import pytest

from factory_lib.objective import load_objective
from factory_lib.registry.gate import challenger_of, decide
from factory_lib.reward import better, scalar_reward
from tests.conftest import ROOT
from tests.records import record

SMOKE = load_objective(ROOT / "objectives" / "smoke.yaml")
DIABETES = load_objective(ROOT / "objectives" / "diabetes.yaml")


def test_better_respects_direction_and_margin() -> None:
    assert better(0.9, 0.8, "maximize")
    assert not better(0.9, 0.8, "minimize")
    assert better(10.0, 12.0, "minimize", margin=1.0)
    assert not better(10.0, 10.5, "minimize", margin=1.0)


def test_minimised_metric_gives_larger_reward_when_smaller() -> None:
    metrics = {"rmse": 50.0, "r2": 0.5, "params": 10.0, "latency_ms": 0.1, "train_seconds": 1.0}
    worse = {**metrics, "rmse": 60.0}
    assert scalar_reward(DIABETES, metrics) > scalar_reward(DIABETES, worse)


def test_weights_follow_metric_directions() -> None:
    weighted = SMOKE.model_copy(
        update={"reward": SMOKE.reward.model_copy(update={"weights": {"latency_ms": 1.0}})}
    )
    base = {"accuracy": 0.9, "macro_f1": 0.9, "params": 10.0, "train_seconds": 1.0}
    fast = scalar_reward(weighted, {**base, "latency_ms": 0.01})
    slow = scalar_reward(weighted, {**base, "latency_ms": 0.2})
    assert fast > slow
    assert fast == pytest.approx(0.9 - 0.01)


def test_constraint_makes_trial_infeasible() -> None:
    big = record(SMOKE, 0, val=0.99, params=10_000)
    assert not big.feasible
    assert big.violations == ("params <= 5000 (got 10000)",)
    assert not big.eligible


def test_failed_trial_is_never_eligible() -> None:
    failed = record(SMOKE, 0, status="failed", val=None, test=None)
    assert not failed.feasible and failed.val_reward is None


def test_challenger_is_chosen_on_validation_not_test() -> None:
    a = record(SMOKE, 0, val=0.95, test=0.70)
    b = record(SMOKE, 1, val=0.90, test=0.99)
    infeasible = record(SMOKE, 2, val=0.99, test=0.99, params=99_999)
    assert challenger_of([a, b, infeasible]) == a


def test_first_eligible_trial_is_promoted() -> None:
    decision, champion = decide(SMOKE, None, [record(SMOKE, 0)])
    assert decision.status == "promoted"
    assert champion is not None and champion.trial_id == "c001-t00"


def test_promotion_needs_the_minimum_improvement_on_test() -> None:
    strict = SMOKE.model_copy(
        update={"promotion": SMOKE.promotion.model_copy(update={"min_improvement": 0.05})}
    )
    _, champion = decide(strict, None, [record(strict, 0, test=0.80)])
    small = [record(strict, 1, val=0.99, test=0.84, cycle=2)]
    decision, after = decide(strict, champion, small)
    assert decision.status == "not_significant" and after == champion
    large = [record(strict, 2, val=0.99, test=0.86, cycle=2)]
    decision, after = decide(strict, champion, large)
    assert decision.status == "promoted" and after is not None and after.trial_id == "c002-t02"
    assert decision.delta == pytest.approx(0.06)


def test_a_cycle_with_no_eligible_trial_keeps_the_champion() -> None:
    _, champion = decide(SMOKE, None, [record(SMOKE, 0)])
    failed = [record(SMOKE, 1, status="failed", val=None, test=None, cycle=2)]
    decision, after = decide(SMOKE, champion, failed)
    assert decision.status == "infeasible"
    assert after == champion


def test_gate_on_constructed_seed_results() -> None:
    from factory_lib.registry.gate import gate, verdict

    def status(challenger: list[float], champion: list[float], margin: float = 0.0) -> str:
        return verdict(gate(challenger, champion, "maximize", margin, 0.9, "accuracy"), margin)[0]

    assert status([0.95, 0.96, 0.955], [0.90, 0.91, 0.905]) == "promoted"  # clearly better
    assert status([0.92, 0.90, 0.94], [0.91, 0.93, 0.90]) == "not_significant"  # within noise
    assert status([0.88, 0.89, 0.87], [0.91, 0.92, 0.90]) == "regressed"  # worse
    assert status([0.95, 0.96, 0.955], [0.90, 0.91, 0.905], margin=0.06) == "not_significant"
    rmse = gate([10.0, 10.5, 10.2], [12.0, 12.4, 12.1], "minimize", 0.0, 0.9, "rmse")
    assert rmse.difference > 0 and rmse.lower_bound > 0  # smaller RMSE is the better side


def test_decide_remeasures_both_sides_before_promoting() -> None:
    noisy = SMOKE.model_copy(update={"promotion": SMOKE.promotion.model_copy(update={"seeds": 3})})
    measured = {
        "c001-t00": (0.90, 0.91, 0.89),
        "c002-t01": (0.93, 0.88, 0.90),
        "c002-t02": (0.97, 0.96, 0.98),
    }
    calls: list[tuple[str, int]] = []

    def measure(record, k: int) -> tuple[float, ...]:
        calls.append((record.trial_id, k))
        return measured[record.trial_id]

    _, champion = decide(noisy, None, [record(noisy, 0, test=0.90)], measure)
    assert champion is not None and champion.seed_values == (0.90, 0.91, 0.89)
    lucky = [record(noisy, 1, val=0.99, test=0.93, cycle=2)]
    decision, after = decide(noisy, champion, lucky, measure)
    assert decision.status == "not_significant" and after.trial_id == "c001-t00"
    assert decision.evidence is not None and decision.evidence.champion_values == (0.90, 0.91, 0.89)
    better = [record(noisy, 2, val=0.99, test=0.97, cycle=2)]
    decision, after = decide(noisy, champion, better, measure)
    assert decision.status == "promoted" and after.parent == "c001-t00"
    assert ("c001-t00", 3) not in calls[1:]  # the champion's seeds were measured once


def test_flags_block_promotion() -> None:
    from factory_lib.reward import flags

    gap = record(SMOKE, 0, val=0.99, test=0.30)
    assert any("val/test gap" in f for f in flags(SMOKE, gap, []))
    impossible = record(SMOKE, 1, val=1.2, test=1.2)
    assert any("outside [0, 1]" in f for f in flags(SMOKE, impossible, []))
    history = [record(SMOKE, i, val=0.50 + i / 1000) for i in range(6)]
    jump = record(SMOKE, 7, val=0.99, test=0.99)
    assert any("jumps beyond history" in f for f in flags(SMOKE, jump, history))
    flagged = gap.model_copy(update={"flags": flags(SMOKE, gap, [])})
    decision, champion = decide(SMOKE, None, [flagged])
    assert decision.status == "flagged" and champion is None


def test_pareto_front_and_hypervolume_by_hand() -> None:
    from factory_lib.reward import hypervolume, pareto_indices

    points = [(1.0, 4.0), (2.0, 2.0), (4.0, 1.0), (3.0, 3.0), (2.0, 5.0)]
    assert pareto_indices(points) == [0, 1, 2]
    # staircase under reference (5, 5): 1x1 + 1x3 + 2x4 = ... by columns: x in [1,2): 5-4=1,
    # [2,4): 5-2=3 (width 2 -> 6), [4,5): 5-1=4 -> 1 + 6 + 4 = 11
    assert hypervolume([points[i] for i in (0, 1, 2)], (5.0, 5.0)) == pytest.approx(11.0)
    assert hypervolume([(1.0, 1.0, 1.0)], (2.0, 2.0, 2.0)) == pytest.approx(1.0)
    assert hypervolume([(3.0, 3.0)], (2.0, 2.0)) == 0.0


def test_pareto_front_of_a_search() -> None:
    from factory_lib.reward import pareto_front

    history = [
        record(SMOKE, 0, val=0.90, params=1000),
        record(SMOKE, 1, val=0.95, params=3000),
        record(SMOKE, 2, val=0.85, params=2000),  # dominated by t00
        record(SMOKE, 3, status="failed", val=None, test=None),
    ]
    front = pareto_front(SMOKE, history)
    assert front.axes == ("accuracy", "params") and front.trial_ids == ("c001-t00", "c001-t01")
    assert front.hypervolume > 0


def test_shared_rows_are_found() -> None:
    import numpy as np

    from factory_lib.data.splits import first_occurrences, shared_rows

    train = np.arange(12, dtype=np.float32).reshape(4, 3)
    test = np.vstack([train[1], np.full(3, 99.0, np.float32), train[3]])
    assert shared_rows({"train": train, "test": test}) == {"train/test": 2}
    assert shared_rows({"train": train, "test": test[1:2]}) == {}
    assert first_occurrences(np.vstack([train, train[:2]])).tolist() == [0, 1, 2, 3]
