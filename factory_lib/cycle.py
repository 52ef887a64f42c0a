"""One cycle's bookkeeping: what the start step plans and what the join step concludes.

The flow's steps call these functions and store what they return; nothing here touches
Metaflow except through the Client API in `factory_lib.history`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from factory_lib.data import DataSummary, Preprocessing, describe_data, load_splits
from factory_lib.fidelity import promotions
from factory_lib.history import CycleState, append, check_extends, latest_cycle
from factory_lib.model_card import model_card
from factory_lib.objective import Objective
from factory_lib.propose import OptunaProposer, seen_by_proposers
from factory_lib.propose.base import renumber
from factory_lib.propose.llm import KEY_VARIABLE, LLMProposer, LLMReport
from factory_lib.propose.mix import Mix, llm_mix
from factory_lib.prune import Curves, history_curves
from factory_lib.records import Proposal, TrialRecord, TrialResult
from factory_lib.registry import (
    Candidate,
    Champion,
    EventKind,
    Measure,
    ModelPackage,
    PromotionDecision,
    RegistryEvent,
    decide,
    utc_stamp,
)
from factory_lib.reward import ParetoFront, flags, pareto_front, score

if TYPE_CHECKING:
    from factory_lib.export import Exports

# Seeds of a trial's re-measurements: far from the search's own trial seeds.
SEED_STRIDE = 100_003
EXPORT_SAMPLE = 256


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

    @property
    def history(self) -> tuple[TrialRecord, ...]:
        return self.previous.history if self.previous else ()

    @property
    def champion(self) -> Champion | None:
        return self.previous.champion if self.previous else None

    @property
    def llm_usd_total(self) -> float:
        return self.previous.llm_usd_total if self.previous else 0.0


@dataclass(frozen=True)
class ProposalBatch:
    """A cycle's proposals, the mix that split them and what the LLM proposer reported."""

    proposals: tuple[Proposal, ...]
    mix: Mix | None
    llm_report: LLMReport | None

    @property
    def notices(self) -> tuple[str, ...]:
        return self.llm_report.notices if self.llm_report else ()


@dataclass(frozen=True)
class CycleOutcome:
    """What the join concludes: the new history, the promotion decision and the champion."""

    cycle: int
    records: tuple[TrialRecord, ...]
    history: tuple[TrialRecord, ...]
    decision: PromotionDecision
    champion: Champion | None
    champion_package: ModelPackage | None
    stale_cycles: int
    best_val_reward: float | None
    llm_usd_total: float
    pareto: ParetoFront
    model_card: dict[str, Any] | None
    exports: Exports | None
    promotions: tuple[RegistryEvent, ...]
    pending: Candidate | None

    def summary_line(self) -> str:
        counts: dict[str, int] = {}
        for r in self.records:
            counts[r.status] = counts.get(r.status, 0) + 1
        status = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
        best = f"{self.best_val_reward:.4f}" if self.best_val_reward is not None else "none"
        champ = (
            f"{self.champion.trial_id} (test {self.champion.metric} {self.champion.test_value:.4f})"
            if self.champion
            else "none"
        )
        return (
            f"cycle {self.cycle}: {len(self.records)} trials ({status}); best val reward {best}; "
            f"{self.decision.status}; champion {champ}"
        )


def plan_cycle(
    objective: Objective, flow_name: str, run_id: str | None, fresh: bool = False
) -> CyclePlan:
    """Find the previous cycle (unless `fresh`), check the budget and describe the data."""
    previous = None if fresh else latest_cycle(flow_name, objective.name, exclude_run=run_id)
    cycle = previous.cycle + 1 if previous else 1
    if cycle > objective.budget.max_cycles:
        raise BudgetSpent(
            f"objective {objective.name!r} has run {cycle - 1} cycles of its budget.max_cycles="
            f"{objective.budget.max_cycles}: raise the budget or start with --fresh"
        )
    data, preprocessing = describe_data(objective)
    notices = []
    if objective.proposers.llm is not None and not os.environ.get(KEY_VARIABLE):
        notices.append(
            f"LLM proposer off: {KEY_VARIABLE} is not set, so this cycle runs on Optuna alone "
            f"({objective.proposers.sampler}). Set it to let Claude propose."
        )
    warm: tuple[TrialRecord, ...] = ()
    if objective.proposers.warm_start:
        other = latest_cycle(flow_name, objective.proposers.warm_start)
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
    )


