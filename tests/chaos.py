"""Chaos: cycles of one search while train tasks and whole runs are SIGKILLed at random moments.

The harness acts as the operator would: after a killed run it runs `resume`; when a resume
cannot continue (the run was killed before its first step finished) it starts a new cycle. At
the end the search must have lost nothing (`check_search`).

    python -m tests.chaos --faults 50 --seed 1     # the longer run recorded in docs/reliability.md

It only kills processes it started (its own flow runs, by process group, and their tasks).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
FLOW = str(ROOT / "flows" / "cycle.py")
RUN_TIMEOUT_S = 900  # one attempt at a cycle, kills and all; a hang fails the chaos run
POLL_S = 0.2
# When a planned kill falls: a train task, seconds after the train step's first task started
# (a smoke trial trains for seconds); a run, seconds after it started (start to end).
TASK_KILL_S = (0.2, 6.0)
RUN_KILL_S = (1.0, 20.0)


@dataclass
class Faults:
    """What the harness did, for the report."""

    task_kills: int = 0
    run_kills: int = 0
    resumes: int = 0
    restarts: int = 0
    log: list[str] = field(default_factory=list)

    @property
    def injected(self) -> int:
        return self.task_kills + self.run_kills


def _children(pgid: int) -> list[tuple[int, str]]:
    """(pid, command line) of every process in the process group `pgid`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue  # gone already
        fields = stat.rpartition(")")[2].split()
        if int(fields[2]) == pgid:  # the process group follows the state and the parent
            found.append((int(entry.name), cmdline))
    return found


def _flow(objective: Path, *command: str) -> subprocess.Popen[bytes]:
    log = objective.with_suffix(f".{time.monotonic_ns()}.log")
    config = [] if command[0] == "resume" else ["--config", "objective", str(objective)]
    with log.open("wb") as out:  # the child keeps its own handle
        return subprocess.Popen(
            # resume takes the killed run's own config: Metaflow refuses --config with it
            [sys.executable, FLOW, *config, *command],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: a run kill takes its tasks too
        )


def _attempt(proc: subprocess.Popen[bytes], rng: random.Random, faults: Faults, budget: int) -> str:
    """Let a run go on, killing one of its train tasks (a random moment after the first one
    started) or the whole run (a random moment after its start), at most `budget` faults.
    Returns 'done', 'failed' or 'killed'."""
    plan = rng.choice(["task", "task", "run", "none"]) if budget > 0 else "none"
    kill_after = rng.uniform(*(TASK_KILL_S if plan == "task" else RUN_KILL_S))
    started = time.monotonic()
    tasks_since: float | None = None
    while proc.poll() is None:
        now = time.monotonic()
        if now - started > RUN_TIMEOUT_S:
            os.killpg(proc.pid, signal.SIGKILL)
            raise TimeoutError(f"a cycle ran past {RUN_TIMEOUT_S} s")
        if plan == "run" and now - started > kill_after:
            os.killpg(proc.pid, signal.SIGKILL)
            faults.run_kills += 1
            faults.log.append(f"killed run (pid {proc.pid}) at {now - started:.1f} s")
            proc.wait(timeout=60)
            return "killed"
        if plan == "task":
            tasks = [p for p, cmd in _children(proc.pid) if " step train " in cmd]
            tasks_since = tasks_since or (now if tasks else None)
            if tasks and tasks_since is not None and now - tasks_since > kill_after:
                victim = rng.choice(tasks)
                os.kill(victim, signal.SIGKILL)
                faults.task_kills += 1
                faults.log.append(
                    f"killed train task (pid {victim}) {now - tasks_since:.1f} s into the "
                    f"train step, {now - started:.1f} s into the run"
                )
                plan = "none"
        time.sleep(POLL_S)
    return "done" if proc.returncode == 0 else "failed"


def cycles_for(faults_wanted: int) -> int:
    """At most this many cycles to inject `faults_wanted` faults (three quarters of the cycles
    plan one; a task kill planned for a task that already ended misses)."""
    return 3 * faults_wanted + 10


