"""Does a cycle cost more as its search grows? Each cycle of one search, outside its training.

    python benchmarks/history.py                  # 20 chained cycles of smoke
    python benchmarks/history.py --cycles 5 --objective objectives/wine.yaml

Runs `--cycles` chained cycles of one objective in a throw-away datastore, each as a user runs
one (`python flows/cycle.py --config objective ... run`), and reads every run back with the
Client API. For each cycle: its wall, the training of its longest train task (the seconds its
trials spent in fit and evaluation, from their records), the rest ("outside training": process
start-ups, reading the history, rebuilding the Optuna study, proposing, scoring, the gate, the
card), and each step's seconds. What grows with the history is what a later cycle pays more
outside training: the report compares cycles 2–4 with the last three (median of each, so that
one slow cycle on a shared machine does not decide), cycle 1 being the one without history.
It prints a JSON report, then a markdown table for docs/benchmarks.md.
"""

from __future__ import annotations

# torch before Metaflow: its vendored typing_extensions can break a later import (#2462)
import torch  # noqa: F401  isort: skip

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from overhead import (
    FLOW,
    FLOW_NAME,
    LOG_TAIL_CHARS,
    ROOT,
    machine,
    step_seconds,
    task_training,
)

# The cycles each end of the search is summarised by.
ENDS = 3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objective", default=str(ROOT / "objectives" / "smoke.yaml"))
    parser.add_argument("--cycles", type=int, default=20)
    parser.add_argument("--trials", type=int, default=0, help="0: the objective's budget")
    parser.add_argument("--epochs", type=int, default=0, help="0: the objective's budget")
    args = parser.parse_args()
    report = run_search(args)
    print(json.dumps(report, indent=2))
    print(markdown(report))


def run_search(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="factory-history-") as sysroot:
        os.environ["METAFLOW_DATASTORE_SYSROOT_LOCAL"] = sysroot  # before Metaflow is imported
        os.environ.setdefault("USERNAME", "factory")
        from metaflow import Run, namespace

        namespace(None)
        cycles = []
        for i in range(1, args.cycles + 1):
            run_id_file = Path(sysroot) / f"run-id-{i}"
            wall = _cycle(args, sysroot, run_id_file)
            run = Run(f"{FLOW_NAME}/{run_id_file.read_text().strip()}")
            cycles.append(_measure(run, wall))
            print(f"cycle {i}: {json.dumps(cycles[-1])}", file=sys.stderr, flush=True)
    outside = [c["outside_training_s"] for c in cycles]
    early = statistics.median(outside[1 : 1 + ENDS]) if len(outside) > 1 else None
    late = statistics.median(outside[-ENDS:])
    return {
        "objective": Path(args.objective).stem,
        "cycles": cycles,
        "outside_training_early_s": early,
        "outside_training_late_s": late,
        "late_over_early": round(late / early, 3) if early else None,
        "machine": machine(),
        "command": "python benchmarks/history.py " + " ".join(sys.argv[1:]),
    }


def _cycle(args: argparse.Namespace, sysroot: str, run_id_file: Path) -> float:
    """One cycle as a user runs it; its wall seconds."""
    command = [sys.executable, str(FLOW), "--config", "objective", args.objective, "run"]
    command += ["--run-id-file", str(run_id_file)]
    for flag in ("trials", "epochs"):
        if getattr(args, flag):
            command += [f"--{flag}", str(getattr(args, flag))]
    log = Path(sysroot) / "cycle.log"
    started = time.time()
    with log.open("w") as out:
        done = subprocess.run(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    wall = time.time() - started
    if done.returncode:
        sys.exit(f"cycle failed:\n{log.read_text()[-LOG_TAIL_CHARS:]}")
    return wall


def _measure(run: Any, wall: float) -> dict[str, Any]:
    """A cycle's wall, its longest train task's training and the rest, its steps' seconds."""
    end = run["end"].task.data
    training = max((task_training(run) or {}).values(), default=0.0)
    return {
        "cycle": end.cycle,
        "history": len(end.history),
        "wall_s": round(wall, 2),
        "training_s": round(training, 2),
        "outside_training_s": round(wall - training, 2),
        "step_seconds": step_seconds(run),
    }


def markdown(report: dict[str, Any]) -> str:
    cycles = report["cycles"]
    steps = list(cycles[-1]["step_seconds"])
    shown = sorted({0, 1, 2, len(cycles) - 1, *range(4, len(cycles), 5)} & set(range(len(cycles))))
    lines = [
        f"Machine: {report['machine']}. Command: `{report['command']}`.",
        "",
        "| cycle | trials in history | wall | longest task's training | outside training | "
        + " | ".join(steps)
        + " |",
        "| ---: " * (5 + len(steps)) + "|",
    ]
    for i in shown:
        c = cycles[i]
        seconds = " | ".join(f"{c['step_seconds'].get(s, 0):.1f}" for s in steps)
        lines.append(
            f"| {c['cycle']} | {c['history']} | {c['wall_s']:.1f} s | {c['training_s']:.1f} s | "
            f"{c['outside_training_s']:.1f} s | {seconds} |"
        )
    lines += [
        "",
        f"Outside training, median of cycles 2–{1 + ENDS}: {report['outside_training_early_s']} s;"
        f" of the last {ENDS}: {report['outside_training_late_s']} s; "
        f"ratio {report['late_over_early']}.",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
