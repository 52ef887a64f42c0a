"""Orchestration overhead of one cycle: wall time against the trials' own training time.

    python benchmarks/overhead.py                          # digits: the budget's trials and epochs
    python benchmarks/overhead.py --trials 8 --epochs 10 --max-workers 2
    python benchmarks/overhead.py --compare 343c6d0 --pairs 3   # this tree against an older one
    python benchmarks/overhead.py --vs-baseline                 # against a plain Optuna script
    python benchmarks/overhead.py --vs-baseline --objective benchmarks/long_trials.yaml

Runs one fresh cycle through metaflow.Runner in a throw-away datastore and reports:
- wall: the cycle from the Runner call to its end;
- Σ train: the trials' training seconds (fit + evaluation, from their records);
- overhead ratio: wall / Σ train (below 1 when trials overlap);
- wall / (Σ train / workers): how close the cycle is to perfect parallelism;
- first trial start: seconds from the Runner call to the first trial's first step;
- per-task start-up: median seconds from a train task's start to its trial's start;
- step seconds: from each step's first task start to its last task's end.

--compare REV checks REV out into a throw-away git worktree and runs --pairs pairs of fresh
cycles, one with REV's flow and code and one with this working tree's, alternating which goes
first so that a machine warming up or getting busier weighs on both. Each cycle runs as
`python flows/cycle.py run --fresh ...` in its own throw-away datastore, from a subprocess of
this script that imports Metaflow but not factory_lib, so trees whose packages are laid out
differently are measured the same way. It prints a JSON report, then a markdown table for
docs/benchmarks.md: per tree the median cycle wall with its spread (min–max), the ratio of
the medians, and each step's seconds.

--vs-baseline runs --pairs pairs of the same kind of fresh cycle and of benchmarks/baseline.py
(the plain one-process Optuna + Lightning script a user would write instead, on the same
objective, trials and epochs), alternating which goes first, each as a command timed from
its start to its exit. It reports the ratio of the median walls with the spread of the
per-pair ratios, the fixed cost (a cycle's wall minus its longest train task's training; the
baseline's wall minus its training), and each step's seconds.
"""

from __future__ import annotations

# torch before Runner: Metaflow's vendored typing_extensions can break it later (#2462)
import torch  # isort: skip

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
FLOW = Path("flows") / "cycle.py"
FLOW_NAME = "CycleFlow"
# The end of a failed cycle's output that the error shows.
LOG_TAIL_CHARS = 3000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objective", default=str(ROOT / "objectives" / "digits.yaml"))
    parser.add_argument("--trials", type=int, default=0, help="0: the objective's budget")
    parser.add_argument("--epochs", type=int, default=0, help="0: the objective's budget")
    parser.add_argument("--max-workers", type=int, default=0, help="0: the flow's default (cores)")
    parser.add_argument("--compare", metavar="REV", help="also run the flow of this git revision")
    parser.add_argument(
        "--vs-baseline", action="store_true", help="alternate cycles with benchmarks/baseline.py"
    )
    parser.add_argument(
        "--pairs", type=int, default=3, help="with --compare or --vs-baseline: runs per arm"
    )
    parser.add_argument(
        "--same-seed",
        action="store_true",
        help="with --vs-baseline: every pair samples with the objective's proposers.seed "
        "(default: pair i with seed i, the same on both arms)",
    )
    # One cycle of the tree at this path, run by --compare in a process of its own.
    parser.add_argument("--measure-tree", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure_tree:
        print(json.dumps(measure_tree(args.measure_tree, args)))
    elif args.compare:
        compare(args)
    elif args.vs_baseline:
        vs_baseline(args)
    else:
        overhead(args)


def overhead(args: argparse.Namespace) -> None:
    """One cycle of this tree through Runner, with its trials' own seconds from the records."""
    os.environ["METAFLOW_DATASTORE_SYSROOT_LOCAL"] = tempfile.mkdtemp(prefix="factory-bench-")
    from factory_lib.runs.env import ensure_metaflow_user

    ensure_metaflow_user()
    from metaflow.runner.metaflow_runner import Runner

    params: dict[str, object] = {"trials": args.trials, "epochs": args.epochs, "fresh": True}
    if args.max_workers:
        params["max_workers"] = args.max_workers
    started = time.time()
    with Runner(str(ROOT / FLOW), show_output=False, config=[("objective", args.objective)]).run(
        **params
    ) as running:
        wall = time.time() - started
        if running.status != "successful":
            sys.exit(running.stderr[-LOG_TAIL_CHARS:])
        run = running.run
    results = [r.result for r in run["end"].task.data.records]
    train_seconds = sum(r.evaluation.train_seconds for r in results if r.evaluation)
    task_starts = {t.pathspec: t.created_at.timestamp() for t in run["train"]}
    startup = [r.started_at - task_starts[r.task_pathspec] for r in results if r.task_pathspec]
    # The flow's local default is one worker per core (factory_lib.runs.env.local_worker_default).
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
        "step_seconds": step_seconds(run),
        "machine": machine(),
    }
    print(json.dumps(report, indent=2))


