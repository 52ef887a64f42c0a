"""A training set ten times larger than the train task's memory: one epoch of a streamed module.

    python benchmarks/data.py                  # 12 GiB of training data, written to a temp dir
    python benchmarks/data.py --gb 2 --keep /tmp/stream   # smaller; leave the files there
    python benchmarks/data.py --quick          # a few MiB: that the benchmark runs (the test)

Writes a synthetic classification set as .npy files, a chunk at a time so that it is never
in memory: x standard normal (float32, `--features` columns), y the argmax of a fixed random
linear map of x, so that an MLP learns it and its accuracy shows that it did. The validation
and test splits are small. Then it runs a train task in a process of its own, as the cycle's
train step would for one trial: `train_group` with the objective's defaults (the trial in a
worker process), on `tests.user_code.stream:NpyStream`, which reads the files with plain reads.
The task checks the module first (one streamed pass over every split: fingerprints, class
range, rows shared between splits), then trains one epoch and runs the sealed evaluation.

Meanwhile this process samples the resident set (VmRSS) and the proportional set (Pss, where
pages shared between processes count once) of the task's process and all its descendants every
`SAMPLE_S`. The module logs each complete pass over a split (its rows, start and end), which
splits the task into start-up, the check and the epoch. Reported: the training set's bytes on
disk and rows; the task's peak summed RSS (and its largest single process, and the peak summed
PSS), overall and per phase; bytes on disk / peak RSS; the seconds of each phase; the summed
RSS at each quarter of the epoch (whether it grows as the epoch reads); the rows the epoch
read; the trial's status and validation accuracy. It prints a JSON report, then a markdown
table for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from overhead import machine  # benchmarks/overhead.py: this script's folder is on sys.path

from factory_lib.objective import Objective, parse_objective
from factory_lib.propose.base import make_proposal
from factory_lib.train.group import train_group

ROOT = Path(__file__).resolve().parents[1]
MODULE = "tests.user_code.stream:NpyStream"
# Where the module logs each complete pass over a split, in the data's folder.
PASSES = "passes.jsonl"
GIB = 2**30
MIB = 2**20
CLASSES = 10
# Rows written at a time: what generating the data holds in this process.
WRITE_CHUNK_ROWS = 1 << 16
SAMPLE_S = 0.1
LR = 3e-3
# --quick: a few MiB, small held-out splits and batches; for the test, not for figures.
QUICK = {"gb": 0.004, "held_out_rows": 1000, "batch_size": 256}
LOG_TAIL_CHARS = 3000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gb", type=float, default=12.0, help="training set on disk, GiB")
    parser.add_argument("--features", type=int, default=128, help="float32 columns of x")
    parser.add_argument("--held-out-rows", type=int, default=20_000, help="val and test, each")
    parser.add_argument("--batch-size", type=int, default=8192)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for the test")
    parser.add_argument("--keep", type=Path, help="write the data here and leave it there")
    # The train task, run by the benchmark in a process of its own.
    parser.add_argument("--train-task", type=Path, nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        for name, value in QUICK.items():
            setattr(args, name, value)
    if args.train_task:
        data, result = args.train_task
        train_task(data, result, args.batch_size)
        return
    root = args.keep or Path(tempfile.mkdtemp(prefix="factory-bench-data-"))
    try:
        report = benchmark(root, args)
    finally:
        if args.keep is None:
            shutil.rmtree(root)
    print(json.dumps(report, indent=2))
    print()
    print(markdown(report))


def benchmark(root: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Write the data under `root`, run the train task on it, and report what it cost."""
    data = root / "data"
    row_bytes = args.features * 4 + 8  # float32 x, int64 y
    train_rows = max(args.batch_size, int(args.gb * GIB / row_bytes))
    started = time.monotonic()
    weights = np.random.default_rng(args.seed).standard_normal((args.features, CLASSES))
    rows = {"train": train_rows, "val": args.held_out_rows, "test": args.held_out_rows}
    for i, (split, n) in enumerate(rows.items()):
        write_split(data, split, n, weights, np.random.default_rng([args.seed, i]))
    write_s = time.monotonic() - started
    train_bytes = sum((data / f"train_{k}.npy").stat().st_size for k in ("x", "y"))

    result_file, log_file, passes_file = root / "result.json", root / "task.log", data / PASSES
    passes_file.unlink(missing_ok=True)  # a --keep folder's earlier run
    command = [sys.executable, str(Path(__file__).resolve()), "--train-task", str(data)]
    command += [str(result_file), "--batch-size", str(args.batch_size)]
    with log_file.open("w") as log:
        task = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        samples = sample_tree(task)
    if task.returncode:
        sys.exit(f"the train task failed:\n{log_file.read_text()[-LOG_TAIL_CHARS:]}")
    result = json.loads(result_file.read_text())
    if result["status"] != "ok":
        sys.exit(f"the trial ended {result['status']}: {result['cause']}")
    passes = [json.loads(line) for line in passes_file.read_text().splitlines()]
    check, epoch = (p for p in passes if p["split"] == "train")  # one epoch: two passes
    phases = {
        "start-up": (samples[0].at, passes[0]["start"]),
        "check": (passes[0]["start"], check["end"]),
        "epoch": (epoch["start"], epoch["end"]),
        "whole task": (samples[0].at, samples[-1].at),
    }
    peak = max(s.rss for s in samples)
    return {
        "train_bytes": train_bytes,
        "train_gib": round(train_bytes / GIB, 3),
        "train_rows": train_rows,
        "features": args.features,
        "held_out_rows": args.held_out_rows,
        "batch_size": args.batch_size,
        "write_s": round(write_s, 1),
        "peak_rss_mib": round(peak / MIB),
        "peak_largest_process_rss_mib": round(max(s.largest for s in samples) / MIB),
        "peak_pss_mib": round(max(s.pss for s in samples) / MIB),
        "most_processes": max(s.processes for s in samples),
        "bytes_over_peak_rss": round(train_bytes / peak, 1),
        "phases": {name: phase(samples, *span) for name, span in phases.items()},
        "epoch_rss_mib_by_quarter": [
            round(at(samples, epoch["start"] + q / 4 * (epoch["end"] - epoch["start"])) / MIB)
            for q in range(5)
        ],
        "check_rows": check["rows"],
        "epoch_rows": epoch["rows"],
        "status": result["status"],
        "cause": result["cause"],
        "epochs": result["epochs"],
        "val_accuracy": result["val_accuracy"],
        "test_accuracy": result["test_accuracy"],
        "trial_train_s": result["train_seconds"],
        "machine": machine(),
        "command": shlex.join(["python", "benchmarks/data.py", *sys.argv[1:]]),
    }


