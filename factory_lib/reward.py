"""Reward: hard constraints first (an infeasible trial never wins), then one scalar.

reward = s(metric)·metric + Σ weightᵢ · s(mᵢ)·mᵢ, with s(m) = +1 for a metric to maximise and
−1 for one to minimise, so a larger reward is always better whatever the metrics' directions.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict

from factory_lib.fidelity import trial_epochs
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


# The range a metric can take; a value outside it means the measurement is broken or gamed.
METRIC_RANGES: dict[str, tuple[float, float]] = {
    "accuracy": (0.0, 1.0),
    "macro_f1": (0.0, 1.0),
    "rmse": (0.0, float("inf")),
    "r2": (float("-inf"), 1.0),
    "params": (1.0, float("inf")),
    "latency_ms": (0.0, float("inf")),
    "train_seconds": (0.0, float("inf")),
}
MIN_HISTORY_FOR_JUMPS = 5


def flags(
    objective: Objective, record: TrialRecord, history: Sequence[TrialRecord]
) -> tuple[str, ...]:
    """Signs that a trial moved the number without getting better; any flag blocks promotion.

    - a validation/test gap on the promotion metric beyond `promotion.max_val_test_gap`;
    - a validation reward more than `promotion.max_jump_sd` standard deviations above the
      mean of the eligible trials before it with at least its epoch budget (with at least 5
      of them; under successive halving, lower rungs are no yardstick for higher ones);
    - a metric outside the range it can take (accuracy above 1, a negative RMSE, ...).
    """
    ev = record.result.evaluation
    if ev is None:
        return ()
    found = []
    metric = objective.promotion_metric
    val, test = ev.metrics("val"), ev.metrics("test")
    gap = abs(val[metric] - test[metric])
    if gap > objective.promotion.max_val_test_gap:
        found.append(
            f"val/test gap on {metric}: {gap:.3g} > {objective.promotion.max_val_test_gap:g}"
        )
    budget = trial_epochs(objective, record.proposal)
    earlier = [
        r.val_reward
        for r in history
        if r.eligible and r.val_reward is not None and trial_epochs(objective, r.proposal) >= budget
    ]
    if len(earlier) >= MIN_HISTORY_FOR_JUMPS and record.val_reward is not None:
        mean, sd = float(np.mean(earlier)), float(np.std(earlier))
        limit = mean + objective.promotion.max_jump_sd * max(sd, 1e-9)
        if record.val_reward > limit:
            found.append(
                f"val reward {record.val_reward:.4g} jumps beyond history ({mean:.4g} ± {sd:.2g})"
            )
    for split, metrics in (("val", val), ("test", test)):
        for name, value in metrics.items():
            low, high = METRIC_RANGES.get(name, (float("-inf"), float("inf")))
            if not low <= value <= high:
                found.append(f"{split} {name}={value:g} is outside [{low:g}, {high:g}]")
    return tuple(found)


def pareto_indices(points: Sequence[Sequence[float]]) -> list[int]:
    """Indices of the points no other point dominates (all axes to minimise)."""
    front = []
    for i, p in enumerate(points):
        dominated = any(
            all(q[k] <= p[k] for k in range(len(p))) and any(q[k] < p[k] for k in range(len(p)))
            for j, q in enumerate(points)
            if j != i
        )
        if not dominated:
            front.append(i)
    return front


def hypervolume(points: Sequence[Sequence[float]], reference: Sequence[float]) -> float:
    """The volume dominated by `points` and bounded by `reference` (all axes to minimise).

    Exact, by slicing along the first axis; fine for the fronts of a search (tens of points).
    """
    pts = [tuple(p) for p in points if all(a < r for a, r in zip(p, reference, strict=True))]
    if not pts:
        return 0.0
    if len(reference) == 1:
        return reference[0] - min(p[0] for p in pts)
    pts.sort()
    volume = 0.0
    for i, p in enumerate(pts):
        upper = pts[i + 1][0] if i + 1 < len(pts) else reference[0]
        if upper > p[0]:
            volume += (upper - p[0]) * hypervolume([q[1:] for q in pts[: i + 1]], reference[1:])
    return volume


class ParetoFront(BaseModel):
    """The non-dominated eligible trials of a search on the objective's named metrics."""

    model_config = ConfigDict(frozen=True)

    axes: tuple[str, ...]
    directions: tuple[str, ...]
    trial_ids: tuple[str, ...]
    points: tuple[tuple[float, ...], ...]
    hypervolume: float
    reference: tuple[float, ...]


def pareto_front(objective: Objective, history: Sequence[TrialRecord]) -> ParetoFront:
    """Front and hypervolume over every eligible trial so far, on validation metrics.

    The hypervolume is computed in the minimising form (maximised metrics negated), against
    a reference point 10% of each axis's range beyond the worst value seen.
    """
    axes = objective.pareto_axes
    directions = tuple(
        objective.primary_direction if a == objective.reward.metric else METRIC_DIRECTIONS[a]
        for a in axes
    )
    eligible = [r for r in history if r.eligible and r.result.evaluation is not None]
    raw = [tuple(r.result.evaluation.metrics("val")[a] for a in axes) for r in eligible]  # type: ignore[union-attr]
    flip = [-sign(d) for d in directions]
    mins = [tuple(f * v for f, v in zip(flip, p, strict=True)) for p in raw]
    if not mins:
        return ParetoFront(
            axes=axes, directions=directions, trial_ids=(), points=(), hypervolume=0.0, reference=()
        )
    worst = [max(col) for col in zip(*mins, strict=True)]
    best = [min(col) for col in zip(*mins, strict=True)]
    reference = tuple(
        w + 0.1 * ((w - b) or abs(w) or 1.0) for w, b in zip(worst, best, strict=True)
    )
    front = pareto_indices(mins)
    return ParetoFront(
        axes=axes,
        directions=directions,
        trial_ids=tuple(eligible[i].trial_id for i in front),
        points=tuple(raw[i] for i in front),
        hypervolume=hypervolume([mins[i] for i in front], reference),
        reference=reference,
    )
