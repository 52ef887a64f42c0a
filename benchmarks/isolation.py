"""What isolating a group's trials costs: a worker process against the task's own process.

    python benchmarks/isolation.py                     # smoke, groups of 1 and 4 trials, 5 repeats
    python benchmarks/isolation.py --objective objectives/digits.yaml --trials 1 --repeats 3

Each arm trains the same group of trials (fixed seeds, the objective's epochs) through
`train_group`, with one torch thread, so that only where the trials run differs:

- in-process: `budget.isolate: false`, the trials in this process;
- fork: `budget.isolate: true` with a forked worker, what a task with one torch thread gets
  (`group_size: auto`, one task per core);
- spawn: the same with a spawned worker, what a task with more threads, or a GPU, gets.

Reported per arm: the median wall of a group over the repeats (arms interleaved, after one
warm-up of each), and the extra over in-process, which is what isolation costs a group: the
worker's start, the data built again in the worker, the outputs sent back over the pipe. A
worker killed at a deadline costs the same again for the fresh one. It prints a JSON report,
then a markdown table for docs/benchmarks.md.
"""

from __future__ import annotations

# torch first, as everywhere that may later import Metaflow (#2462)
import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from unittest import mock

from overhead import machine  # benchmarks/overhead.py: this script's folder is on sys.path

from factory_lib.objective import Objective, load_objective
from factory_lib.propose.base import make_proposal
from factory_lib.train import group

ROOT = Path(__file__).resolve().parents[1]
ARMS = ("in-process", "fork", "spawn")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objective", default=str(ROOT / "objectives" / "smoke.yaml"))
    parser.add_argument("--trials", type=int, nargs="+", default=[1, 4], help="group sizes")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    objective = load_objective(Path(args.objective))
    walls: dict[str, dict[str, list[float]]] = {}
    for size in args.trials:
        runs = {arm: [] for arm in ARMS}
        for repeat in range(args.repeats + 1):  # the first round warms up
            for arm in ARMS:
                seconds = group_seconds(objective, size, arm)
                if repeat:
                    runs[arm].append(seconds)
        walls[str(size)] = runs
    report = {
        "objective": objective.name,
        "repeats": args.repeats,
        "median_group_s": {
            size: {arm: round(statistics.median(s), 3) for arm, s in runs.items()}
            for size, runs in walls.items()
        },
        "machine": machine(),
    }
    print(json.dumps(report, indent=2))
    print(table(report))


def group_seconds(objective: Objective, size: int, arm: str) -> float:
    """Seconds for one group of `size` trials through `train_group`, in this arm."""
    budget = objective.budget.model_copy(update={"isolate": arm != "in-process", "fuse": False})
    objective = objective.model_copy(update={"budget": budget})
    proposals = [
        make_proposal(objective, 1, i, i, {"lr": 0.01, "width": 16, "depth": 1}, "bench", "")
        for i in range(size)
    ]
    method = "spawn" if arm == "spawn" else "fork"
    with quiet(), mock.patch.object(group, "start_method", lambda threads: method):
        started = time.perf_counter()
        outputs = group.train_group(objective, proposals, concurrent_tasks=os.cpu_count() or 1)
        seconds = time.perf_counter() - started
    assert all(o.result.status == "ok" for o in outputs), [o.result.cause for o in outputs]
    return seconds


@contextmanager
def quiet() -> Iterator[None]:
    """This process's and its workers' output (a line per epoch, Lightning's warnings) to
    /dev/null; a failure still shows in the exception raised here."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    with open(os.devnull, "w") as null:
        for fd in saved:
            os.dup2(null.fileno(), fd)
    try:
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, copy in saved.items():
            os.dup2(copy, fd)
            os.close(copy)


def table(report: dict[str, Any]) -> str:
    rows = [
        "| trials per group | in-process | fork | spawn | fork: extra per group "
        "| spawn: extra per group |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for size, arms in report["median_group_s"].items():
        base = arms["in-process"]
        rows.append(
            f"| {size} | {base:.2f} s | {arms['fork']:.2f} s | {arms['spawn']:.2f} s "
            f"| {arms['fork'] - base:+.2f} s | {arms['spawn'] - base:+.2f} s |"
        )
    return "\n".join(rows)


if __name__ == "__main__":
    main()
