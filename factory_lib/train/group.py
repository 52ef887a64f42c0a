"""A train task's trials: fused where shapes match, back to back otherwise, promoted at once.

`train_group` runs several proposals in one task, so one process start-up serves a whole group.
Under successive halving a trial that completes a lower rung keeps a checkpoint and a promoted
trial continues from it (factory_lib.fidelity).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import torch

from factory_lib.data.module import TensorDataModule, TrialData, build_trial_data
from factory_lib.fidelity import promotions, trial_epochs
from factory_lib.objective import Objective
from factory_lib.records import Proposal, TrialRecord
from factory_lib.reward import score
from factory_lib.train.checkpoint import CheckpointSource
from factory_lib.train.fused import fuse_key, train_fused
from factory_lib.train.prune import Curves
from factory_lib.train.trial import TrialOutput, cause_of, run_trial


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
) -> list[TrialOutput]:
    """Run a group of proposals in this process; one's failure never touches another.

    Same-shape MLP trials are fused into one batched model (`budget.fuse`); the others train
    back to back. `references` are earlier trials' validation curves for pruning (or a shared
    `Curves` board); each trial that finishes here joins them for the next. Under successive
    halving, trials promoted by their rank among `history` and this group continue here at
    once (factory_lib.fidelity), and a proposal that continues an earlier cycle's trial gets
    its checkpoint from `load_checkpoint`. Results come back in the order of `proposals`,
    continuations after.
    """
    if not torch.cuda.is_available():
        torch.set_num_threads(cpu_threads(concurrent_tasks))
    data = build_trial_data(objective)
    curves = references if isinstance(references, Curves) else Curves(references)
    done: dict[str, TrialOutput] = {}

    def finished(outputs: Sequence[TrialOutput]) -> None:
        for out in outputs:
            done[out.result.proposal.trial_id] = out
            r = out.result
            feasible = score(objective, r).feasible
            curves.finished(r.proposal.trial_id, r.curve, r.status, feasible)

    for cluster in fusable_clusters(objective, proposals, data):
        finished(_train_fused_or_alone(objective, cluster, data, curves))

    def train_alone(proposal: Proposal) -> None:
        source = _checkpoint_source(proposal, done, load_checkpoint)
        finished([run_trial(objective, proposal, data, references=curves, checkpoint=source)])

    for proposal in proposals:
        if proposal.trial_id not in done:
            train_alone(proposal)
    cycle = max((p.cycle for p in proposals), default=0)
    promoted: list[Proposal] = []
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
        promoted += here
    outputs = []
    for proposal in [*proposals, *promoted]:
        out = done[proposal.trial_id]
        out = TrialOutput(
            out.result.model_copy(update={"task_pathspec": task_pathspec}),
            out.weights,
            out.checkpoint,
        )
        r = out.result
        print(
            f"[{proposal.trial_id}] {r.status}" + (f" ({r.cause})" if r.cause else ""), flush=True
        )
        outputs.append(out)
    return outputs


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
) -> list[TrialOutput]:
    try:
        outputs = train_fused(objective, cluster, data, references)
    except Exception as exc:  # noqa: BLE001 - a fused failure must not lose the trials
        print(f"fused training of {len(cluster)} trials failed ({cause_of(exc)}); training alone")
        return [run_trial(objective, p, data, references=references) for p in cluster]
    print(f"fused {len(cluster)} trials: {', '.join(p.trial_id for p in cluster)}", flush=True)
    return outputs
