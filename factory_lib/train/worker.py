"""The worker side of isolated trials: a child process that trains a group and reports back.

The supervisor (factory_lib.train.supervisor) starts a worker and reads its reports: which
trials start now, each with the record to keep should the worker never report on it again,
and each trial's output as it finishes. The worker leads a process group of its own, so that
killing the group also ends what the worker started (a data loader's workers), and it exits
as soon as the task that started it is gone, so a killed task leaves no trial running.
"""

from __future__ import annotations

import os
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Protocol

from factory_lib.records import TrialResult
from factory_lib.train.trial import TrialOutput

# How often a worker looks whether the task that started it is still there.
PARENT_CHECK_S = 0.5


class Reporter(Protocol):
    """Where a group's trials report as they start and finish."""

    def started(self, stand_ins: Sequence[TrialResult]) -> None:
        """Trials that start now and share one deadline window (one trial, or fused ones)."""

    def finished(self, output: TrialOutput) -> None:
        """A trial's output, whatever its status."""


# What a worker runs: a group's training, reporting as it goes.
Job = Callable[[Reporter], None]


@dataclass(frozen=True)
class Started:
    stand_ins: tuple[TrialResult, ...]


@dataclass(frozen=True)
class Finished:
    output: TrialOutput


@dataclass(frozen=True)
class Failed:
    """The job raised outside any trial (building the data, say): the task fails, as it
    would in-process."""

    error: str


@dataclass(frozen=True)
class Done:
    """Every trial of the job has finished."""


Report = Started | Finished | Failed | Done


class PipeReporter:
    """Reports sent to the supervisor, in order, over the worker's end of a pipe."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def started(self, stand_ins: Sequence[TrialResult]) -> None:
        self.conn.send(Started(tuple(stand_ins)))

    def finished(self, output: TrialOutput) -> None:
        self.conn.send(Finished(output))


def work(conn: Connection, job: Job) -> None:
    """A worker process: lead a process group, exit with the parent, run the job."""
    os.setpgrp()
    _exit_with_parent(os.getppid())
    try:
        job(PipeReporter(conn))
    except Exception:  # noqa: BLE001 - the boundary that hands the error to the supervisor
        conn.send(Failed(traceback.format_exc()))
    else:
        conn.send(Done())
    finally:
        conn.close()


def _exit_with_parent(parent: int) -> None:
    """End this process as soon as its parent is gone (then it belongs to init, or a reaper)."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_CHECK_S)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()
