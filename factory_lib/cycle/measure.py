"""The measure step's work: one `MeasureJob` per task, with the train step's resources.

Training and exporting import torch and Lightning; a task with nothing to do imports neither,
so those imports sit in the branch that needs them.

The first champion is promoted whatever its seeds say (there is nothing to beat), so its
re-measurement can start before the join knows which trial it is: each train task re-trains
its own group's best and exports it (`measure_in_train`) when that costs less than a measure
task's start-up, and the gate lists only what is still missing.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

from factory_lib.cycle.close import MeasureJob, Measurement, package_of, scored_records
from factory_lib.cycle.plan import CyclePlan
from factory_lib.data import DataSummary, load_splits
from factory_lib.objective import Objective
from factory_lib.records import TrialRecord
from factory_lib.registry import Exports, ModelPackage
from factory_lib.registry.card import ExportSummary
from factory_lib.registry.gate import challenger_of

if TYPE_CHECKING:
    from factory_lib.train.trial import TrialOutput

# Seeds of a trial's re-measurements: far from the search's own trial seeds.
SEED_STRIDE = 100_003
EXPORT_SAMPLE = 256
EXPORT_ARTIFACT = "exports (end step): .torchscript and .onnx bytes"


def run_job(
    plan: CyclePlan, job: MeasureJob, candidate: ModelPackage | None, concurrent_tasks: int = 1
) -> Measurement:
    """Do one measure job; a failed re-training or export is part of the measurement."""
    values: tuple[float | None, ...] = ()
    if job.kind == "seeds":
        assert job.record is not None
        values = seed_values(plan.objective, job.record, job.again, concurrent_tasks, plan.data)
    if job.kind != "export" and not job.export:
        return Measurement(job, values=values)
    assert candidate is not None and candidate.trial_id == job.trial_id
    exports, summary = export_or_note(candidate, plan.objective)
    return Measurement(job, values=values, exports=exports, export_summary=summary)


def measure_in_train(
    plan: CyclePlan,
    outputs: Sequence[TrialOutput],
    entered: float,
    concurrent_tasks: int = 1,
) -> Measurement | None:
    """In a train task, after its trials: while the search has no champion, re-train the
    group's best trial over the gate's seeds and export it, so the measure step has nothing
    left to do if it becomes the first champion, which it does whenever it is the cycle's
    challenger. Done only when those re-trainings take less time than this task took to start
    (`entered`: when its step began; a measure task would pay that start-up again); None
    otherwise, and the gate lists the jobs as before."""
    objective = plan.objective
    k = objective.promotion.seeds
    if plan.champion is not None or k < 2 or not outputs:
        return None
    best = challenger_of(scored_records(plan, (o.result for o in outputs)))
    if best is None or best.result.evaluation is None:
        return None
    startup = min(o.result.started_at for o in outputs) - entered
    cost = (k - 1) * best.result.evaluation.train_seconds
    if cost > startup:
        print(
            f"{best.trial_id}: its {k - 1} re-training(s) (~{cost:.1f} s) are left to a measure "
            f"task: they would take longer here than this task took to start ({startup:.1f} s)"
        )
        return None
    print(
        f"{best.trial_id}, this group's best: re-trained with {k - 1} more seed(s) and exported "
        f"here, in case it becomes the first champion (~{cost:.1f} s; a measure task takes "
        f"~{startup:.1f} s to start)"
    )
    weights = {o.result.weights_sha: o.weights for o in outputs if o.weights is not None}
    again = tuple(range(1, k))
    job = MeasureJob("seeds", best.trial_id, best, k, export=True, again=again)
    exported = export_beside(package_of(plan, best, weights.__getitem__), objective)
    values = seed_values(objective, best, again, concurrent_tasks, plan.data)
    exports, summary = exported()
    return Measurement(job, values=values, exports=exports, export_summary=summary)


Exported = tuple[Exports | None, ExportSummary]


def export_beside(package: ModelPackage, objective: Objective) -> Callable[[], Exported]:
    """`export_or_note` in a forked process, so that it runs beside the re-trainings started
    next (on a core another task has left, or between their epochs); in this process where
    a fork is unsafe (factory_lib.train.supervisor.start_method). Call the result to wait."""
    import torch

    from factory_lib.train.supervisor import start_method

    if start_method(torch.get_num_threads()) != "fork":
        done = export_or_note(package, objective)
        return lambda: done
    context = multiprocessing.get_context("fork")
    receive, send = context.Pipe(duplex=False)
    process = context.Process(target=_export_to, args=(send, package, objective), name="export")
    process.start()
    send.close()

    def wait() -> Exported:
        try:
            result: Exported = receive.recv()
        except EOFError:  # it died without a word: the out-of-memory killer, a native crash
            died = f"the export process died (exit {process.exitcode})"
            result = (None, ExportSummary(error=died))
        process.join()
        return result

    return wait


def _export_to(send: Connection, package: ModelPackage, objective: Objective) -> None:
    send.send(export_or_note(package, objective))
    send.close()


def seed_values(
    objective: Objective,
    record: TrialRecord,
    again: tuple[int, ...],
    concurrent_tasks: int = 1,
    expected_data: DataSummary | None = None,
) -> tuple[float | None, ...]:
    """A trial's held-out metric re-trained with other seeds: one value per re-training in
    `again` (its index j picks the seed), None where that re-training failed."""
    from factory_lib.train.group import train_group  # torch and Lightning: only where a job trains

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
        for j in again
    ]
    metric = objective.promotion_metric
    return tuple(
        o.result.evaluation.metrics("test")[metric]
        if o.result.status == "ok" and o.result.evaluation is not None
        else None
        for o in train_group(
            objective, copies, concurrent_tasks=concurrent_tasks, expected_data=expected_data
        )
    )


def export_sample(objective: Objective) -> Any:
    """Held-out raw inputs to check the exports on: the first test rows (or batch)."""
    if objective.data.in_memory:
        return load_splits(objective.data, objective.task).raw_x["test"][:EXPORT_SAMPLE]
    from factory_lib.data.module import first_batch  # a user module: Lightning

    return first_batch(objective, "test")[0][:EXPORT_SAMPLE].numpy()


def export_or_note(
    package: ModelPackage, objective: Objective
) -> tuple[Exports | None, ExportSummary]:
    """The champion's exports, checked against it on held-out data; or why there are none."""
    from factory_lib.registry.export import ExportMismatch, export_champion  # torch

    sample = export_sample(objective)
    try:
        exports = export_champion(package, sample)
    except ExportMismatch as exc:
        return None, ExportSummary(error=str(exc))
    except Exception as exc:  # noqa: BLE001 - an export is a by-product: record why, keep the cycle
        return None, ExportSummary(error=f"export failed: {type(exc).__name__}: {exc}"[:500])
    return exports, ExportSummary(
        formats=("torchscript", "onnx"),
        max_abs_diff=exports.max_abs_diff,
        tolerance=exports.tolerance,
        artifact=EXPORT_ARTIFACT,
    )