def step_seconds(run: Any) -> dict[str, float]:
    """Each step's seconds from its first task's start to its last task's end, in run order."""
    spans = {
        step.id: (
            min(t.created_at for t in step).timestamp(),
            max(t.finished_at for t in step).timestamp(),
        )
        for step in run
    }
    return {
        name: round(end - start, 1)
        for name, (start, end) in sorted(spans.items(), key=lambda item: item[1][0])
    }


def machine() -> str:
    """Architecture, cores, CPU model, torch version and GPU, for the report."""
    cpuinfo = Path("/proc/cpuinfo")
    models = [
        line.split(":", 1)[1].strip()
        for line in (cpuinfo.read_text().splitlines() if cpuinfo.exists() else [])
        if line.startswith("model name")
    ]
    gpu = "CUDA " + torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    cpu = models[0] if models else platform.processor() or "unknown CPU"
    return f"{platform.machine()}, {os.cpu_count()} cores, {cpu}, torch {torch.__version__}, {gpu}"


def measure_tree(tree: Path, args: argparse.Namespace) -> dict[str, Any]:
    """One fresh cycle of `tree`'s flow in a throw-away datastore: its wall and step seconds.

    The flow runs as a command in `tree`, on the PYTHONPATH this process was given; this
    process reads the run back with the Client API and never imports factory_lib.
    """
    with tempfile.TemporaryDirectory(prefix="factory-bench-") as sysroot:
        # Metaflow reads the datastore's root when it is imported, below.
        os.environ["METAFLOW_DATASTORE_SYSROOT_LOCAL"] = sysroot
        run_id_file, log = Path(sysroot) / "run-id", Path(sysroot) / "cycle.log"
        command = [
            sys.executable,
            str(FLOW),
            "--config",
            "objective",
            args.objective,
            "run",
            "--fresh",
            "--trials",
            str(args.trials),
            "--epochs",
            str(args.epochs),
            "--run-id-file",
            str(run_id_file),
        ]
        if args.max_workers:
            command += ["--max-workers", str(args.max_workers)]
        started = time.time()
        with log.open("w") as out:
            done = subprocess.run(command, cwd=tree, stdout=out, stderr=subprocess.STDOUT)
        wall = time.time() - started
        if done.returncode:
            tail = log.read_text()[-LOG_TAIL_CHARS:]
            sys.exit(f"{shlex.join(command)} failed in {tree}:\n{tail}")
        from metaflow import Run, namespace

        namespace(None)
        run = Run(f"{FLOW_NAME}/{run_id_file.read_text().strip()}")
        per_task = task_training(run)
        return {
            "wall_s": round(wall, 1),
            "step_seconds": step_seconds(run),
            # two decimals: a smoke cycle's task may train for 0.04 s, which is not nothing
            "longest_task_train_s": None
            if per_task is None
            else round(max(per_task.values(), default=0.0), 2),
            "sum_train_s": None if per_task is None else round(sum(per_task.values()), 1),
        }


