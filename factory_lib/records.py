"""The small typed values the stages exchange: proposals, evaluations, trial records.

Pydantic only (no torch, no Metaflow), so any step can read them cheaply and a notebook can
load them from artifacts.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, model_validator

TrialStatus = Literal["ok", "failed", "diverged", "timeout", "pruned"]
TRIAL_STATUSES: tuple[TrialStatus, ...] = ("ok", "failed", "diverged", "timeout", "pruned")
SPLIT_FREE_METRICS = ("params", "latency_ms", "train_seconds")
Comparison = Literal[">=", "<=", ">", "<"]
COMPARISONS: tuple[Comparison, ...] = (">=", "<=", ">", "<")
Verdict = Literal["confirmed", "refuted", "inconclusive"]
VERDICTS: tuple[Verdict, ...] = ("confirmed", "refuted", "inconclusive")


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    def __setstate__(self, state: dict[str, Any]) -> None:
        # Records pickled before a field existed load with its default: history stays readable.
        values = state.get("__dict__", {})
        for name, field in type(self).model_fields.items():
            if name not in values and not field.is_required():
                values[name] = field.get_default(call_default_factory=True)
        super().__setstate__(state)


def params_key(params: dict[str, Any]) -> str:
    """A canonical string for a parameter set: equal parameters, equal keys."""
    normal = {k: round(v, 10) if isinstance(v, float) else v for k, v in sorted(params.items())}
    return json.dumps(normal, sort_keys=True)


class Prediction(_Frozen):
    """A checkable claim about a trial's own validation numbers, in one of two fixed forms:
    `metric op value` ("val accuracy >= 0.97"; `val_reward` is a metric here too) or `beats`
    (its validation reward will be larger than that trial's)."""

    metric: str | None = None
    op: Comparison | None = None
    value: float | None = None
    beats: str | None = None

    @model_validator(mode="after")
    def _one_form(self) -> Prediction:
        comparison = (self.metric, self.op, self.value)
        if self.beats is not None and any(v is not None for v in comparison):
            raise ValueError("a prediction is either metric/op/value or beats, not both")
        if self.beats is None and any(v is None for v in comparison):
            raise ValueError("a prediction needs metric, op and value (or beats)")
        return self

    def text(self) -> str:
        if self.beats is not None:
            return f"beats {self.beats}"
        name = self.metric if self.metric == "val_reward" else f"val {self.metric}"
        return f"{name} {self.op} {self.value:.6g}"


class Grade(_Frozen):
    """A prediction graded against the evaluator's validation numbers, by rule, never by a
    model: `observed` names the numbers the verdict rests on, or why there are none."""

    verdict: Verdict
    observed: str


class Proposal(_Frozen):
    """One experiment to run: parameters, where they came from, and why."""

    trial_id: str
    number: int
    cycle: int
    params: dict[str, Any]
    source: str
    rationale: str = ""
    seed: int
    epochs: int | None = None  # this trial's epoch budget (a fidelity rung); None: max_epochs
    continues: str | None = None  # the trial whose checkpoint this one continues (fidelity)
    checkpoint: str | None = None  # the task that stored that checkpoint, as a pathspec
    hypothesis: str = ""  # what a proposer (the LLM) means to learn from this trial
    prediction: Prediction | None = None  # its checkable form, graded after the cycle

    @property
    def key(self) -> str:
        return params_key(self.params)

    def summary(self) -> str:
        why = f" — {self.rationale}" if self.rationale else ""
        return f"{self.trial_id} {self.source}: {self.params}{why}"


class Evaluation(_Frozen):
    """The sealed evaluator's verdict: quality per split, and the cost and shape of the model."""

    val: dict[str, float]
    test: dict[str, float]
    params: int
    latency_ms: float
    train_seconds: float

    def metrics(self, split: Literal["val", "test"]) -> dict[str, float]:
        """Quality metrics of one split together with the split-free cost metrics."""
        quality = self.val if split == "val" else self.test
        return {
            **quality,
            "params": float(self.params),
            "latency_ms": self.latency_ms,
            "train_seconds": self.train_seconds,
        }


class TrialResult(_Frozen):
    """What a train task reports for one proposal, whatever happened."""

    proposal: Proposal
    status: TrialStatus
    cause: str = ""
    evaluation: Evaluation | None = None
    curve: tuple[float, ...] = ()
    epochs: int = 0  # the curve's length, counted from the first epoch of the first trial
    start_epoch: int = 0  # epochs inherited from a checkpoint; trained here: epochs - start_epoch
    resumable: bool = False  # a checkpoint was stored, so a fidelity promotion can continue it
    weights_sha: str | None = None
    task_pathspec: str | None = None
    started_at: float = 0.0
    evaluator: str = ""  # fingerprint of the sealed evaluator's code
    data_fingerprint: str = ""  # fingerprint of the train/val/test splits


class TrialRecord(_Frozen):
    """A trial as history keeps it: the result, scored. Never rewritten once written."""

    result: TrialResult
    feasible: bool
    violations: tuple[str, ...] = ()
    val_reward: float | None = None
    test_reward: float | None = None
    flags: tuple[str, ...] = ()  # reward-hacking signs; a flagged trial is never promoted
    grade: Grade | None = None  # the proposal's prediction, graded in the join

    @property
    def proposal(self) -> Proposal:
        return self.result.proposal

    @property
    def trial_id(self) -> str:
        return self.result.proposal.trial_id

    @property
    def status(self) -> TrialStatus:
        return self.result.status

    @property
    def eligible(self) -> bool:
        """Completed and feasible: the only trials that may become champion."""
        return self.status == "ok" and self.feasible and self.val_reward is not None


def weights_fingerprint(blob: bytes) -> str:
    return hashlib.sha256(blob).hexdigest()[:16]
