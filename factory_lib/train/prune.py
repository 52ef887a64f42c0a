"""Pruning from history: stop a trial whose validation curve falls behind earlier trials'.

At each epoch from `pruning.warmup_epochs` on, a trial's validation metric is compared with
the `pruning.percentile` of the earlier trials' values at the same epoch (the median by
default), over every trial of history that reached that epoch, earlier cycles included (their
curves are in the records, so no side database is needed) and the trials that ran before it
in the same task. A trial worse than that, in the metric's direction, stops and is recorded as
`pruned` with its curve. With fewer than `pruning.min_trials` earlier curves at an epoch,
nothing is pruned there.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from factory_lib.objective import PruningSpec
from factory_lib.records import TrialRecord

INFEASIBLE_ATTR = "infeasible"  # a shared-storage trial that broke a hard constraint

if TYPE_CHECKING:  # optuna is imported only where a shared storage is used
    import optuna


def history_curves(records: Sequence[TrialRecord]) -> list[tuple[float, ...]]:
    """The validation curves of the feasible trials that trained (completed or pruned).

    An infeasible trial (one that broke a hard constraint) sets no bar for the others.
    """
    return [
        r.result.curve
        for r in records
        if r.status in ("ok", "pruned") and r.feasible and r.result.curve
    ]


def prune_reason(
    curve: Sequence[float],
    references: Sequence[Sequence[float]],
    spec: PruningSpec,
    direction: Literal["maximize", "minimize"],
) -> str | None:
    """Why a trial with this curve so far should stop now, or None to let it go on."""
    if spec.rule == "none" or not curve:
        return None
    epoch = len(curve)  # 1-based: the value just measured is curve[epoch - 1]
    if epoch < spec.warmup_epochs:
        return None
    earlier = [r[epoch - 1] for r in references if len(r) >= epoch]
    if len(earlier) < spec.min_trials:
        return None
    # "Worse than the p-th percentile" counted from the good end of the metric.
    q = spec.percentile if direction == "minimize" else 100 - spec.percentile
    bar = float(np.percentile(earlier, q))
    value = curve[-1]
    worse = value < bar if direction == "maximize" else value > bar
    if not worse:
        return None
    return (
        f"pruned at epoch {epoch}: {value:.4g} is worse than the {spec.percentile:g}th-percentile "
        f"bar {bar:.4g} of {len(earlier)} earlier trials at that epoch"
    )


class Curves:
    """The curves a running trial is compared with, and where it reports its own.

    Always: the earlier trials' curves given at the start (history, and each trial that
    finished before it in the same task). With `storage` (an Optuna storage URL, or a journal
    file path every train task reaches), also the curves of this cycle's trials in other
    tasks, epoch by epoch as they train: each trial is a trial of the Optuna study `study`
    there and reports its validation metric per epoch. Pruning then depends on timing, so a
    resumed cycle may prune differently.
    """

    def __init__(
        self,
        earlier: Sequence[Sequence[float]] = (),
        storage: str | None = None,
        study: str = "curves",
    ) -> None:
        self.earlier: list[Sequence[float]] = list(earlier)
        self.storage, self.study_name = storage, study
        self.study = _shared_study(storage, study) if storage else None
        self._trials: dict[str, optuna.Trial] = {}

    def reconnected(self) -> Curves:
        """This board with a connection of its own to the shared storage, for a trial worker
        process: one inherited from its parent must not be used by both."""
        return Curves(self.earlier, self.storage, self.study_name)

    def __getstate__(self) -> dict[str, Any]:
        """For a spawned trial worker: the curves, and where the shared ones are (a storage
        connection does not travel); trials in flight stay with this board."""
        return {"earlier": self.earlier, "storage": self.storage, "study": self.study_name}

    def __setstate__(self, state: dict[str, Any]) -> None:
        vars(self).update(vars(Curves(state["earlier"], state["storage"], state["study"])))

    @classmethod
    def of(cls, references: Sequence[Sequence[float]] | Curves) -> Curves:
        return references if isinstance(references, Curves) else cls(references)

    def others(self, trial_id: str) -> list[Sequence[float]]:
        """Every curve but this trial's own."""
        if self.study is None:
            return self.earlier
        own = self._trials.get(trial_id)
        shared = [
            [t.intermediate_values[e] for e in sorted(t.intermediate_values)]
            for t in self.study.get_trials(deepcopy=False)
            if (own is None or t.number != own.number)
            and t.intermediate_values
            and not t.user_attrs.get(INFEASIBLE_ATTR)
        ]
        return [*self.earlier, *shared]

    def report(self, trial_id: str, curve: Sequence[float]) -> None:
        """After an epoch: the trial's curve so far (its last value is the new one)."""
        if self.study is None or not curve:
            return
        trial = self._trials.get(trial_id)
        if trial is None:
            trial = self._trials[trial_id] = self.study.ask()
            trial.set_user_attr("trial_id", trial_id)
            for epoch, value in enumerate(curve[:-1]):  # a continuation's inherited epochs
                trial.report(value, epoch)
        trial.report(curve[-1], len(curve) - 1)

    def check(
        self,
        trial_id: str,
        curve: Sequence[float],
        spec: PruningSpec,
        direction: Literal["maximize", "minimize"],
    ) -> str | None:
        """After an epoch: report the curve, then why the trial should stop now (or None)."""
        self.report(trial_id, curve)
        if spec.rule == "none":  # no need to read the others' curves
            return None
        return prune_reason(curve, self.others(trial_id), spec, direction)

    def finished(
        self, trial_id: str, curve: Sequence[float], status: str, feasible: bool = True
    ) -> None:
        """A trial of this task ended: its curve counts for the next ones, unless it broke a
        hard constraint."""
        if self.study is None:
            if curve and feasible:
                self.earlier.append(curve)
            return
        trial = self._trials.pop(trial_id, None)
        if trial is None:
            return
        if not feasible:
            trial.set_user_attr(INFEASIBLE_ATTR, True)
        from optuna.trial import TrialState

        if status == "ok" and curve:
            self.study.tell(trial, curve[-1])
        else:
            self.study.tell(
                trial, state=TrialState.PRUNED if status == "pruned" else TrialState.FAIL
            )


def _shared_study(storage: str, name: str) -> optuna.Study:
    """The study in `storage`: a database URL (sqlite:///, postgresql://...), redis:// for a
    Redis journal, otherwise a journal file (processes on one machine may share it)."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend, JournalRedisBackend

    backend: optuna.storages.BaseStorage | str
    if storage.startswith("redis://"):
        backend = JournalStorage(JournalRedisBackend(storage))
    elif "://" in storage:
        backend = storage
    else:
        backend = JournalStorage(JournalFileBackend(storage))
    return optuna.create_study(storage=backend, study_name=name, load_if_exists=True)
