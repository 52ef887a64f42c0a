"""The measure step's work: one `MeasureJob` per task, with the train step's resources.

Training and exporting import torch and Lightning; a task with nothing to do imports neither,
so those imports sit in the branch that needs them.

The gate re-measures the cycle's challenger over seeds whatever it scores (the seeds are its
evidence, promoted or not), so that re-measurement can start before the join knows which trial
it is: each train task re-trains its own group's best and exports it (`measure_in_train`), the
re-trainings side by side, when that is quicker than measure tasks, and the gate lists only
what is still missing (a champion measured under another evaluator, say).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import signal
from collections.abc import Callable, Sequence
from functools import partial
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast

from factory_lib.cycle.close import MeasureJob, Measurement, package_of, scored_records
from factory_lib.cycle.plan import CyclePlan
from factory_lib.data import DataSummary, load_splits
from factory_lib.objective import Objective
from factory_lib.records import TrialRecord
from factory_lib.registry import Exports, ModelPackage
from factory_lib.registry.card import ExportSummary
from factory_lib.registry.gate import challenger_of, challenger_rank
from factory_lib.runs.env import machine_scratch

if TYPE_CHECKING:
    from factory_lib.train.trial import TrialOutput

# Seeds of a trial's re-measurements: far from the search's own trial seeds.
SEED_STRIDE = 100_003
EXPORT_SAMPLE = 256
EXPORT_ARTIFACT = "exports (end step): .torchscript and .onnx bytes"
# A guess (re-measuring while other groups still train) runs this far below their priority,
# and looks for a better best posted this often.
SPECULATIVE_NICENESS = 10
BOARD_POLL_S = 0.1
STOP_GRACE_S = 5.0  # for a stopped process to end its trial worker, before it is killed


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


class GroupBests:
    """Where the train tasks of one run post their group's best once their trials are done,
    so that a task whose best another group has already beaten does not re-measure it.

    Only advice, kept in a file per task under this machine's temp directory: under the local
    runtime the tasks share it and are spared the work; where they do not (one machine per
    task), each task finds no other post and re-measures as if alone. Either way the gate
    lists whatever the challenger still lacks.
    """

    def __init__(self, path: Path, own: int) -> None:
        self.path, self.own = path, own

    @classmethod
    def of(cls, run_pathspec: str, own: int = 0) -> GroupBests:
        # run ids are unique within a datastore (the local one's are microsecond timestamps)
        return cls(machine_scratch() / run_pathspec.replace("/", "-"), own)

    def post(self, best: TrialRecord) -> None:
        entry = {"trial_id": best.trial_id, "key": challenger_rank(best)}
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            part = self.path / f".{self.own}.{os.getpid()}"
            part.write_text(json.dumps(entry))
            part.replace(self.path / f"{self.own}.json")
        except OSError:
            pass  # advice only: without it this task re-measures as if alone

    def beaten(self, best: TrialRecord) -> str | None:
        """Another group's posted best that `best` cannot beat as the gate ranks them."""
        try:
            posts = [p for p in self.path.glob("*.json") if p.stem != str(self.own)]
            entries = [json.loads(p.read_text()) for p in posts]
        except (OSError, ValueError):
            return None
        better = [e for e in entries if tuple(e["key"]) > challenger_rank(best)]
        return max(better, key=lambda e: tuple(e["key"]))["trial_id"] if better else None

    def posted(self) -> int:
        """How many other groups have posted their best."""
        try:
            return sum(p.stem != str(self.own) for p in self.path.glob("*.json"))
        except OSError:
            return 0

    def wait_unless_beaten(self, best: TrialRecord, running: Sequence[Beside[Any]]) -> str | None:
        """Wait for the `running` work to finish; the trial that beat `best` if one is posted
        first (the work is then in vain), else None."""
        pending = [r.receive for r in running if r.receive is not None]
        while pending:
            for ready in wait(pending, timeout=BOARD_POLL_S):
                pending.remove(cast(Connection, ready))
            if beaten_by := self.beaten(best):
                return beaten_by
        return None

    def clear(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def measure_in_train(
    plan: CyclePlan,
    outputs: Sequence[TrialOutput],
    started: float,
    concurrent_tasks: int = 1,
    bests: GroupBests | None = None,
) -> Measurement | None:
    """In a train task, after its trials: re-train the group's best trial over the gate's seeds
    and export it, so the measure step has nothing left to do for it if it is the cycle's
    challenger (the best of the groups' bests). Done only when those re-trainings, one after
    another, would take no longer than a measure task (one each, side by side) takes to start
    and train one (`started`: when this task's process began, so its start-up is known:
    Metaflow's, loading the plan, imports, the data), and when the other groups' re-trainings,
    in vain but for one group, cost no more than the measure tasks' start-ups; None otherwise,
    and the gate lists the jobs as before. They run side by side here too, on the cores the
    other train tasks leave. Not done either when another group's best, posted on `bests` as
    its task finished, has already beaten this one; while other groups still train, the
    re-trainings run below their priority and stop (None) once one of them posts a better
    best."""
    objective = plan.objective
    k = objective.promotion.seeds
    if k < 2 or not outputs:
        return None
    best = challenger_of(scored_records(plan, (o.result for o in outputs)))
    if best is None or best.result.evaluation is None:
        return None
    if bests is not None:
        bests.post(best)
        if beaten_by := bests.beaten(best):
            print(
                f"{best.trial_id}, this group's best, is not re-measured: {beaten_by}, another "
                "group's best, ranks above it and is the challenger unless the join flags it"
            )
            return None
    startup = min(o.result.started_at for o in outputs) - started
    once = best.result.evaluation.train_seconds
    here, there = (k - 1) * once, startup + once
    # Every group re-trains its best and one of them is the challenger: the others' must not
    # cost more than the measure tasks' start-ups would, (G - 1)·t against s per seed.
    in_vain = (concurrent_tasks - 1) * once
    if here > there or in_vain > startup:
        why = (
            f"they would take longer here than a measure task (~{there:.1f} s)"
            if here > there
            else f"the {concurrent_tasks - 1} other group(s)' would cost more than a measure "
            f"task's start-up (~{in_vain:.1f} s against ~{startup:.1f} s per seed)"
        )
        print(
            f"{best.trial_id}: its {k - 1} re-training(s) (~{here:.1f} s) are left to "
            f"measure tasks: {why}"
        )
        return None
    print(
        f"{best.trial_id}, this group's best: re-trained with {k - 1} more seed(s) and exported "
        f"here, in case it is the cycle's challenger (~{here:.1f} s at most; a measure task "
        f"would take ~{there:.1f} s)"
    )
    weights = {o.result.weights_sha: o.weights for o in outputs if o.weights is not None}
    again = tuple(range(1, k))
    job = MeasureJob("seeds", best.trial_id, best, k, export=True, again=again)
    package = package_of(plan, best, weights.__getitem__)
    # Re-measuring while other groups still train is a guess: it yields the cores to their
    # trials and stops as soon as one of them posts a better best.
    speculative = bests is not None and bests.posted() < concurrent_tasks - 1
    niceness = SPECULATIVE_NICENESS if speculative else 0
    exported = beside(lambda: export_or_note(package, objective), _export_lost, niceness)
    retrained = [
        beside(
            partial(seed_values, objective, best, (j,), concurrent_tasks, plan.data),
            lambda exit_code: (None,),
            niceness,
        )
        for j in again
    ]
    running: list[Beside[Any]] = [exported, *retrained]
    if speculative and bests and (beaten_by := bests.wait_unless_beaten(best, running)):
        for work in running:
            work.stop()
        print(
            f"{best.trial_id}: its re-measurement stopped: {beaten_by}, another group's best, "
            "ranks above it"
        )
        return None
    values = tuple(v for done in retrained for v in done())
    exports, summary = exported()
    return Measurement(job, values=values, exports=exports, export_summary=summary)


T = TypeVar("T")
Exported = tuple[Exports | None, ExportSummary]


def _export_lost(exit_code: int | None) -> Exported:
    return None, ExportSummary(error=f"the export process died (exit {exit_code})")


class Beside(Generic[T]):
    """Work in a forked process beside what this process does next; call it for the value."""

    def __init__(
        self,
        receive: Connection | None,
        process: BaseProcess | None,
        lost: Callable[[int | None], T],
        done: T | None = None,
    ) -> None:
        self.receive, self.process, self.lost, self.done = receive, process, lost, done

    def __call__(self) -> T:
        if self.receive is None or self.process is None:
            return cast(T, self.done)
        try:
            result: T = self.receive.recv()
        except EOFError:
            self.process.join()
            return self.lost(self.process.exitcode)
        self.process.join()
        return result

    def stop(self) -> None:
        """End the process and what it started (a trial worker), if it is still working: its
        value is no longer wanted."""
        if self.process is not None and self.process.is_alive():
            self.process.terminate()  # _end_with_children
            self.process.join(STOP_GRACE_S)
            if self.process.is_alive():
                self.process.kill()
                self.process.join()


def beside(work: Callable[[], T], lost: Callable[[int | None], T], niceness: int = 0) -> Beside[T]:
    """`work` in a forked process, so that it runs beside what this process does next (on a
    core another task has left, or between its epochs), at `niceness` below this process's
    priority; in this process, at once, where a fork is unsafe
    (factory_lib.train.supervisor.start_method). Call the result to wait for its value;
    `lost(exit code)` stands for it if the process died without a word (the out-of-memory
    killer, a native crash)."""
    import torch

    from factory_lib.train.supervisor import start_method, start_process

    if start_method(torch.get_num_threads()) != "fork":
        return Beside(None, None, lost, work())
    context = multiprocessing.get_context("fork")
    receive, send = context.Pipe(duplex=False)
    process = context.Process(target=_send_result, args=(send, work, niceness), name="beside")
    start_process(process)
    send.close()
    return Beside(receive, process, lost)


def _send_result(send: Connection, work: Callable[[], Any], niceness: int = 0) -> None:
    signal.signal(signal.SIGTERM, _end_with_children)
    if niceness and hasattr(os, "nice"):
        os.nice(niceness)
    send.send(work())
    send.close()


def _end_with_children(signum: int, frame: Any) -> None:
    """`Beside.stop`: a re-training's own trial worker must not outlive it."""
    for child in multiprocessing.active_children():
        child.kill()
        child.join(STOP_GRACE_S)
    os._exit(128 + signum)


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