def task_training(run: Any) -> dict[str, float] | None:
    """The training seconds (fit + evaluation) each train task did, from the trials' records;
    None for a tree whose records do not say (they are read, not imported)."""
    per_task: dict[str, float] = {}
    try:
        for record in run["end"].task.data.records:
            result = record.result
            if result.evaluation is not None and result.task_pathspec:
                per_task[result.task_pathspec] = (
                    per_task.get(result.task_pathspec, 0.0) + result.evaluation.train_seconds
                )
    except (AttributeError, KeyError):
        return None
    return per_task


def compare(args: argparse.Namespace) -> None:
    """Alternate fresh cycles of REV's tree and this one; print a JSON report and a table."""
    new_rev = this_rev()
    objective = Path(args.objective).resolve()
    with tempfile.TemporaryDirectory(prefix="factory-bench-rev-") as tmp:
        old_tree = Path(tmp) / "tree"
        git("worktree", "add", "--detach", "--quiet", str(old_tree), args.compare)
        try:
            old_rev = git("rev-parse", "--short", "HEAD", cwd=old_tree)
            trees = {"old": old_tree, "new": ROOT}
            cycles: dict[str, list[dict[str, Any]]] = {"old": [], "new": []}
            for pair in range(args.pairs):
                order = ("old", "new") if pair % 2 == 0 else ("new", "old")
                for arm in order:
                    cycles[arm].append(measure_in_subprocess(trees[arm], objective, args))
                    print(
                        f"pair {pair + 1}/{args.pairs}: {arm} {cycles[arm][-1]['wall_s']} s",
                        file=sys.stderr,
                    )
        finally:
            git("worktree", "remove", "--force", str(old_tree))
    arms = {
        "old": {"rev": old_rev, **summary(cycles["old"])},
        "new": {"rev": new_rev, **summary(cycles["new"])},
    }
    report = {
        **header(args, objective),
        "arms": arms,
        "new_over_old": ratio(arms["new"]["median_wall_s"], arms["old"]["median_wall_s"]),
    }
    print(json.dumps(report, indent=2))
    print()
    print(markdown(report))


def vs_baseline(args: argparse.Namespace) -> None:
    """Alternate fresh cycles of this tree with the plain script; print JSON and a table.

    Both arms sample their trials with Optuna's TPE from the same space, but not the same
    stream (the factory's space also holds `arch`, which it rejects without Claude), so one
    seed gives each arm other trials: 7 CNNs of 8 against 4 with seed 0 on digits, twice the
    training. Pair i therefore runs both arms with proposers.seed i, so that the pairs
    average over what the sampler draws; `--same-seed` keeps the objective's seed.
    """
    objective = Path(args.objective).resolve()
    runs: dict[str, list[dict[str, Any]]] = {"factory": [], "baseline": []}
    seeds = []
    with tempfile.TemporaryDirectory(prefix="factory-bench-seed-") as tmp:
        for pair in range(args.pairs):
            seeded = objective if args.same_seed else with_seed(objective, pair, Path(tmp))
            seeds.append(proposers_seed(seeded))
            vs_baseline_pair(args, pair, seeded, runs)
    factory, baseline = summary(runs["factory"]), summary(runs["baseline"])
    pair_ratios = [
        round(f["wall_s"] / b["wall_s"], 2)
        for f, b in zip(runs["factory"], runs["baseline"], strict=True)
    ]
    report = {
        **header(args, objective),
        "rev": this_rev(),
        "seeds": seeds,
        "factory": factory,
        "baseline": baseline,
        "factory_over_baseline": ratio(factory["median_wall_s"], baseline["median_wall_s"]),
        "pair_ratios": pair_ratios,
        "factory_median_fixed_s": median_of(runs["factory"], "fixed_s"),
        "baseline_median_fixed_s": median_of(runs["baseline"], "fixed_s"),
        "factory_median_sum_train_s": median_of(runs["factory"], "sum_train_s"),
        "baseline_median_sum_train_s": median_of(runs["baseline"], "sum_train_s"),
        "baseline_best_test_accuracy": [b["best_test_accuracy"] for b in runs["baseline"]],
    }
    print(json.dumps(report, indent=2))
    print()
    print(baseline_markdown(report))


