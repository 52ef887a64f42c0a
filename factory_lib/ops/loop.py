"""`factory loop`: chained cycles through metaflow.Runner, with a line per finished trial.

With `--watch` it first waits for the traffic `factory serve` sampled since the latest cycle to
drift from the champion's training split (`factory drift --served`), then runs the cycles,
tagged with why, and watches again.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from factory_lib.checks import check_file
from factory_lib.explore.analysis import CycleView
from factory_lib.explore.summary import TRIGGER_TAG, CycleSummary
from factory_lib.history import state_of
from factory_lib.objective import Objective, objective_path
from factory_lib.runs.client import FLOW_NAME

FLOW_FILE = Path(__file__).resolve().parents[2] / "flows" / "cycle.py"


def objective_file(args: argparse.Namespace) -> Path:
    """The objective file a command names (`--config PATH`, or `--objective NAME`)."""
    return Path(args.config) if args.config else objective_path(args.objective)


def load_checked(path: Path) -> Objective:
    """The objective at `path`, checked against what trains (factory_lib.checks); its
    warnings go to stderr."""
    checked = check_file(path)
    for warning in checked.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return checked.objective


def progress_line(i: int, n: int, summary: CycleSummary, seconds: float) -> str:
    """`[2/5] ` and the cycle's summary line, then the seconds it took."""
    return f"[{i}/{n}] {summary.line()} | {seconds:.0f} s"


# The train step's line for a finished trial, e.g. "[c002-t05] ok" or "[c002-t01] failed (...)"
TRIAL_DONE = re.compile(r"\[(c\d+-t\d+)\] (ok|failed|diverged|timeout|pruned)\b")


@dataclass
class _TrialWatch:
    """Live progress of a running cycle, from the trial lines in its output."""

    prefix: str
    expected: int
    best_before: float | None
    finished: int = 0

    def line(self, text: str) -> str | None:
        """A progress line for a finished trial's output line; None for any other line."""
        found = TRIAL_DONE.search(text)
        if found is None:
            return None
        self.finished += 1
        best = f"{self.best_before:.4f}" if self.best_before is not None else "none yet"
        return (
            f"  {self.prefix} trial {found[1]} {found[2]}: {self.finished} of {self.expected} "
            f"finished | best val reward before this cycle {best}"
        )


@dataclass(frozen=True)
class _CycleOutcome:
    status: str
    run: Any
    stderr_tail: str


def flow_branch_options(args: argparse.Namespace) -> dict[str, Any]:
    """The flow's top-level @project options (`--branch`, `--production`) that run a cycle on
    `args.branch` (a full branch name); BranchError for another user's branch."""
    from factory_lib.runs.branches import BranchError
    from factory_lib.runs.client import branch_name, flow_options

    if args.branch.startswith("user.") and args.branch != branch_name():
        raise BranchError(
            f"a cycle runs on your own branch ({branch_name()}), a test. branch (--branch NAME) "
            f"or production (--production), never on another user's ({args.branch})"
        )
    return flow_options(args.branch)


async def _run_cycle(
    args: argparse.Namespace, path: Path, params: dict[str, Any], watch: _TrialWatch, out: TextIO
) -> _CycleOutcome:
    """Run one cycle through Runner, printing a line as each trial finishes."""
    from metaflow.runner.metaflow_runner import Runner

    async with Runner(
        str(args.flow), config=[("objective", str(path))], **flow_branch_options(args)
    ) as runner:
        running = await runner.async_run(**params)
        # Metaflow annotates stream_log as a plain Iterator; it is an async generator.
        async for _, text in running.stream_log("stdout"):  # type: ignore[attr-defined]
            progress = watch.line(text)
            if args.verbose:
                print(text, file=out, flush=True)
            elif progress is not None:
                print(progress, file=out, flush=True)
        await running.wait()
        return _CycleOutcome(running.status, running.run, running.stderr[-4000:])


def loop(args: argparse.Namespace) -> int:
    """Run up to N chained cycles; stop early on budget or on `patience` cycles of no gain.

    With `--json`, stdout holds only one JSON object per finished cycle (its `CycleSummary`,
    with `loop_cycle`, `loop_cycles` and `seconds`); everything else goes to stderr."""
    import torch  # noqa: F401  before Runner: Metaflow's vendored typing_extensions (#2462)

    path = objective_file(args)
    objective = load_checked(path)
    out = sys.stderr if args.json else sys.stdout
    if args.drift_data:
        from factory_lib.ops.drift import check_drift, load_labelled

        labelled = load_labelled(args.drift_data, objective.data.target)
        report = check_drift(objective.name, *labelled, FLOW_NAME, branch=args.branch)
        print("\n".join(report.lines()), file=out)
        if not report.warranted:
            print("stop: no drift, no cycle started", file=out)
            return 0
    if getattr(args, "watch", False):
        return watch(args, path, objective, out)
    return run_cycles(args, path, objective, out)


