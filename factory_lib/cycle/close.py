"""A cycle's end: score the trials, extend history, measure what the gate needs, decide.

    join     `score_cycle`: records scored and flagged, history extended (append-only), the
             challenger's package; `measure_jobs`: what the gate needs measured
    measure  `factory_lib.cycle.measure.run_job`: one job per task, with the train step's
             resources (re-training over seeds, exporting the challenger)
    decide   `close_cycle`: the promotion gate on those measurements, the card, the log

Nothing here imports torch or Lightning: the join and decide steps stay light.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from factory_lib.cycle.plan import CyclePlan
from factory_lib.explore.summary import CycleSummary, best_val_reward, summarize
from factory_lib.history import append, check_extends
from factory_lib.propose.base import seen_by_proposers
from factory_lib.propose.hypotheses import graded
from factory_lib.propose.notes import LabNotes, lab_notes
from factory_lib.records import TrialRecord, TrialResult
from factory_lib.registry import (
    ChampionBundle,
    EventKind,
    Exports,
    ModelPackage,
    PromotionDecision,
    RegistryEvent,
    decide,
    utc_stamp,
)
from factory_lib.registry.card import ExportSummary, model_card
from factory_lib.registry.gate import Champion, challenger_of
from factory_lib.reward import ParetoFront, flags, pareto_front, score

JobKind = Literal["seeds", "export", "none"]


@dataclass(frozen=True)
class ScoredCycle:
    """The join's result: this cycle's records (their predictions graded), the history they
    extend, the challenger's package (what would be promoted) and the lab notes."""

    records: tuple[TrialRecord, ...]
    history: tuple[TrialRecord, ...]
    candidate: ModelPackage | None
    notes: LabNotes | None = None


@dataclass(frozen=True)
class MeasureJob:
    """One task of the measure step: re-train a trial with other seeds (`again`: which of the
    `seeds - 1` re-trainings, one per task so they run side by side on one thread each; with
    `export`, export it too: one process and one import of Lightning for both), export the
    challenger, or nothing (a foreach needs at least one task)."""

    kind: JobKind
    trial_id: str = ""
    record: TrialRecord | None = None
    seeds: int = 0
    export: bool = False
    again: tuple[int, ...] = ()

    def describe(self) -> str:
        if self.kind == "seeds":
            also = " and export it" if self.export else ""
            which = ", ".join(f"#{j}" for j in self.again)
            return f"re-train {self.trial_id} with seed {which} of {self.seeds}{also}"
        if self.kind == "export":
            return f"export {self.trial_id} (TorchScript, ONNX)"
        return "nothing to measure"


@dataclass(frozen=True)
class Measurement:
    """What one measure task found: held-out values of its re-trainings, or the challenger's
    checked exports and what the card says of them."""

    job: MeasureJob
    values: tuple[float | None, ...] = ()  # one per re-training in job.again (None: it failed)
    exports: Exports | None = None
    export_summary: ExportSummary | None = None


@dataclass(frozen=True)
class CycleOutcome:
    """What the cycle concludes: the promotion decision, the champion and the promotion log."""

    cycle: int
    decision: PromotionDecision
    bundle: ChampionBundle | None
    pending: ChampionBundle | None
    stale_cycles: int
    llm_usd_total: float
    pareto: ParetoFront
    promotions: tuple[RegistryEvent, ...]
    summary: CycleSummary  # what the decide step prints, in the words of every other screen

    @property
    def champion(self) -> Champion | None:
        return self.bundle.champion if self.bundle else None


def score_cycle(
    plan: CyclePlan, results: Iterable[TrialResult], weights: Callable[[str], bytes]
) -> ScoredCycle:
    """Score and flag the results, grade their predictions, extend history (append-only),
    package the challenger, and write the lab notes of the search so far."""
    records = graded(plan.objective, plan.history, scored_records(plan, results))
    history = append(plan.history, records)
    check_extends(plan.history, history)
    challenger = challenger_of(records)
    candidate = package_of(plan, challenger, weights) if challenger is not None else None
    notes = lab_notes(plan.objective, seen_by_proposers(plan.objective, history))
    return ScoredCycle(records=records, history=history, candidate=candidate, notes=notes)


def scored_records(plan: CyclePlan, results: Iterable[TrialResult]) -> tuple[TrialRecord, ...]:
    """The results as records in trial order, each scored and flagged against the history and
    the records before it."""
    objective = plan.objective
    scored: list[TrialRecord] = []
    for r in sorted(results, key=lambda r: r.proposal.number):
        record = score(objective, r)
        scored.append(
            record.model_copy(update={"flags": flags(objective, record, [*plan.history, *scored])})
        )
    return tuple(scored)