def propose_cycle(plan: CyclePlan, llm_client: Any = None) -> ProposalBatch:
    """The cycle's proposals: fidelity promotions due first, then the LLM's share of the other
    slots, and Optuna fills the rest."""
    objective = plan.objective
    seen = seen_by_proposers(objective, plan.history)
    promoted = promotions(objective, plan.history, plan.cycle)[: objective.budget.trials_per_cycle]
    n = objective.budget.trials_per_cycle - len(promoted)
    first = len(plan.history)
    mix, report = None, None
    from_llm: list[Proposal] = []
    if objective.proposers.llm is not None and (
        llm_client is not None or os.environ.get(KEY_VARIABLE)
    ):
        mix = llm_mix(objective.proposers.llm, plan.history)
        n_llm, _ = mix.split(n)
        if n_llm:
            llm = LLMProposer(
                objective,
                plan.data.input_shape,
                plan.data.n_outputs,
                plan.llm_usd_total,
                llm_client,
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


def group_trials(proposals: Sequence[Proposal], size: int | str) -> list[tuple[Proposal, ...]]:
    """Split proposals into foreach groups of at most `size` trials each.

    `auto` makes one group per CPU core of this machine (process start-up and imports are then
    paid once per core, not once per trial); set a number for remote GPUs.
    """
    if not proposals:
        return []
    if size == "auto":
        size = -(-len(proposals) // min(len(proposals), os.cpu_count() or 1))
    n = int(size)
    return [tuple(proposals[i : i + n]) for i in range(0, len(proposals), n)]


def results_from_task(
    group: Sequence[Proposal], results: Sequence[TrialResult] | None, error: Any
) -> list[TrialResult]:
    """A train task's results; if the task itself failed, a record for each of its trials."""
    if results is not None and error is None:
        return list(results)
    done = {r.proposal.trial_id: r for r in results or ()}
    kind = getattr(error, "type", type(error).__name__)
    status = "timeout" if "Timeout" in str(kind) else "failed"
    cause = f"train task failed: {kind}: {getattr(error, 'exception', error)}"[:500]
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


def seed_measurer(plan: CyclePlan) -> Measure:
    """Re-measure a trial's held-out metric by retraining it with other seeds, in this task."""
    metric = plan.objective.promotion_metric

    def measure(record: TrialRecord, k: int) -> tuple[float, ...]:
        from factory_lib.train import train_group

        copies = [
            record.proposal.model_copy(
                update={
                    "trial_id": f"{record.trial_id}-s{j}",
                    "seed": (record.proposal.seed + SEED_STRIDE * j) % 2**31,
                    # from scratch to the same epochs: what continuing from a checkpoint equals
                    "continues": None,
                    "checkpoint": None,
                }
            )
            for j in range(1, k)
        ]
        own = record.result.evaluation.metrics("test")[metric] if record.result.evaluation else None
        again = [
            o.result.evaluation.metrics("test")[metric]
            for o in train_group(plan.objective, copies)
            if o.result.status == "ok" and o.result.evaluation is not None
        ]
        return tuple(v for v in (own, *again) if v is not None)

    return measure


def close_cycle(
    plan: CyclePlan,
    results: Iterable[TrialResult],
    weights: Callable[[str], bytes],
    llm_usd: float = 0.0,
    measure: Measure | None = None,
    run_pathspec: str = "",
) -> CycleOutcome:
    """Score and flag the results, extend history, run the promotion gate; package, describe
    and export a new champion."""
    objective = plan.objective
    scored: list[TrialRecord] = []
    for r in sorted(results, key=lambda r: r.proposal.number):
        record = score(objective, r)
        scored.append(
            record.model_copy(update={"flags": flags(objective, record, [*plan.history, *scored])})
        )
    records = tuple(scored)
    history = append(plan.history, records)
    check_extends(plan.history, history)
    decision, champion = decide(objective, plan.champion, records, measure)
    previous = plan.previous
    package = previous.champion_package if previous else None
    card = previous.model_card if previous else None
    exports: Exports | None = previous.exports if previous else None
    events = list(previous.events) if previous else []
    pending = previous.pending if previous else None
    if decision.status == "promoted" and champion is not None:
        new_package = package_of(plan, champion.record, weights)
        new_exports, export_note = export_or_note(new_package, objective)
        summary = new_exports.summary() if new_exports is not None else {"error": export_note}
        new_card = model_card(objective, champion, decision, plan.data, run_pathspec, summary)
        if objective.promotion.require_approval:
            reason = f"awaiting approval (factory approve / factory reject): {decision.reason}"
            decision = decision.model_copy(update={"status": "pending", "reason": reason})
            pending = Candidate(
                champion=champion, package=new_package, model_card=new_card, exports=new_exports
            )
            champion = plan.champion
        else:
            package, exports, card = new_package, new_exports, new_card
        kind: EventKind = "pending" if decision.status == "pending" else "promoted"
        events.append(
            RegistryEvent(
                kind=kind,
                trial_id=decision.challenger or "",
                run=run_pathspec,
                at=utc_stamp(),
                actor="promotion gate",
                reason=decision.reason,
            )
        )
    best_before = max(
        (r.val_reward for r in plan.history if r.eligible and r.val_reward is not None),
        default=None,
    )
    best_now = max(
        (r.val_reward for r in history if r.eligible and r.val_reward is not None), default=None
    )
    improved = best_now is not None and (best_before is None or best_now > best_before)
    stale = 0 if improved else (plan.previous.stale_cycles + 1 if plan.previous else 1)
    return CycleOutcome(
        cycle=plan.cycle,
        records=records,
        history=history,
        decision=decision,
        champion=champion,
        champion_package=package,
        stale_cycles=stale,
        best_val_reward=best_now,
        llm_usd_total=plan.llm_usd_total + llm_usd,
        pareto=pareto_front(objective, history),
        model_card=card,
        exports=exports,
        promotions=tuple(events),
        pending=pending,
    )


def export_or_note(package: ModelPackage, objective: Objective) -> tuple[Exports | None, str]:
    """The champion's exports, checked against it on held-out data; or why there are none."""
    from factory_lib.export import ExportMismatch, export_champion

    if objective.data.module is not None:
        return None, "exports are made for bundled data sets, whose raw features are known"
    sample = load_splits(objective.data, objective.task).raw_x["test"][:EXPORT_SAMPLE]
    try:
        return export_champion(package, sample), ""
    except ExportMismatch as exc:
        return None, str(exc)
    except Exception as exc:  # noqa: BLE001 - an export is a by-product: record why, keep the cycle
        return None, f"export failed: {type(exc).__name__}: {exc}"[:500]


def package_of(
    plan: CyclePlan, record: TrialRecord, weights: Callable[[str], bytes]
) -> ModelPackage:
    sha = record.result.weights_sha
    assert sha is not None, "an eligible trial always has weights"
    return ModelPackage(
        objective=plan.objective,
        params=record.proposal.params,
        input_shape=plan.data.input_shape,
        n_outputs=plan.data.n_outputs,
        preprocessing=plan.preprocessing,
        weights=weights(sha),
        weights_sha=sha,
        trial_id=record.trial_id,
    )
