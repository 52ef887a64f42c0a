"""A cycle's beginning: the lease and the plan from the latest successful cycle; what a train
task's results and pruning references are made of.

Every step unpickles a `CyclePlan`, so this module stays light: no torch, no Lightning, no
proposer (those are in `cycle.propose`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from factory_lib.data.describe import describe_data
from factory_lib.data.splits import DataSummary, Preprocessing
from factory_lib.history import CycleState
from factory_lib.objective import Objective, search_space_changes
from factory_lib.propose.llm.report import KEY_VARIABLE
from factory_lib.records import Proposal, TrialRecord, TrialResult
from factory_lib.registry.gate import Champion
from factory_lib.runs.client import (
    Chain,
    chain_from,
    default_branch,
    latest_cycle,
    newest_cycle,
    nothing_found,
)
from factory_lib.runs.env import OomMark
from factory_lib.runs.lease import Lease
from factory_lib.train.prune import Curves, history_curves


class BudgetSpent(RuntimeError):
    """The objective's budget allows no more cycles."""


@dataclass(frozen=True)
class CyclePlan:
    """Everything a cycle starts from: the effective objective and what earlier cycles left."""

    objective: Objective
    cycle: int
    data: DataSummary
    preprocessing: Preprocessing | None
    previous: CycleState | None
    notices: tuple[str, ...] = ()
    warm_start: tuple[TrialRecord, ...] = ()  # history of `proposers.warm_start`'s objective
    # The search's next unused trial number: numbering goes on after every run of the search,
    # also one that --from-run skipped, so that no trial id or seed is used twice.
    first_number: int = 0
    newest_cycle: str | None = None  # the newest successful cycle when planned (pathspec)
    # Cycle numbers of this search's retired cycles (`factory retire`), which its budget does
    # not count: the cycle number goes on after them, the count of cycles spent does not.
    retired_cycles: tuple[int, ...] = ()
    # What changed in search_space and fixed since `previous` ran (objective.search_space_changes)
    space_changes: tuple[str, ...] = ()
    lease: Lease | None = None  # held from start to end: one cycle at a time per search
    # The kernel's OOM kill count where the cycle started: a task that died is named out of
    # memory when it rose (runs.env.oom_note).
    oom_mark: OomMark | None = None
    # The @project branch the search lives on (runs.client.branch_name); None in runs from
    # before branches.
    branch: str | None = None

    @property
    def history(self) -> tuple[TrialRecord, ...]:
        return self.previous.history if self.previous else ()

    @property
    def champion(self) -> Champion | None:
        return self.previous.champion if self.previous else None

    @property
    def llm_usd_total(self) -> float:
        return self.previous.llm_usd_total if self.previous else 0.0


