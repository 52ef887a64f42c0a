"""One vocabulary: a cycle's counts per status and its labelled numbers, for every screen.

`summarize` computes a `CycleSummary` once, from the records; the flow's lines, `factory loop`,
`factory status` (and its `--json`), the cycle card and the notebook all print it with the
labels in `LABELS`, so a number reads the same and means the same everywhere: this cycle's best
or the best so far, one run or a mean over seeds, validation or test.

Light on purpose (pydantic only, no pandas, no Metaflow): the decide step prints it.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict

from factory_lib.records import TrialRecord, TrialStatus
from factory_lib.registry.gate import Champion, PromotionDecision, seeds_label

# The order statuses are counted and shown in, everywhere.
STATUS_ORDER: tuple[TrialStatus, ...] = ("ok", "pruned", "failed", "diverged", "timeout")
# What each number is, as every screen names it; `{metric}` is the promotion metric.
LABELS = {
    "trials": "trials",
    "trials_so_far": "trials in the search so far",
    "best_val_reward_this_cycle": "best val reward this cycle",
    "best_val_reward_so_far": "best val reward so far",
    "test_one_run": "test {metric} (one run)",
    "test_mean": "test {metric} ({seeds})",
    "decision": "decision",
    "champion": "champion",
    "train_seconds": "train s this cycle",
}

# A run tag that says why a cycle was started (`factory loop --watch`: served traffic drifted).
TRIGGER_TAG = "trigger:"


def number(value: float | None) -> str:
    """A labelled number as every screen prints it: four decimals, `none` when missing."""
    return "none" if value is None else f"{value:.4f}"


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class StatusCounts(_Frozen):
    """How many trials ended in each status; never two statuses in one count."""

    ok: int = 0
    pruned: int = 0
    failed: int = 0
    diverged: int = 0
    timeout: int = 0

    @classmethod
    def of(cls, records: Sequence[TrialRecord]) -> StatusCounts:
        counts = dict.fromkeys(STATUS_ORDER, 0)
        for r in records:
            counts[r.status] += 1
        return cls(**counts)

    @property
    def total(self) -> int:
        return sum(getattr(self, s) for s in STATUS_ORDER)

    def text(self) -> str:
        """The statuses that occurred, in `STATUS_ORDER`: `2 ok, 1 pruned` (`none`: no trial)."""
        parts = [f"{n} {s}" for s in STATUS_ORDER if (n := getattr(self, s))]
        return ", ".join(parts) or "none"


class ChampionSummary(_Frozen):
    """The champion after a cycle and its held-out metric: its own run, and the mean over the
    seeds the gate measured it on (its own run first)."""

    trial_id: str
    promoted_in_cycle: int
    metric: str
    test_one_run: float
    test_mean: float
    seeds: int

    @classmethod
    def of(cls, champion: Champion) -> ChampionSummary:
        values = champion.seed_values or (champion.test_value,)
        return cls(
            trial_id=champion.trial_id,
            promoted_in_cycle=champion.promoted_in_cycle,
            metric=champion.metric,
            test_one_run=champion.test_value,
            test_mean=sum(values) / len(values),
            seeds=len(values),
        )

    def text(self) -> str:
        """`c001-t02: test accuracy (one run) 0.9667; test accuracy (mean over 3 seeds) 0.9741`;
        the mean only when there was more than one seed."""
        parts = [f"{LABELS['test_one_run'].format(metric=self.metric)} {number(self.test_one_run)}"]
        if self.seeds > 1:
            label = LABELS["test_mean"].format(metric=self.metric, seeds=seeds_label(self.seeds))
            parts.append(f"{label} {number(self.test_mean)}")
        return f"{self.trial_id}: {'; '.join(parts)}"


class CycleSummary(_Frozen):
    """One cycle as every screen reports it: what `factory status --json` prints per cycle."""

    objective: str
    cycle: int
    run_id: str | None = None
    trials: int
    counts: StatusCounts
    trials_so_far: int
    best_val_reward_this_cycle: float | None
    best_val_reward_so_far: float | None
    decision: str
    reason: str
    champion: ChampionSummary | None
    stale_cycles: int
    train_seconds: float
    retired: str | None = None  # when, by whom and why, for a cycle the search passes over

    def labelled(self, field: str) -> str:
        """One number with its label, e.g. `best val reward so far 0.9667`."""
        value: float | None = getattr(self, field)
        return f"{LABELS[field]} {number(value)}"

    def champion_text(self) -> str:
        return f"{LABELS['champion']} {self.champion.text() if self.champion else 'none'}"

    def line(self) -> str:
        """The one grep-able line of a cycle, the same in the flow, `factory loop` and the
        notebook."""
        return (
            f"cycle {self.cycle}: {self.trials} trials ({self.counts.text()}); "
            f"{self.labelled('best_val_reward_this_cycle')}; "
            f"{self.labelled('best_val_reward_so_far')}; "
            f"{LABELS['decision']} {self.decision}; {self.champion_text()}"
        )


def summarize(
    objective: str,
    cycle: int,
    records: Sequence[TrialRecord],
    history: Sequence[TrialRecord],
    decision: PromotionDecision,
    champion: Champion | None,
    stale_cycles: int,
    run_pathspec: str | None = None,
    retired: str | None = None,
) -> CycleSummary:
    """The summary of a finished cycle: its own `records`, the `history` they end, the gate's
    `decision` and the `champion` after it."""
    return CycleSummary(
        objective=objective,
        cycle=cycle,
        run_id=run_pathspec.split("/")[-1] if run_pathspec else None,
        trials=len(records),
        counts=StatusCounts.of(records),
        trials_so_far=len(history),
        best_val_reward_this_cycle=best_val_reward(records),
        best_val_reward_so_far=best_val_reward(history),
        decision=decision.status,
        reason=decision.reason,
        champion=ChampionSummary.of(champion) if champion else None,
        stale_cycles=stale_cycles,
        train_seconds=sum(
            r.result.evaluation.train_seconds for r in records if r.result.evaluation
        ),
        retired=retired,
    )


def best_val_reward(records: Sequence[TrialRecord]) -> float | None:
    """The best validation reward of the eligible trials among `records` (None: no such trial)."""
    return max(
        (r.val_reward for r in records if r.eligible and r.val_reward is not None), default=None
    )
