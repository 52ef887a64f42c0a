"""Reward, feasibility and the champion/challenger gate, on hand-made records."""

from __future__ import annotations

import pytest

from factory_lib.objective import load_objective
from factory_lib.registry import challenger_of, decide
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
    assert decision.status == "kept" and after == champion
    large = [record(strict, 2, val=0.99, test=0.86, cycle=2)]
    decision, after = decide(strict, champion, large)
    assert decision.status == "promoted" and after is not None and after.trial_id == "c002-t02"
    assert decision.delta == pytest.approx(0.06)


def test_a_cycle_with_no_eligible_trial_keeps_the_champion() -> None:
    _, champion = decide(SMOKE, None, [record(SMOKE, 0)])
    failed = [record(SMOKE, 1, status="failed", val=None, test=None, cycle=2)]
    decision, after = decide(SMOKE, champion, failed)
    assert decision.status == "no_candidate"
    assert after == champion