def with_seed(objective: Path, seed: int, folder: Path) -> Path:
    """A copy of the objective whose proposers sample with `seed` (its name unchanged)."""
    spec = yaml.safe_load(objective.read_text())
    spec["proposers"] = {**spec.get("proposers", {}), "seed": seed}
    path = folder / f"seed-{seed}" / objective.name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def proposers_seed(objective: Path) -> int:
    return int(yaml.safe_load(objective.read_text()).get("proposers", {}).get("seed", 0))


def vs_baseline_pair(
    args: argparse.Namespace, pair: int, objective: Path, runs: dict[str, list[dict[str, Any]]]
) -> None:
    """One pair: a fresh cycle and a baseline run, in the order that alternates by pair."""
    order = ("factory", "baseline") if pair % 2 == 0 else ("baseline", "factory")
    for arm in order:
        if arm == "factory":
            run = measure_in_subprocess(ROOT, objective, args)
            run["fixed_s"] = (
                round(run["wall_s"] - run["longest_task_train_s"], 1)
                if run["longest_task_train_s"] is not None
                else None
            )
        else:
            run = run_baseline(objective, args)
        runs[arm].append(run)
        print(f"pair {pair + 1}/{args.pairs}: {arm} {run['wall_s']} s", file=sys.stderr)