def write_split(
    root: Path, split: str, rows: int, weights: np.ndarray, rng: np.random.Generator
) -> None:
    """`root/{split}_x.npy` and `_y.npy`: the .npy header, then the rows a chunk at a time."""
    root.mkdir(parents=True, exist_ok=True)
    features = weights.shape[0]
    with (root / f"{split}_x.npy").open("wb") as x_file, (root / f"{split}_y.npy").open("wb") as y:
        for f, dtype, shape in ((x_file, "<f4", (rows, features)), (y, "<i8", (rows,))):
            header = {"descr": dtype, "fortran_order": False, "shape": shape}
            np.lib.format.write_array_header_1_0(f, header)
        for start in range(0, rows, WRITE_CHUNK_ROWS):
            x = rng.standard_normal((min(WRITE_CHUNK_ROWS, rows - start), features), np.float32)
            x.tofile(x_file)
            np.argmax(x @ weights, axis=1).astype(np.int64).tofile(y)


def objective_for(data: Path, batch_size: int) -> Objective:
    """One trial of a small MLP, one epoch, on the streamed module reading `data`."""
    kwargs = {"root": str(data), "batch_size": batch_size, "num_classes": CLASSES}
    spec = {
        "name": "stream-bench",
        "task": "classification",
        "data": {"module": MODULE, "kwargs": {**kwargs, "log": str(data / PASSES)}},
        "model": {"families": ["mlp"]},
        "search_space": {"lr": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True}},
        "fixed": {"width": 64, "depth": 1},
        "reward": {"metric": "accuracy"},
        "budget": {"trials_per_cycle": 1, "max_epochs": 1, "trial_timeout_s": 24 * 3600},
        "promotion": {"seeds": 1, "min_improvement": 0.0},
    }
    return parse_objective(yaml.safe_dump(spec, sort_keys=False), "benchmarks/data.py")


