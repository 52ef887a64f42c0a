"""The promotion gate: the challenger by validation, re-measured over seeds, judged on test.

The challenger is the cycle's best eligible trial by validation reward (selection never looks
at the test split); it replaces the champion only when it beats it on the held-out test split
by more than `promotion.min_improvement`, in the metric's direction.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict

from factory_lib.objective import Objective
from factory_lib.records import TrialRecord


class FrozenModel(BaseModel):
    """An immutable value of the registry."""

    model_config = ConfigDict(frozen=True)


class Champion(FrozenModel):
    """The best model so far and where it came from."""

    record: TrialRecord
    promoted_in_cycle: int
    metric: str
    test_value: float
    seed_values: tuple[float, ...] = ()  # the held-out metric over retrainings (noise)
    parent: str | None = None  # the champion it replaced

    @property
    def trial_id(self) -> str:
        return self.record.trial_id

    @property
    def evaluator(self) -> tuple[str, str]:
        return self.record.result.evaluator, self.record.result.data_fingerprint


class Evidence(FrozenModel):
    """The held-out measurements behind a promotion decision."""

    metric: str
    direction: Literal["maximize", "minimize"]
    challenger_values: tuple[float, ...]
    champion_values: tuple[float, ...]
    difference: float  # challenger mean − champion mean, in the metric's direction
    lower_bound: float  # one-sided lower confidence bound of that difference
    confidence: float
    method: str


class PromotionDecision(FrozenModel):
    status: Literal["promoted", "pending", "not_significant", "regressed", "infeasible", "flagged"]
    reason: str
    challenger: str | None = None
    champion: str | None = None
    delta: float | None = None
    evidence: Evidence | None = None


Measure = Callable[[TrialRecord, int], tuple[float, ...]]


def seeds_label(n: int) -> str:
    """What a held-out number over `n` retrainings is: `one run`, or `mean over n seeds`."""
    return "one run" if n == 1 else f"mean over {n} seeds"


def challenger_rank(record: TrialRecord) -> tuple[float, int]:
    """How the gate ranks candidates: the higher validation reward (never a test metric),
    then the earlier trial."""
    return (record.val_reward or 0.0, -record.result.proposal.number)


def challenger_of(records: Sequence[TrialRecord]) -> TrialRecord | None:
    """The best eligible, unflagged trial by `challenger_rank`."""
    eligible = [r for r in records if r.eligible and not r.flags]
    return max(eligible, key=challenger_rank) if eligible else None


def decide(
    objective: Objective,
    champion: Champion | None,
    records: Sequence[TrialRecord],
    measure: Measure | None = None,
) -> tuple[PromotionDecision, Champion | None]:
    """The promotion gate: the decision, with its evidence, and the champion after it.

    The challenger (best by validation) replaces the champion only when the one-sided lower
    confidence bound of its held-out gain, over `promotion.seeds` retrainings of each, clears
    `promotion.min_improvement`. A champion measured under another evaluator or other splits
    is re-measured before the comparison.
    """
    held = champion and champion.trial_id
    challenger = challenger_of(records)
    if challenger is None:
        flagged = [r for r in records if r.eligible and r.flags]
        if flagged:
            reason = (
                f"the best trials are flagged: {flagged[0].trial_id}: {'; '.join(flagged[0].flags)}"
            )
            return PromotionDecision(status="flagged", reason=reason, champion=held), champion
        reason = "no trial of this cycle completed within the constraints"
        return PromotionDecision(status="infeasible", reason=reason, champion=held), champion
    metric = objective.promotion_metric
    k = objective.promotion.seeds
    assert challenger.result.evaluation is not None
    value = challenger.result.evaluation.metrics("test")[metric]

    def values(record: TrialRecord, own: float) -> tuple[float, ...]:
        return measure(record, k) if measure is not None and k > 1 else (own,)

    challenger_values = values(challenger, value)
    new = Champion(
        record=challenger,
        promoted_in_cycle=challenger.proposal.cycle,
        metric=metric,
        test_value=value,
        seed_values=challenger_values,
        parent=held,
    )
    if champion is None:
        reason = "first eligible trial of the search"
        return PromotionDecision(
            status="promoted", reason=reason, challenger=challenger.trial_id
        ), new
    champion_values = champion.seed_values
    if len(champion_values) < len(challenger_values) or champion.evaluator != (
        challenger.result.evaluator,
        challenger.result.data_fingerprint,
    ):
        champion_values = values(champion.record, champion.test_value)
    direction = objective.promotion_direction
    evidence = gate(
        challenger_values,
        champion_values,
        direction,
        objective.promotion.min_improvement,
        objective.promotion.confidence,
        metric,
    )
    status, reason = verdict(evidence, objective.promotion.min_improvement)
    decision = PromotionDecision(
        status=status,
        reason=reason,
        challenger=challenger.trial_id,
        champion=champion.trial_id,
        delta=value - champion.test_value,
        evidence=evidence,
    )
    if status == "promoted":
        return decision, new
    return decision, champion.model_copy(update={"seed_values": champion_values})


def gate(
    challenger_values: Sequence[float],
    champion_values: Sequence[float],
    direction: Literal["maximize", "minimize"],
    margin: float,
    confidence: float,
    metric: str,
) -> Evidence:
    """How surely the challenger beats the champion on held-out seeds.

    The difference of means, signed so that positive is better, with a one-sided Welch
    t-interval at `confidence` (normal-free small-sample bound; with one value per side the
    bound is the difference itself).
    """
    c, h = np.asarray(challenger_values, float), np.asarray(champion_values, float)
    diff = (1.0 if direction == "maximize" else -1.0) * (c.mean() - h.mean())
    var_c = c.var(ddof=1) / len(c) if len(c) > 1 else 0.0
    var_h = h.var(ddof=1) / len(h) if len(h) > 1 else 0.0
    se = float(np.sqrt(var_c + var_h))
    if se > 0:
        from scipy import stats  # half a second to import: only where there is a spread

        dof = (var_c + var_h) ** 2 / sum(
            v**2 / (len(a) - 1) for v, a in ((var_c, c), (var_h, h)) if len(a) > 1
        )
        lower = diff - float(stats.t.ppf(confidence, dof)) * se
    else:
        lower = diff
    return Evidence(
        metric=metric,
        direction=direction,
        challenger_values=tuple(c.tolist()),
        champion_values=tuple(h.tolist()),
        difference=float(diff),
        lower_bound=float(lower),
        confidence=confidence,
        method=f"one-sided Welch t-interval over {len(c)} and {len(h)} seeds",
    )


def verdict(
    evidence: Evidence, margin: float
) -> tuple[Literal["promoted", "not_significant", "regressed"], str]:
    """Promote only when the lower confidence bound clears the minimum improvement."""
    e = evidence
    summary = (
        f"test {e.metric}: challenger {np.mean(e.challenger_values):.4f} "
        f"({seeds_label(len(e.challenger_values))}) vs champion "
        f"{np.mean(e.champion_values):.4f} ({seeds_label(len(e.champion_values))}); "
        f"{e.method}; lower {e.confidence:.0%} bound of the gain {e.lower_bound:+.4g}, "
        f"minimum {margin:g}"
    )
    if e.lower_bound > margin:
        return "promoted", summary
    if e.difference <= 0:
        return "regressed", summary
    return "not_significant", summary