def run_chaos(objective: Path, faults_wanted: int, seed: int, max_cycles: int = 0) -> Faults:
    """Run cycles of `objective` until `faults_wanted` faults were injected (and survived);
    the objective's `budget.max_cycles` must allow `cycles_for(faults_wanted)`."""
    max_cycles = max_cycles or cycles_for(faults_wanted)
    rng = random.Random(seed)
    faults = Faults()
    fresh = True
    for _ in range(max_cycles):
        if faults.injected >= faults_wanted:
            break
        budget = faults_wanted - faults.injected
        outcome = _attempt(
            _flow(objective, "run", *(["--fresh"] if fresh else [])), rng, faults, budget
        )
        fresh = False
        while outcome in ("killed", "failed"):
            faults.resumes += 1
            outcome = _attempt(
                _flow(objective, "resume"), rng, faults, faults_wanted - faults.injected
            )
            if outcome == "failed":  # killed before anything could be resumed: start anew
                faults.restarts += 1
                outcome = _attempt(_flow(objective, "run"), rng, faults, 0)
        assert outcome == "done"
    return faults


def check_search(objective_name: str) -> dict[str, Any]:
    """The invariants: every proposed trial recorded exactly once with a status, history
    append-only across the successful cycles, trial ids unique, the champion a recorded trial,
    one successful cycle per cycle number."""
    from metaflow import Flow, namespace

    namespace(None)
    runs = [r for r in Flow("CycleFlow").runs(f"objective:{objective_name}") if r.successful]
    ends = sorted((r["end"].task.data for r in runs), key=lambda d: d.cycle)
    cycles = [d.cycle for d in ends]
    assert cycles == list(range(1, len(ends) + 1)), f"cycles forked or lost: {cycles}"
    previous: tuple[Any, ...] = ()
    for data in ends:
        proposed = sorted(p.trial_id for p in data.proposals)
        recorded = sorted(r.trial_id for r in data.records)
        assert proposed == recorded, f"cycle {data.cycle}: proposed {proposed}, recorded {recorded}"
        assert all(
            r.status in ("ok", "failed", "diverged", "timeout", "pruned") for r in data.records
        )
        assert tuple(data.history[: len(previous)]) == previous, (
            f"cycle {data.cycle} rewrote history"
        )
        previous = tuple(data.history)
    ids = [r.trial_id for r in previous]
    assert len(ids) == len(set(ids)), "a trial id was reused"
    champion = ends[-1].champion if ends else None
    assert champion is None or champion.trial_id in ids
    return {"cycles": len(ends), "trials": len(ids), "champion": champion and champion.trial_id}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--faults", type=int, default=50)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    os.environ.setdefault("METAFLOW_DATASTORE_SYSROOT_LOCAL", tempfile.mkdtemp(prefix="chaos-"))
    os.environ.setdefault("USERNAME", "factory-chaos")
    import yaml

    spec = yaml.safe_load((ROOT / "objectives" / "smoke.yaml").read_text())
    spec["name"] = "chaos"
    spec["budget"]["max_cycles"] = max(spec["budget"]["max_cycles"], cycles_for(args.faults))
    objective = Path(tempfile.mkdtemp(prefix="chaos-objective-")) / "chaos.yaml"
    objective.write_text(yaml.safe_dump(spec, sort_keys=False))
    started = time.monotonic()
    faults = run_chaos(objective, args.faults, args.seed)
    report = check_search("chaos")
    print("\n".join(faults.log))
    print(
        json.dumps(
            {
                **report,
                "faults_injected": faults.injected,
                "task_kills": faults.task_kills,
                "run_kills": faults.run_kills,
                "resumes": faults.resumes,
                "restarts": faults.restarts,
                "seconds": round(time.monotonic() - started),
                "seed": args.seed,
            }
        )
    )


if __name__ == "__main__":
    main()
