"""Hypotheses that get graded: each prediction checked against validation numbers, by rule.

A proposal may carry a `Prediction` about its own trial ("val accuracy >= 0.97", "beats
c002-t03"). After the cycle the join grades it on what proposers may see (`SeenTrial`: the
validation split, never the test split): `confirmed` when the numbers bear it out, `refuted`
when they contradict it, `inconclusive` when there is nothing to compare (the trial did not
complete, the metric or the trial named is missing). No model takes part in grading.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping, Sequence

from factory_lib.objective import Objective
from factory_lib.propose.base import SeenTrial, seen_by_proposers
from factory_lib.records import Comparison, Grade, Prediction, TrialRecord

COMPARE: dict[Comparison, Callable[[float, float], bool]] = {
    ">=": operator.ge,
    "<=": operator.le,
    ">": operator.gt,
    "<": operator.lt,
}


def grade(prediction: Prediction, trial: SeenTrial, by_id: Mapping[str, SeenTrial]) -> Grade:
    """The verdict on one prediction about `trial`, with the numbers it rests on."""
    if trial.status != "ok" or not trial.val:
        return Grade(
            verdict="inconclusive", observed=f"the trial ended {trial.status}: nothing to compare"
        )
    if prediction.beats is not None:
        return _grade_beats(prediction.beats, trial, by_id)
    assert prediction.metric is not None and prediction.op is not None
    assert prediction.value is not None
    metric = prediction.metric
    value = trial.val_reward if metric == "val_reward" else trial.val.get(metric)
    name = metric if metric == "val_reward" else f"val {metric}"
    if value is None:
        return Grade(verdict="inconclusive", observed=f"the trial has no {name}")
    holds = COMPARE[prediction.op](value, prediction.value)
    return Grade(verdict="confirmed" if holds else "refuted", observed=f"{name} = {value:.6g}")


def _grade_beats(other_id: str, trial: SeenTrial, by_id: Mapping[str, SeenTrial]) -> Grade:
    other = by_id.get(other_id)
    if other is None or other.val_reward is None or not other.feasible:
        why = "is not in the history" if other is None else "has no feasible val_reward"
        return Grade(verdict="inconclusive", observed=f"{other_id} {why}")
    theirs = f"{other_id} val_reward = {other.val_reward:.6g}"
    if not trial.feasible or trial.val_reward is None:
        broken = "; ".join(trial.violations) or "no val_reward"
        return Grade(verdict="refuted", observed=f"infeasible ({broken}); {theirs}")
    holds = trial.val_reward > other.val_reward
    return Grade(
        verdict="confirmed" if holds else "refuted",
        observed=f"val_reward = {trial.val_reward:.6g}; {theirs}",
    )


def graded(
    objective: Objective, history: Sequence[TrialRecord], records: Sequence[TrialRecord]
) -> tuple[TrialRecord, ...]:
    """This cycle's `records` with their predictions graded against the validation numbers
    of the search so far (`history` and these records)."""
    seen = seen_by_proposers(objective, [*history, *records])
    by_id = {t.trial_id: t for t in seen}
    out = []
    for r in records:
        prediction = r.proposal.prediction
        if prediction is not None:
            r = r.model_copy(update={"grade": grade(prediction, by_id[r.trial_id], by_id)})
        out.append(r)
    return tuple(out)
