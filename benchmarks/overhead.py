"""Orchestration overhead of one cycle: wall time against the trials' own training time.

    python benchmarks/overhead.py                          # digits, 8 trials, the budget's epochs
    python benchmarks/overhead.py --trials 8 --epochs 10 --max-workers 2

Runs one fresh cycle through metaflow.Runner in a throw-away datastore and reports:
- wall: the cycle from the Runner call to its end;
- Σ train: the trials' training seconds (fit + evaluation, from their records);
- overhead ratio: wall / Σ train (below 1 when trials overlap);
- wall / (Σ train / workers): how close the cycle is to perfect parallelism;
- first trial start: seconds from the Runner call to the first trial's first step;
- per-task start-up: median seconds from a train task's start to its trial's start;
- step seconds: from each step's first task start to its last task's end.
"""

from __future__ import annotations

# torch before Runner: Metaflow's vendored typing_extensions can break it later (#2462)
import torch  # isort: skip

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objective", default=str(ROOT / "objectives" / "digits.yaml"))
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=0, help="0: the objective's budget")
    parser.add_argument("--max-workers", type=int, default=0, help="0: the flow's default (cores)")
    args = parser.parse_args()

    os.environ["METAFLOW_DATASTORE_SYSROOT_LOCAL"] = tempfile.mkdtemp(prefix="factory-bench-")
    from factory_lib.runs.env import ensure_metaflow_user

    ensure_metaflow_user()
    from metaflow.runner.metaflow_runner import Runner

    params: dict[str, object] = {"trials": args.trials, "epochs": args.epochs, "fresh": True}
    if args.max_workers:
        params["max_workers"] = args.max_workers
    started = time.time()
    with Runner(
        str(ROOT / "flows" / "cycle.py"), show_output=False, config=[("objective", args.objective)]
    ).run(**params) as running:
        wall = time.time() - started
        if running.status != "successful":
            sys.exit(running.stderr[-3000:])
        run = running.run
    results = [r.result for r in run["end"].task.data.records]
    train_seconds = sum(r.evaluation.train_seconds for r in results if r.evaluation)
    task_starts = {t.pathspec: t.created_at.timestamp() for t in run["train"]}
    startup = [r.started_at - task_starts[r.task_pathspec] for r in results if r.task_pathspec]
    # The flow's local default is one worker per core (factory_lib.history.local_worker_default).
    workers = min(args.max_workers or os.cpu_count() or 1, len(results))
    report = {
        "objective": Path(args.objective).stem,
        "trials": len(results),
        "ok": sum(r.status == "ok" for r in results),
        "max_workers": workers,
        "wall_s": round(wall, 1),
        "sum_train_s": round(train_seconds, 1),
        "overhead_ratio": round(wall / train_seconds, 2) if train_seconds else None,
        "wall_over_ideal": round(wall / (train_seconds / workers), 2) if train_seconds else None,
        "first_trial_start_s": round(min(r.started_at for r in results) - started, 1),
        "median_task_startup_s": round(statistics.median(startup), 1) if startup else None,
        "step_seconds": {
            step.id: round(
                max(t.finished_at for t in step).timestamp()
                - min(t.created_at for t in step).timestamp(),
                1,
            )
            for step in run
        },
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
        + ("CUDA " + torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
