"""A train task's trials: fused where shapes match, back to back otherwise, promoted at once.

`train_group` runs several proposals in one task, so one process start-up serves a whole group.
Under successive halving a trial that completes a lower rung keeps a checkpoint and a promoted
trial continues from it (factory_lib.fidelity). The group trains in a worker process the task
can kill at a trial's deadline (factory_lib.train.supervisor), or in the task's own process.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch

from factory_lib.data.module import TensorDataModule, TrialData, build_trial_data
from factory_lib.data.splits import DataSummary
from factory_lib.fidelity import promotions, trial_epochs
from factory_lib.objective import Objective
from factory_lib.records import Proposal, TrialRecord, TrialResult
from factory_lib.reward import score
from factory_lib.train.checkpoint import CheckpointSource
from factory_lib.train.fused import fuse_key, train_fused
from factory_lib.train.prune import Curves
from factory_lib.train.supervisor import start_method, train_isolated
from factory_lib.train.trial import TrialOutput, cause_of, run_trial, stand_in
from factory_lib.train.worker import Job, Reporter


def cpu_threads(concurrent_tasks: int) -> int:
    """Torch threads for one CPU task when `concurrent_tasks` share this machine's cores."""
    cores = os.cpu_count() or 1
    return max(1, cores // max(1, min(cores, concurrent_tasks)))


def train_group(
    objective: Objective,
    proposals: Sequence[Proposal],
    task_pathspec: str | None = None,
    concurrent_tasks: int = 1,
    references: Sequence[Sequence[float]] | Curves = (),
    history: Sequence[TrialRecord] = (),
    load_checkpoint: Callable[[Proposal], bytes] | None = None,
    expected_data: DataSummary | None = None,
) -> list[TrialOutput]:
    """Run a group of proposals; one's failure, hang or crash never touches another.

    Same-shape MLP trials are fused into one batched model (`budget.fuse`); the others train
    back to back. `references` are earlier trials' validation curves for pruning (or a shared
    `Curves` board); each trial that finishes here joins them for the next. Under successive
    halving, trials promoted by their rank among `history` and this group continue here at
    once (factory_lib.fidelity), and a proposal that continues an earlier cycle's trial gets
    its checkpoint from `load_checkpoint`. Results come back in the order of `proposals`,
    continuations after. With `expected_data` (the start step's description), data whose
    split differs from it is refused before any trial.

    With `budget.isolate` (the default) the trials train in a worker process that is killed
    when one hangs past its deadline, and the rest go on in a fresh one
    (factory_lib.train.supervisor); without, in this process.
    """
    threads = cpu_threads(concurrent_tasks)
    _use_threads(threads)
    curves = Curves.of(references)

    work = _Work(objective, proposals, threads, history, load_checkpoint, expected_data)
    if objective.budget.isolate:

        def job(done: dict[str, TrialOutput]) -> Job:
            return partial(_train_in_worker, work, curves, done)

        timeout_s = objective.budget.trial_timeout_s
        done = train_isolated(timeout_s, start_method(threads), job)
    else:
        done = {}
        _train(work, curves, done, _InProcess())
    asked = {p.trial_id for p in proposals}
    in_order = [done[p.trial_id] for p in proposals]
    in_order += [out for trial_id, out in done.items() if trial_id not in asked]
    outputs = []
    for out in in_order:
        r = out.result.model_copy(update={"task_pathspec": task_pathspec})
        print(
            f"[{r.proposal.trial_id}] {r.status}" + (f" ({r.cause})" if r.cause else ""), flush=True
        )
        outputs.append(TrialOutput(r, out.weights, out.checkpoint))
    return outputs


def _use_threads(threads: int) -> None:
    if not torch.cuda.is_available():
        torch.set_num_threads(threads)


class _InProcess:
    """Reports of trials trained in the task's own process: nobody is watching."""

    def started(self, stand_ins: Sequence[TrialResult]) -> None:
        pass

    def finished(self, output: TrialOutput) -> None:
        pass


@dataclass(frozen=True)
class _Work:
    """What a group trains, as `train_group` was asked."""

    objective: Objective
    proposals: Sequence[Proposal]
    threads: int
    history: Sequence[TrialRecord]
    load_checkpoint: Callable[[Proposal], bytes] | None
    expected_data: DataSummary | None


def _train_in_worker(
    work: _Work, curves: Curves, done: dict[str, TrialOutput], reporter: Reporter
) -> None:
    """`_train` in a worker process, with a connection of its own to shared curves."""
    _train(work, curves.reconnected(), done, reporter)


def _train(work: _Work, curves: Curves, done: dict[str, TrialOutput], reporter: Reporter) -> None:
    """Train the trials (and the promotions due) that `done` does not hold yet, adding each
    output to it: in a worker, `done` holds what an earlier worker finished or left behind."""
    objective, proposals, history = work.objective, work.proposals, work.history
    _use_threads(work.threads)
    data = build_trial_data(objective, work.expected_data)

    def count(out: TrialOutput) -> None:
        r = out.result
        curves.finished(r.proposal.trial_id, r.curve, r.status, score(objective, r).feasible)

    for out in done.values():  # from an earlier worker: they count for pruning the rest
        count(out)

    def finished(outputs: Sequence[TrialOutput]) -> None:
        for out in outputs:
            done[out.result.proposal.trial_id] = out
            count(out)
            reporter.finished(out)

    def train_alone(proposal: Proposal) -> None:
        reporter.started([stand_in(proposal, data)])
        source = _checkpoint_source(proposal, done, work.load_checkpoint)
        finished([run_trial(objective, proposal, data, references=curves, checkpoint=source)])

    left = [p for p in proposals if p.trial_id not in done]
    for cluster in fusable_clusters(objective, left, data):
        reporter.started([stand_in(p, data) for p in cluster])  # one deadline window
        finished(_train_fused_or_alone(objective, cluster, data, curves, train_alone))
    for proposal in left:
        if proposal.trial_id not in done:
            train_alone(proposal)
    cycle = max((p.cycle for p in proposals), default=0)
    while objective.fidelity is not None:
        local = [score(objective, o.result) for o in done.values()]
        here = [
            p
            for p in promotions(objective, [*history, *local], cycle)
            if (parent := done.get(p.continues or "")) is not None and parent.checkpoint
        ]
        if not here:
            break
        for proposal in here:
            print(f"[{proposal.trial_id}] promoted: {proposal.rationale}", flush=True)
            train_alone(proposal)


def _checkpoint_source(
    proposal: Proposal,
    done: dict[str, TrialOutput],
    load_checkpoint: Callable[[Proposal], bytes] | None,
) -> CheckpointSource | None:
    """Where a continued trial's checkpoint comes from: this task, or the task that stored it.

    Read lazily inside the trial, so a checkpoint that cannot be read fails that trial alone.
    """
    if proposal.continues is None:
        return None
    parent = done.get(proposal.continues)

    def read() -> bytes:
        if parent is not None and parent.checkpoint is not None:
            return parent.checkpoint
        if load_checkpoint is None:
            raise LookupError(f"no checkpoint of {proposal.continues} in this task")
        return load_checkpoint(proposal)

    return read


def fusable_clusters(
    objective: Objective, proposals: Sequence[Proposal], data: TrialData
) -> list[list[Proposal]]:
    """Groups of two or more proposals that can train as one fused model."""
    if not objective.budget.fuse or not isinstance(data.datamodule, TensorDataModule):
        return []
    clusters: dict[Any, list[Proposal]] = {}
    for p in proposals:
        if p.continues is not None:  # continued from a checkpoint: alone
            continue
        key = fuse_key(objective, p.params, trial_epochs(objective, p))
        if key is not None:
            clusters.setdefault(key, []).append(p)
    return [c for c in clusters.values() if len(c) > 1]


def _train_fused_or_alone(
    objective: Objective,
    cluster: list[Proposal],
    data: TrialData,
    references: Curves,
    train_alone: Callable[[Proposal], None],
) -> list[TrialOutput]:
    """The cluster's outputs, fused; if fused training fails, each trains alone (and reports
    itself) and none is returned."""
    try:
        outputs = train_fused(objective, cluster, data, references)
    except Exception as exc:  # noqa: BLE001 - a fused failure must not lose the trials
        print(f"fused training of {len(cluster)} trials failed ({cause_of(exc)}); training alone")
        for proposal in cluster:
            train_alone(proposal)
        return []
    print(f"fused {len(cluster)} trials: {', '.join(p.trial_id for p in cluster)}", flush=True)
    return outputs