def measure_jobs(
    plan: CyclePlan, scored: ScoredCycle, done: Sequence[Measurement] = ()
) -> list[MeasureJob]:
    """What the gate will need: the challenger and (where its values are too few or from another
    evaluator) the champion re-trained over seeds, and the challenger's export; less what the
    train tasks already measured (`done`: factory_lib.cycle.measure.measure_in_train). With
    one seed, the challenger is exported only if the gate will promote it."""
    k = plan.objective.promotion.seeds
    challenger = challenger_of(scored.records)
    if challenger is None:
        return [MeasureJob("none")]
    trial_id = challenger.trial_id
    if k < 2:  # the gate decides on the records alone: export only a challenger it promotes
        promoted = decide(plan.objective, plan.champion, scored.records)[0].status == "promoted"
        return [MeasureJob("export", trial_id) if promoted else MeasureJob("none")]
    jobs: list[MeasureJob] = []
    measured = next((m for m in done if m.job.trial_id == trial_id), None)
    if measured is None:
        jobs += [MeasureJob("seeds", trial_id, challenger, k, j == 1, (j,)) for j in range(1, k)]
    elif not measured.export_summary:
        jobs.append(MeasureJob("export", trial_id))
    champion = plan.champion
    if champion is not None and (
        len(champion.seed_values) < k
        or champion.evaluator != (challenger.result.evaluator, challenger.result.data_fingerprint)
    ):
        jobs += [
            MeasureJob("seeds", champion.trial_id, champion.record, k, again=(j,))
            for j in range(1, k)
        ]
    return jobs or [MeasureJob("none")]


def close_cycle(
    plan: CyclePlan,
    scored: ScoredCycle,
    measurements: Sequence[Measurement],
    llm_usd: float = 0.0,
    run_pathspec: str = "",
) -> CycleOutcome:
    """Run the promotion gate on the measurements; describe a new champion, extend the log."""
    objective = plan.objective
    metric = objective.promotion_metric
    again: dict[str, list[tuple[int, float | None]]] = {}  # trial → (re-training, value)
    for m in measurements:
        if m.job.kind == "seeds":
            again.setdefault(m.job.trial_id, []).extend(zip(m.job.again, m.values, strict=True))

    def measure(record: TrialRecord, k: int) -> tuple[float, ...]:
        # the trial's own value first, then its re-trainings in order; a re-training whose
        # task was lost (or failed) is left out
        own = record.result.evaluation.metrics("test")[metric] if record.result.evaluation else None
        redone = sorted(again.get(record.trial_id, []), key=lambda pair: pair[0])
        values = (own, *(v for _, v in redone))
        return tuple(v for v in values if v is not None)

    decision, champion = decide(objective, plan.champion, scored.records, measure)
    previous = plan.previous
    bundle = previous.bundle if previous else None
    events = list(previous.events) if previous else []
    pending = previous.pending if previous else None
    if decision.status == "promoted" and champion is not None:
        package = scored.candidate
        assert package is not None and package.trial_id == champion.trial_id
        exports, summary = exports_of(champion.trial_id, measurements)
        card = model_card(
            objective, champion, decision, plan.data, run_pathspec, summary, plan.preprocessing
        )
        new = ChampionBundle(champion=champion, package=package, model_card=card, exports=exports)
        if objective.promotion.require_approval:
            reason = f"awaiting approval (factory approve / factory reject): {decision.reason}"
            decision = decision.model_copy(update={"status": "pending", "reason": reason})
            pending = new
        else:
            bundle = new
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
    elif bundle is not None and champion is not None:
        bundle = bundle.model_copy(update={"champion": champion})  # its re-measured seed values
    best_before, best_now = best_val_reward(plan.history), best_val_reward(scored.history)
    improved = best_now is not None and (best_before is None or best_now > best_before)
    stale = 0 if improved else (plan.previous.stale_cycles + 1 if plan.previous else 1)
    return CycleOutcome(
        cycle=plan.cycle,
        decision=decision,
        bundle=bundle,
        pending=pending,
        stale_cycles=stale,
        llm_usd_total=plan.llm_usd_total + llm_usd,
        pareto=pareto_front(objective, scored.history),
        promotions=tuple(events),
        summary=summarize(
            objective.name,
            plan.cycle,
            scored.records,
            scored.history,
            decision,
            bundle.champion if bundle else None,
            stale,
            run_pathspec or None,
        ),
    )


def exports_of(
    trial_id: str, measurements: Sequence[Measurement]
) -> tuple[Exports | None, ExportSummary]:
    """The export job's exports of the promoted trial, and what the card says of them."""
    for m in measurements:
        if m.job.trial_id == trial_id and m.export_summary:
            return m.exports, m.export_summary
    return None, ExportSummary(error="the export task did not finish; no exports were made")


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