# A drift check on fewer served rows than this says nothing either way: the watch waits.
MIN_SERVED_ROWS = 50


def watch(args: argparse.Namespace, path: Path, objective: Objective, out: TextIO) -> int:
    """Check the served traffic every `--watch-every` seconds; when it drifted, run the cycles
    (their runs tagged `trigger:...` with why) and watch on: later checks read only the traffic
    served after the latest cycle, so one drift starts one round of cycles."""
    from factory_lib.ops.drift import check_served_drift
    from factory_lib.runs.client import latest_cycle

    checks = 0
    while True:
        checks += 1
        state = latest_cycle(FLOW_NAME, objective.name, branch=args.branch)
        since = _epoch(state.created_at) if state is not None else None
        after = f"cycle {state.cycle}" if state is not None else "the start"
        try:
            report = check_served_drift(
                objective.name, args.sample_dir, FLOW_NAME, args.branch, since
            )
        except LookupError as exc:
            print(f"watch: {exc.args[0]}", file=out, flush=True)
            report = None
        if report is not None and report.rows < MIN_SERVED_ROWS:
            print(
                f"watch: {report.rows} rows served since {after}, fewer than {MIN_SERVED_ROWS}: "
                "waiting for more",
                file=out,
                flush=True,
            )
        elif report is not None:
            print("\n".join(report.lines()), file=out, flush=True)
            if report.warranted:
                why = f"served traffic since {after} drifted: {'; '.join(report.reasons)}"
                print(f"watch: {why}; starting a cycle", file=out, flush=True)
                code = run_cycles(args, path, objective, out, f"{TRIGGER_TAG}drift:{why}")
                if code:
                    return code
        if args.watch_checks and checks >= args.watch_checks:
            print(f"watch: stop after {checks} checks (--watch-checks)", file=out, flush=True)
            return 0
        time.sleep(args.watch_every)


def _epoch(created_at: str) -> float | None:
    """A run's created_at (Metaflow's UTC string) as seconds since the epoch."""
    import datetime

    if not created_at:
        return None
    stamp = datetime.datetime.fromisoformat(created_at.replace("Z", "+00:00"))
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=datetime.UTC)
    return stamp.timestamp()


def run_cycles(
    args: argparse.Namespace, path: Path, objective: Objective, out: TextIO, tag: str = ""
) -> int:
    """Up to `--cycles` chained cycles; stop early on budget or on `patience` cycles of no gain.
    `tag` goes on each cycle's run (why it was started)."""
    from factory_lib.runs.client import Chain, chain_from, flow_command

    budget = objective.budget
    print(
        f"factory loop: {objective.name} ({path}) on {args.branch}, up to {args.cycles} cycles",
        file=out,
        flush=True,
    )
    for i in range(1, args.cycles + 1):
        fresh = args.fresh and i == 1
        chain = (
            Chain(None, None)
            if fresh
            else chain_from(FLOW_NAME, objective.name, branch=args.branch)
        )
        state = chain.previous
        if chain.cycles_counted >= budget.max_cycles:  # as the start step counts: no retired
            print(
                f"stop: budget spent ({chain.cycles_counted} of budget.max_cycles="
                f"{budget.max_cycles})",
                file=out,
            )
            return 0
        params: dict[str, Any] = {"trials": args.trials, "epochs": args.epochs}
        if fresh:
            params["fresh"] = True
        if args.max_workers:
            params["max_workers"] = args.max_workers
        if tag:
            params["tags"] = [tag[:400]]
        started = time.monotonic()
        rewards = [r.val_reward for r in state.history if r.eligible] if state else []
        best = max((v for v in rewards if v is not None), default=None)
        watch = _TrialWatch(
            f"[{i}/{args.cycles}]", args.trials or objective.budget.trials_per_cycle, best
        )
        outcome = asyncio.run(_run_cycle(args, path, params, watch, out))
        if outcome.status != "successful":
            print(outcome.stderr_tail, file=sys.stderr)
            print(
                f"cycle {i} failed: fix the cause, then `{flow_command(args.branch, 'resume')}` "
                "reruns only what did not finish",
                file=sys.stderr,
            )
            return 1
        data = state_of(outcome.run["end"].task.data, outcome.run.pathspec)
        summary, seconds = CycleView.of(data).summary, time.monotonic() - started
        if args.json:
            fields = {"loop_cycle": i, "loop_cycles": args.cycles, "seconds": round(seconds, 1)}
            print(json.dumps({**fields, **summary.model_dump(mode="json")}), flush=True)
        else:
            print(progress_line(i, args.cycles, summary, seconds), flush=True)
        if data.stale_cycles >= budget.patience:
            print(
                f"stop: no better reward for {data.stale_cycles} cycles (budget.patience)",
                file=out,
            )
            return 0
    return 0
