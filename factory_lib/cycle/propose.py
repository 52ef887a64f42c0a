"""The start step's proposals: the lease and plan (`cycle.plan`), then the proposers' trials,
grouped for the train foreach. Imports the proposers (Optuna; the `anthropic` SDK only when
Claude proposes this cycle), which no later step needs.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from factory_lib.cycle.plan import CyclePlan, plan_cycle
from factory_lib.fidelity import promotions
from factory_lib.objective import Objective
from factory_lib.propose.base import renumber, seen_by_proposers
from factory_lib.propose.llm.report import KEY_VARIABLE, LLMReport
from factory_lib.propose.mix import Mix, llm_mix
from factory_lib.propose.optuna_proposer import OptunaProposer
from factory_lib.records import Proposal
from factory_lib.runs.env import oom_mark
from factory_lib.runs.lease import release_lease, take_lease


@dataclass(frozen=True)
class ProposalBatch:
    """A cycle's proposals, the mix that split them and what the LLM proposer reported."""

    proposals: tuple[Proposal, ...]
    mix: Mix | None
    llm_report: LLMReport | None

    @property
    def notices(self) -> tuple[str, ...]:
        return self.llm_report.notices if self.llm_report else ()


def open_cycle(
    objective: Objective,
    flow_name: str,
    run_id: str,
    fresh: bool = False,
    from_run: str | None = None,
    branch: str | None = None,
) -> tuple[CyclePlan, ProposalBatch]:
    """The start step: take the search's lease (runs.lease), plan the cycle (`plan_cycle`),
    then propose. A start that fails gives the lease back: there is nothing to resume."""
    lease, notices = take_lease(objective, f"{flow_name}/{run_id}", branch=branch)
    try:
        plan = plan_cycle(objective, flow_name, run_id, fresh, from_run, branch)
        plan = replace(plan, lease=lease, notices=(*notices, *plan.notices), oom_mark=oom_mark())
        return plan, propose_cycle(plan)
    except BaseException:
        release_lease(lease)
        raise


def propose_cycle(plan: CyclePlan, llm_client: Any = None) -> ProposalBatch:
    """The cycle's proposals: fidelity promotions due first, then the LLM's share of the other
    slots, and Optuna fills the rest."""
    objective = plan.objective
    seen = seen_by_proposers(objective, plan.history)
    promoted = promotions(objective, plan.history, plan.cycle)[: objective.budget.trials_per_cycle]
    n = objective.budget.trials_per_cycle - len(promoted)
    first = max(plan.first_number, len(plan.history))
    mix, report = None, None
    from_llm: list[Proposal] = []
    if objective.proposers.llm is not None and (
        llm_client is not None or os.environ.get(KEY_VARIABLE)
    ):
        mix = llm_mix(objective.proposers.llm, plan.history)
        n_llm, _ = mix.split(n)
        if n_llm:
            # the SDK takes a second to import: only where Claude proposes
            from factory_lib.propose.llm.client import LLMProposer

            llm = LLMProposer(
                objective,
                plan.data.input_shape,
                plan.data.n_outputs,
                plan.llm_usd_total,
                llm_client,
                plan.previous.notes if plan.previous else None,
                seconds_since(plan.previous.created_at) if plan.previous else None,
            )
            from_llm = llm.propose(objective, seen, n_llm, plan.cycle, first)
            report = llm.report
    from_optuna = OptunaProposer(objective).propose(
        objective,
        seen,
        n - len(from_llm),
        plan.cycle,
        first + len(from_llm),
        pending=from_llm,
        warm=seen_by_proposers(objective, plan.warm_start),
    )
    proposals = [*promoted, *renumber(objective, [*from_llm, *from_optuna], first)]
    return ProposalBatch(proposals=tuple(proposals), mix=mix, llm_report=report)


def seconds_since(stamp: str) -> float | None:
    """Seconds from a run's `created_at` (as `runs.client` keeps it) to now; None if unknown."""
    try:
        then = datetime.fromisoformat(stamp)
    except ValueError:
        return None
    now = datetime.now(then.tzinfo) if then.tzinfo else datetime.now()
    return (now - then).total_seconds()


def group_trials(
    proposals: Sequence[Proposal], size: int | str, most: int | None = None
) -> list[tuple[Proposal, ...]]:
    """Split proposals into foreach groups of at most `size` trials each, and never more than
    `most` (the trials a train task's timeout allows for).

    `auto` makes one group per CPU core of this machine (process start-up and imports are then
    paid once per core, not once per trial); set a number for remote GPUs.
    """
    if not proposals:
        return []
    if size == "auto":
        size = -(-len(proposals) // min(len(proposals), os.cpu_count() or 1))
    n = min(int(size), most) if most else int(size)
    return [tuple(proposals[i : i + n]) for i in range(0, len(proposals), n)]