def train_task(data: Path, result_file: Path, batch_size: int) -> None:
    """What the train step does for one trial, and the trial's result as JSON in a file."""
    objective = objective_for(data, batch_size)
    proposal = make_proposal(objective, 1, 0, 0, {"lr": LR}, "bench", "one epoch of a stream")
    [output] = train_group(objective, [proposal])
    r = output.result
    result = {
        "status": r.status,
        "cause": r.cause,
        "epochs": r.epochs,
        "val_accuracy": r.evaluation.val["accuracy"] if r.evaluation else None,
        "test_accuracy": r.evaluation.test["accuracy"] if r.evaluation else None,
        "train_seconds": round(r.evaluation.train_seconds, 1) if r.evaluation else None,
    }
    result_file.write_text(json.dumps(result))


@dataclass(frozen=True)
class Sample:
    """The task's process tree at one moment: bytes summed over its processes."""

    at: float  # epoch seconds, the clock the module's pass log uses
    rss: int
    largest: int  # the RSS of its largest process
    pss: int
    processes: int


def sample_tree(task: subprocess.Popen[bytes]) -> list[Sample]:
    """Samples of the task's process tree every SAMPLE_S until the task exits."""
    samples = []
    while task.poll() is None:
        sizes = [memory(pid) for pid in descendants(task.pid)]
        rss = [r for r, _ in sizes]
        samples.append(
            Sample(time.time(), sum(rss), max(rss, default=0), sum(p for _, p in sizes), len(rss))
        )
        time.sleep(SAMPLE_S)
    return samples


def descendants(pid: int) -> list[int]:
    """`pid` and every process below it, from /proc's children lists."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        for task in Path(f"/proc/{current}/task").glob("*"):
            todo += [int(c) for c in read(task / "children").split()]
    return found


def memory(pid: int) -> tuple[int, int]:
    """A process's resident and proportional set sizes in bytes; zeros once it has gone."""
    fields = {}
    for name in (f"/proc/{pid}/status", f"/proc/{pid}/smaps_rollup"):
        for line in read(Path(name)).splitlines():
            key, _, value = line.partition(":")
            fields[key] = value
    kib = [int(fields[k].split()[0]) * 1024 if k in fields else 0 for k in ("VmRSS", "Pss")]
    return kib[0], kib[1]


def read(path: Path) -> str:
    """A /proc file's text; empty when its process exited since it was listed (a race that
    sampling a live tree cannot avoid)."""
    try:
        return path.read_text()
    except (FileNotFoundError, ProcessLookupError):
        return ""


def phase(samples: list[Sample], start: float, end: float) -> dict[str, float]:
    """A phase's seconds and the peak summed RSS sampled within it."""
    inside = [s.rss for s in samples if start <= s.at <= end] or [at(samples, end)]
    return {"seconds": round(end - start, 1), "peak_rss_mib": round(max(inside) / MIB)}


def at(samples: list[Sample], moment: float) -> int:
    """The summed RSS sampled nearest `moment`."""
    return min(samples, key=lambda s: abs(s.at - moment)).rss


def markdown(report: dict[str, Any]) -> str:
    """The run as a table for docs/benchmarks.md, with its machine and command."""
    phases = report["phases"]
    lines = [
        f"Machine: {report['machine']}. Command: `{report['command']}`.",
        "",
        "| training set on disk | rows | peak RSS, summed (largest process; PSS) "
        "| on disk / peak RSS | start-up | check pass | epoch | whole task "
        "| epoch rows | val accuracy |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        f"| {report['train_gib']} GiB | {report['train_rows']:,} | {report['peak_rss_mib']} MiB "
        f"({report['peak_largest_process_rss_mib']} MiB; {report['peak_pss_mib']} MiB) "
        f"| **{report['bytes_over_peak_rss']}×** "
        + " ".join(
            f"| {phases[p]['seconds']} s ({phases[p]['peak_rss_mib']} MiB)"
            for p in ("start-up", "check", "epoch", "whole task")
        )
        + f" | {report['epoch_rows']:,} | {report['val_accuracy']} |",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