def plan_cycle(
    objective: Objective,
    flow_name: str,
    run_id: str | None,
    fresh: bool = False,
    from_run: str | None = None,
    branch: str | None = None,
) -> CyclePlan:
    """Find the previous cycle of the search on `branch` (unless `fresh`; `from_run` names it
    explicitly), checked (runs.client.chain_from), check the budget and describe the data."""
    if fresh and from_run:
        raise ValueError("--fresh starts a new search and --from-run continues one: choose one")
    branch = default_branch(branch)
    chain = (
        Chain(
            previous=None,
            newest=newest_cycle(flow_name, objective.name, exclude_run=run_id, branch=branch),
        )
        if fresh
        else chain_from(
            flow_name, objective.name, exclude_run=run_id, from_run=from_run, branch=branch
        )
    )
    previous = chain.previous
    cycle = chain.last_cycle + 1 if previous else 1
    if chain.cycles_counted >= objective.budget.max_cycles:
        n_retired = len(chain.retired_cycles)
        retired = f" (not counting {n_retired} retired)" if n_retired else ""
        raise BudgetSpent(
            f"objective {objective.name!r} has run {chain.cycles_counted} cycles{retired} of its "
            f"budget.max_cycles={objective.budget.max_cycles}: raise the budget or start with "
            "--fresh"
        )
    data, preprocessing = describe_data(objective)
    notices = list(chain.notices)
    if previous is None and not fresh:
        notices.append(f"a new search: {nothing_found(objective.name, branch, flow_name)}")
    notices += [f"data {data.name}: {note}" for note in data.notes]  # skipped files, dropped rows
    seeds = objective.promotion.seeds
    if seeds > 1:  # announced: training that the cycle pays for after its trials
        notices.append(
            f"promotion gate: the challenger is re-trained {seeds - 1} more time(s) with other "
            f"seeds (promotion.seeds: {seeds}) before it can be promoted: each group's best in "
            "its train task after the trials where that is quicker than starting a measure "
            "task, in measure tasks otherwise"
        )
    if previous and (from_run or chain.retired_cycles != previous.retired_cycles):
        how = f"--from-run {from_run}: continuing" if from_run else "continuing"
        notices.append(
            f"{how} from {previous.run_pathspec} (cycle {previous.cycle}); this is cycle "
            f"{cycle}, trial numbers from {chain.last_number + 1}"
        )
    changes: tuple[str, ...] = ()
    if previous and previous.objective:
        changes = search_space_changes(previous.objective, objective)
        if changes:
            notices.append(
                f"search space changed since {previous.run_pathspec} (cycle {previous.cycle}): "
                + "; ".join(changes)
            )
    if objective.proposers.llm is not None and not os.environ.get(KEY_VARIABLE):
        notices.append(
            f"LLM proposer off: {KEY_VARIABLE} is not set, so this cycle runs on Optuna alone "
            f"({objective.proposers.sampler}). Set it to let Claude propose."
        )
    warm: tuple[TrialRecord, ...] = ()
    if objective.proposers.warm_start:
        other = latest_cycle(flow_name, objective.proposers.warm_start, branch=branch)
        warm = other.history if other else ()
        notices.append(
            f"warm start: the Optuna study is seeded with {len(warm)} trials of objective "
            f"{objective.proposers.warm_start!r} ({other.run_pathspec})"
            if other
            else f"warm start: objective {objective.proposers.warm_start!r} has no finished "
            "cycle yet, so this cycle starts cold"
        )
    return CyclePlan(
        objective=objective,
        cycle=cycle,
        data=data,
        preprocessing=preprocessing,
        previous=previous,
        notices=tuple(notices),
        warm_start=warm,
        first_number=chain.last_number + 1 if previous else 0,
        newest_cycle=chain.newest,
        retired_cycles=chain.retired_cycles,
        space_changes=changes,
        branch=branch,
    )


def results_from_task(
    group: Sequence[Proposal],
    results: Sequence[TrialResult] | None,
    error: Any,
    death: str | None = None,
) -> list[TrialResult]:
    """A train task's results; if the task itself failed, a record for each of its trials.

    `death` says how the task's process ended, where the runtime recorded it (e.g. killed by
    signal 9), and leads the cause.
    """
    if results is not None and error is None:
        return list(results)
    done = {r.proposal.trial_id: r for r in results or ()}
    kind = getattr(error, "type", type(error).__name__)
    status = "timeout" if "Timeout" in str(kind) else "failed"
    how = f"{death}; " if death else ""
    cause = f"train task failed: {how}{kind}: {getattr(error, 'exception', error)}"[:500]
    return [
        done.get(p.trial_id) or TrialResult(proposal=p, status=status, cause=cause) for p in group
    ]


def pruning_curves(plan: CyclePlan, storage: str | None, run_id: str) -> Curves:
    """What a train task's trials are pruned against: history's curves (of trials that
    trained, completed or pruned) and, with a shared Optuna `storage` in the deployment, this
    cycle's trials in other tasks as they train."""
    return Curves(
        history_curves(plan.history), storage, study=f"{plan.objective.name}-curves-{run_id}"
    )
