"""Reward: hard constraints first (an infeasible trial never wins), then one scalar.

reward = s(metric)·metric + Σ weightᵢ · s(mᵢ)·mᵢ, with s(m) = +1 for a metric to maximise and
−1 for one to minimise, so a larger reward is always better whatever the metrics' directions.
"""

from __future__ import annotations

from typing import Literal

from factory_lib.objective import METRIC_DIRECTIONS, Objective
from factory_lib.records import TrialRecord, TrialResult


def sign(direction: Literal["maximize", "minimize"]) -> float:
    return 1.0 if direction == "maximize" else -1.0


def better(
    a: float, b: float, direction: Literal["maximize", "minimize"], margin: float = 0.0
) -> bool:
    """Whether `a` beats `b` by more than `margin` in the metric's direction."""
    return sign(direction) * (a - b) > margin


def violations(objective: Objective, metrics: dict[str, float]) -> tuple[str, ...]:
    """The objective's hard constraints that these metrics break."""
    return tuple(
        f"{c} (got {metrics[c.metric]:g})"
        for c in objective.reward.constraints
        if not c.holds(metrics[c.metric])
    )


def scalar_reward(objective: Objective, metrics: dict[str, float]) -> float:
    spec = objective.reward
    total = sign(spec.resolved_direction) * metrics[spec.metric]
    for name, weight in spec.weights.items():
        total += weight * sign(METRIC_DIRECTIONS[name]) * metrics[name]
    return total


def score(objective: Objective, result: TrialResult) -> TrialRecord:
    """A trial result with its feasibility and its validation and held-out rewards."""
    if result.status != "ok" or result.evaluation is None:
        return TrialRecord(result=result, feasible=False, violations=(f"status {result.status}",))
    val = result.evaluation.metrics("val")
    broken = violations(objective, val)
    return TrialRecord(
        result=result,
        feasible=not broken,
        violations=broken,
        val_reward=scalar_reward(objective, val),
        test_reward=scalar_reward(objective, result.evaluation.metrics("test")),
    )