def run_baseline(objective: Path, args: argparse.Namespace) -> dict[str, Any]:
    """One run of benchmarks/baseline.py, timed from its start to its exit like a cycle."""
    command = [sys.executable, str(ROOT / "benchmarks" / "baseline.py"), "--objective"]
    command += [str(objective), "--trials", str(args.trials), "--epochs", str(args.epochs)]
    started = time.time()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    wall = time.time() - started
    if done.returncode:
        raise SystemExit(f"{shlex.join(command)} failed:\n{done.stderr[-LOG_TAIL_CHARS:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    trained = sum(result["train_seconds"])
    return {
        **result,
        "wall_s": round(wall, 1),
        "sum_train_s": round(trained, 1),
        "fixed_s": round(wall - trained, 1),
        "step_seconds": {},
    }


def median_of(runs: Sequence[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in runs if r.get(key) is not None]
    return round(statistics.median(values), 1) if values else None


def baseline_markdown(report: dict[str, Any]) -> str:
    """The side-by-side run as a table for docs/benchmarks.md, with its machine and command."""
    factory, baseline = report["factory"], report["baseline"]
    ratios = report["pair_ratios"]
    lines = [
        f"`{report['objective']}`, {amounts(report)}; {report['pairs']} pairs, "
        "alternating which runs first; each wall from the command's start to its exit. Fixed "
        "cost: the cycle's wall minus its longest train task's training (the baseline: its wall "
        "minus its training).",
        "",
        f"Machine: {report['machine']}. Tree: {report['rev']}. Command: `{report['command']}`.",
        "",
        "| seconds | factory cycle | baseline script | factory / baseline |",
        "| --- | ---: | ---: | ---: |",
        f"| wall, median (min–max) | {factory['median_wall_s']} ({factory['min_wall_s']}–"
        f"{factory['max_wall_s']}) | {baseline['median_wall_s']} ({baseline['min_wall_s']}–"
        f"{baseline['max_wall_s']}) | **{times(report['factory_over_baseline'])}** "
        f"(pairs {min(ratios):.2f}–{max(ratios):.2f}) |",
        f"| fixed cost, median | {report['factory_median_fixed_s']} | "
        f"{report['baseline_median_fixed_s']} | |",
    ]
    for name, seconds in factory["median_step_seconds"].items():
        lines.append(f"| step `{name}`, median | {seconds} | | |")
    return "\n".join(lines)


def header(args: argparse.Namespace, objective: Path) -> dict[str, Any]:
    """What a side-by-side report says first: what ran, how often, where, and the command."""
    return {
        "objective": objective.stem,
        "trials": args.trials or "budget",
        "epochs": args.epochs or "budget",
        "pairs": args.pairs,
        "machine": machine(),
        "command": shlex.join(["python", "benchmarks/overhead.py", *sys.argv[1:]]),
    }


def this_rev() -> str:
    """This tree's commit, and whether it holds changes not committed yet."""
    rev = git("rev-parse", "--short", "HEAD")
    return rev + (" + uncommitted changes" if git("status", "--porcelain") else "")


def measure_in_subprocess(tree: Path, objective: Path, args: argparse.Namespace) -> dict[str, Any]:
    """measure_tree in a process of its own, importing only `tree`'s code."""
    # An objective of this tree is read from the same path in the other.
    path = objective.relative_to(ROOT) if objective.is_relative_to(ROOT) else objective
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--measure-tree",
        str(tree),
        "--objective",
        str(path),
        "--trials",
        str(args.trials),
        "--epochs",
        str(args.epochs),
        "--max-workers",
        str(args.max_workers),
    ]
    env = {**os.environ, "PYTHONPATH": str(tree)}
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(done.stderr[-LOG_TAIL_CHARS:])
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def summary(cycles: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The median and spread of the cycles' walls and of each step's seconds."""
    walls = [c["wall_s"] for c in cycles]
    steps: dict[str, list[float]] = {}
    for cycle in cycles:
        for name, seconds in cycle["step_seconds"].items():
            steps.setdefault(name, []).append(seconds)
    return {
        "median_wall_s": round(statistics.median(walls), 1),
        "min_wall_s": min(walls),
        "max_wall_s": max(walls),
        "median_step_seconds": {n: round(statistics.median(s), 1) for n, s in steps.items()},
        "cycles": list(cycles),
    }


def markdown(report: dict[str, Any]) -> str:
    """The comparison as a table for docs/benchmarks.md, with its machine and command."""
    old, new = report["arms"]["old"], report["arms"]["new"]
    lines = [
        f"One fresh cycle of `{report['objective']}`, {amounts(report)}, "
        f"per tree and pair; {report['pairs']} pair{'' if report['pairs'] == 1 else 's'}, "
        "alternating which tree runs first. Cycle wall: `python flows/cycle.py run --fresh` "
        "from start to exit; a step: its first task's start to its last task's end.",
        "",
        f"Machine: {report['machine']}. Command: `{report['command']}`.",
        "",
        f"| seconds | old ({old['rev']}) | new ({new['rev']}) | new / old |",
        "| --- | ---: | ---: | ---: |",
        f"| cycle wall, median (min–max) | {old['median_wall_s']} ({old['min_wall_s']}–"
        f"{old['max_wall_s']}) | {new['median_wall_s']} ({new['min_wall_s']}–"
        f"{new['max_wall_s']}) | **{times(report['new_over_old'])}** |",
    ]
    old_steps, new_steps = old["median_step_seconds"], new["median_step_seconds"]
    for name in dag_order(list(old_steps), list(new_steps)):
        before, after = old_steps.get(name), new_steps.get(name)
        lines.append(
            f"| step `{name}`, median | {'—' if before is None else before} | "
            f"{'—' if after is None else after} | {times(ratio(after, before))} |"
        )
    return "\n".join(lines)


def amounts(report: dict[str, Any]) -> str:
    """`8 trials, the budget's epochs`: what each run trained, in words."""
    return ", ".join(
        f"the budget's {what}" if report[what] == "budget" else f"{report[what]} {what}"
        for what in ("trials", "epochs")
    )


def dag_order(*orders: list[str]) -> list[str]:
    """The steps of several runs in one order: each new step goes after the one it followed."""
    merged: list[str] = []
    for order in orders:
        for i, name in enumerate(order):
            if name not in merged:
                merged.insert(merged.index(order[i - 1]) + 1 if i else 0, name)
    return merged


def ratio(new: float | None, old: float | None) -> float | None:
    """new / old to two places; None when either is missing or old is zero."""
    return round(new / old, 2) if new is not None and old else None


def times(factor: float | None) -> str:
    """A ratio for the table: two decimals, or a dash where there is none."""
    return "—" if factor is None else f"{factor:.2f}"


def git(*args: str, cwd: Path = ROOT) -> str:
    """A git command's output; a failing command ends the benchmark with git's message."""
    done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"git {shlex.join(args)}: {done.stderr.strip()}")
    return done.stdout.strip()


if __name__ == "__main__":
    main()
