"""Isolated trials: a hard deadline for every trial, a hang in native code included.

The deadline in the trial itself (factory_lib.train.trial) is checked between batches, so it
cannot end a trial stuck inside one call: a forward pass or a data call hanging in native code
never returns to Python. So the task's process only supervises. A worker process
(factory_lib.train.worker) trains the group and reports each trial as it starts and finishes.
A trial still running `trial_timeout_s` plus a grace after it started is recorded as
`timeout`, the worker is killed with everything it started, and a fresh worker trains the
trials that are left, each with its full budget; the trials that finished are kept. A worker
that dies on its own (a crash in native code, the out-of-memory killer) leaves the trials it
was running `failed`, saying how it died, and the others go on in a fresh worker too. Fused
trials start together and share one deadline window, as they do in-process.

The grace lets the trial's own check end it first, with its curve and a precise cause; the
kill is for what that check cannot reach.

How a worker starts: forked, it inherits this process's imports and starts in milliseconds;
spawned, it imports torch and Lightning afresh, which takes seconds (docs/benchmarks.md). A
fork is safe only for a worker that uses neither CUDA (a CUDA context does not survive a fork)
nor more than one OpenMP thread (neither does GNU OpenMP's thread pool: a forked child of a
process that has run a parallel op hangs at its own first one). So a CPU worker with one torch
thread, which is what `group_size: auto` gives, one task per core, is forked; others spawn.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
import warnings
from collections.abc import Callable
from multiprocessing.connection import wait
from multiprocessing.context import BaseContext
from multiprocessing.process import BaseProcess
from typing import Literal

import torch

from factory_lib.records import TrialResult
from factory_lib.train.trial import TrialOutput
from factory_lib.train.worker import Done, Failed, Finished, Job, Report, Started, work

# The grace after `trial_timeout_s` before a worker is killed: 10% of the timeout, 2 s to 60 s.
GRACE_FRACTION = 0.1
MIN_GRACE_S = 2.0
MAX_GRACE_S = 60.0

StartMethod = Literal["fork", "spawn"]


class WorkerError(RuntimeError):
    """The worker failed outside any trial (building the data), or died with none running."""


def grace_s(timeout_s: float) -> float:
    return min(MAX_GRACE_S, max(MIN_GRACE_S, GRACE_FRACTION * timeout_s))


def start_method(threads: int) -> StartMethod:
    """Fork where that is safe (see the module's docstring), spawn otherwise.

    `torch.cuda.device_count` asks NVML where it can, so it leaves CUDA uninitialised here.
    """
    return "fork" if threads == 1 and torch.cuda.device_count() == 0 else "spawn"


def start_process(process: BaseProcess) -> None:
    """Start a process of a context `start_method` chose.

    Python 3.12+ warns at any fork of a process with threads, and torch and Lightning start
    idle ones at import; what a fork must not inherit (a CUDA context, a busy OpenMP pool) is
    what start_method rules out, so the warning is not shown.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*multi-threaded.*fork", DeprecationWarning)
        process.start()


def train_isolated(
    timeout_s: float,
    method: StartMethod,
    job_for: Callable[[dict[str, TrialOutput]], Job],
) -> dict[str, TrialOutput]:
    """Run a group's training in worker processes under a deadline per trial.

    `job_for(done)` is the training of what `done` (outputs by trial id) does not hold yet;
    it runs in a fresh worker after each kill. Returns every trial's output, in the order
    they finished or were recorded.
    """
    context = multiprocessing.get_context(method)
    done: dict[str, TrialOutput] = {}
    while True:
        worker = _Worker(context, job_for(dict(done)))
        after = f", {len(done)} trials recorded before it" if done else ""
        print(f"training in worker process {worker.process.pid} ({method}ed{after})", flush=True)
        if worker.supervise(timeout_s, done):
            return done


class _Worker:
    """One worker process, the pipe it reports on, and the trials it is running."""

    def __init__(self, context: BaseContext, job: Job) -> None:
        self.reports, sender = context.Pipe(duplex=False)
        # Not a daemon: a daemon may start no processes, and a data loader's workers are some.
        self.process = context.Process(  # type: ignore[attr-defined]
            target=work, args=(sender, job), name="trial-worker"
        )
        start_process(self.process)
        sender.close()
        self.running: tuple[TrialResult, ...] = ()
        self.since = 0.0
        self.stopped = False

    def supervise(self, timeout_s: float, done: dict[str, TrialOutput]) -> bool:
        """Record the worker's trials in `done` until it finishes (True) or a trial must be
        recorded for it (False): killed at its deadline, or the worker died."""
        limit = timeout_s + grace_s(timeout_s)
        try:
            while True:
                left = self.since + limit - time.monotonic() if self.running else None
                report = self._next(max(0.0, left) if left is not None else None)
                if isinstance(report, Started):
                    self.running, self.since = report.stand_ins, time.monotonic()
                elif isinstance(report, Finished):
                    trial_id = report.output.result.proposal.trial_id
                    done[trial_id] = report.output
                    self.running = tuple(r for r in self.running if r.proposal.trial_id != trial_id)
                elif isinstance(report, Done):
                    return True
                elif isinstance(report, Failed):
                    raise WorkerError(f"the trial worker failed:\n{report.error}")
                elif not self._alive():
                    self._record(done, "failed", f"its worker process died ({self._stop()})")
                    return False
                elif self.running and time.monotonic() - self.since > limit:
                    self._record(
                        done,
                        "timeout",
                        f"killed {time.monotonic() - self.since:.1f} s after it started, past "
                        f"the budget's trial_timeout_s ({timeout_s:g} s) and a "
                        f"{grace_s(timeout_s):g} s grace",
                    )
                    return False
        finally:
            self._stop()

    def _next(self, timeout: float | None) -> Report | None:
        """The next report, or None if none came within `timeout` or the worker is gone."""
        wait([self.reports, self.process.sentinel], timeout)
        if not self.reports.poll():
            return None
        try:
            report: Report = self.reports.recv()
        except EOFError:  # the worker is gone; every report it sent has been read
            return None
        return report

    def _alive(self) -> bool:
        # The sentinel, not Process.is_alive: that would reap the worker, and its pid must
        # stay ours until its process group has been killed.
        return not wait([self.process.sentinel], 0)

    def _record(self, done: dict[str, TrialOutput], status: str, cause: str) -> None:
        if not self.running:
            raise WorkerError(f"the trial worker stopped between trials: {cause}")
        for stand_in in self.running:
            print(f"[{stand_in.proposal.trial_id}] stopped: {cause}", flush=True)
            result = stand_in.model_copy(update={"status": status, "cause": cause})
            done[stand_in.proposal.trial_id] = TrialOutput(result, None)

    def _stop(self) -> str:
        """Kill the worker's process group (the worker and what it started), reap the worker,
        and say how it ended."""
        if not self.stopped:
            self.stopped = True
            assert self.process.pid is not None
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:  # it died before leading a group of its own
                self.process.kill()
            self.process.join()
            self.reports.close()
        code = self.process.exitcode
        if code is not None and code < 0:
            return f"killed by signal {-code}"
        return f"exit code {code}"
