"""History: the append-only record of a search, and the state one cycle hands to the next.

Each successful cycle's end step holds the whole history so far; the next cycle starts from
the latest successful run tagged `objective:<name>` (read through `factory_lib.runs`). The
datastore is the source of truth.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from factory_lib.objective import Objective
from factory_lib.propose.llm.report import LLMReport
from factory_lib.propose.notes import LabNotes
from factory_lib.records import TrialRecord
from factory_lib.registry import Champion, ChampionBundle, PromotionDecision, RegistryEvent


class HistoryRewriteError(RuntimeError):
    """A cycle tried to change or drop records an earlier cycle wrote."""


@dataclass(frozen=True)
class CycleState:
    """What a finished cycle left: what the next cycle starts from and what people read."""

    run_pathspec: str
    cycle: int
    history: tuple[TrialRecord, ...]
    bundle: ChampionBundle | None  # the champion with its package, card and exports
    stale_cycles: int
    llm_usd_total: float
    events: tuple[RegistryEvent, ...] = ()  # the promotion log, tag events applied
    pending: ChampionBundle | None = None  # a promotion awaiting approval
    records: tuple[TrialRecord, ...] = ()  # this cycle's own trials
    decision: PromotionDecision | None = None
    objective: Objective | None = None  # the effective objective of this cycle
    created_at: str = ""
    # Cycle numbers of the search retired before this cycle: not counted against max_cycles.
    retired_cycles: tuple[int, ...] = ()
    # What changed in the search space since the cycle this one continued (cycle.plan).
    space_changes: tuple[str, ...] = ()
    notes: LabNotes | None = None  # what the search learned, after this cycle (the join's)
    llm_report: LLMReport | None = None  # the LLM proposer's calls and their cost, if it ran

    @property
    def cycles_counted(self) -> int:
        """The cycles of the search up to this one that count against `budget.max_cycles`."""
        return self.cycle - len(self.retired_cycles)

    @property
    def champion(self) -> Champion | None:
        return self.bundle.champion if self.bundle else None

    def with_decisions(
        self,
        bundle: ChampionBundle | None,
        pending: ChampionBundle | None,
        applied: tuple[RegistryEvent, ...],
    ) -> CycleState:
        """This state after people's registry decisions (approve, reject, rollback)."""
        return replace(self, bundle=bundle, pending=pending, events=(*self.events, *applied))


def champion_of(data: Any) -> ChampionBundle | None:
    """The champion a cycle's end artifacts hold (`data` as in `state_of`), reading only those."""
    return ChampionBundle.of(
        data.champion,
        data.champion_package,
        getattr(data, "model_card", None),
        getattr(data, "exports", None),
    )


def state_of(data: Any, run_pathspec: str, created_at: str = "") -> CycleState:
    """The one reader of a cycle's end artifacts: `data` is a finished run's `task.data`, or the
    flow itself in its last step. Artifacts that older cycles did not write take defaults."""
    return CycleState(
        run_pathspec=run_pathspec,
        cycle=data.cycle,
        history=tuple(data.history),
        bundle=champion_of(data),
        stale_cycles=data.stale_cycles,
        # cycles run before LLM accounting existed spent nothing on it
        llm_usd_total=getattr(data, "llm_usd_total", 0.0),
        events=tuple(getattr(data, "promotions", ())),
        pending=getattr(data, "pending", None),
        records=tuple(data.records),
        decision=data.decision,
        objective=data.plan.objective,
        created_at=created_at,
        # plans of cycles run before retiring and search-space notices existed lack these
        retired_cycles=tuple(getattr(data.plan, "retired_cycles", ())),
        space_changes=tuple(getattr(data.plan, "space_changes", ())),
        notes=getattr(data, "notes", None),  # cycles run before lab notes existed have none
        llm_report=getattr(data, "llm_report", None),
    )


def append(previous: Sequence[TrialRecord], new: Sequence[TrialRecord]) -> tuple[TrialRecord, ...]:
    """previous + new, refusing a trial id that history already holds."""
    known = {r.trial_id for r in previous}
    clash = [r.trial_id for r in new if r.trial_id in known]
    if clash:
        raise HistoryRewriteError(f"trial ids already in history: {clash}")
    return (*previous, *new)


def numbering_problem(history: Sequence[TrialRecord], cycle: int) -> str | None:
    """What is wrong with the trial numbering of a cycle's history, or None.

    Each cycle numbers its new trials on from every number used before it, so along history
    the numbers of new trials only grow; a continuation (successive halving) keeps the number
    of the trial it continues, which history holds. No trial id appears twice, and no trial
    is from a cycle after this one.
    """
    ids = [r.trial_id for r in history]
    if len(set(ids)) != len(ids):
        return f"trial ids repeat: {sorted({i for i in ids if ids.count(i) > 1})}"
    last = -1
    for r in history:
        p = r.proposal
        if p.cycle > cycle:
            return f"{r.trial_id} is from cycle {p.cycle}, after this cycle {cycle}"
        if p.continues is not None:
            if p.continues not in ids:
                return f"{r.trial_id} continues {p.continues}, which history does not hold"
        elif p.number <= last:
            return f"{r.trial_id} has number {p.number}, not after the {last} before it"
        else:
            last = p.number
    return None


def check_extends(previous: Sequence[TrialRecord], current: Sequence[TrialRecord]) -> None:
    """Raise unless `current` starts with every record of `previous`, unchanged."""
    if len(current) < len(previous) or any(a != b for a, b in zip(previous, current, strict=False)):
        raise HistoryRewriteError("history would lose or change records an earlier cycle wrote")
