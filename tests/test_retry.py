"""A train task killed from outside is retried (@retry) and its trials are recorded once.

The flow runs for real; the test, as the harness, SIGKILLs the train task's process while its
first attempt stalls in `tests.builders:stalls_once` after finishing one trial.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.conftest import run_cycle, write_objective

pytestmark = pytest.mark.slow

EPOCHS = 3
POLL_S = 0.2
# Start-up, propose and one tiny trial come before the stall; the run is over long before this.
KILL_DEADLINE_S = 600.0


def _started_by_this_test(pid: int) -> bool:
    """Whether `pid` descends from this process (the flow runtime's task), read from /proc."""
    while pid > 1:
        if pid == os.getpid():
            return True
        stat = Path(f"/proc/{pid}/stat").read_text()
        pid = int(stat.rpartition(")")[2].split()[1])  # the parent's pid follows the state
    return False


def _kill_stalled_task(pidfile: Path, stop: threading.Event) -> int | None:
    """SIGKILL the process that writes `pidfile`; None if the run ends first."""
    deadline = time.monotonic() + KILL_DEADLINE_S
    while not stop.wait(POLL_S) and time.monotonic() < deadline:
        if pidfile.exists():
            pid = int(pidfile.read_text())
            assert _started_by_this_test(pid), f"pid {pid} is not a task of this test's run"
            os.kill(pid, signal.SIGKILL)
            return pid
    return None


def test_killed_train_task_is_retried_and_its_trials_recorded_once(tmp_path: Path) -> None:
    from metaflow import Task

    objective = write_objective(
        tmp_path,
        "flow-retry",
        model={"builder": "tests.builders:stalls_once"},
        # two train tasks, of 2 trials and 1
        budget={"trials_per_cycle": 3, "group_size": 2, "max_epochs": EPOCHS},
    )
    pidfile = tmp_path / "stalled.pid"
    stop = threading.Event()
    with ThreadPoolExecutor(max_workers=1) as pool:
        killer = pool.submit(_kill_stalled_task, pidfile, stop)
        try:
            run = run_cycle(objective, env={"FACTORY_TEST_PIDFILE": str(pidfile)}, fresh=True)
        finally:
            stop.set()
        killed = killer.result()
    assert killed is not None, "no train task stalled to be killed"

    # The killed task ran again and succeeded (not @catch's stand-in); its sibling ran once.
    train = list(run["train"])
    retried = [t for t in train if t.current_attempt > 0]
    assert len(train) == 2 and len(retried) == 1
    task = retried[0]
    assert task.successful and task.data.train_error is None
    assert sorted(m.value for m in task.metadata if m.name == "attempt") == ["0", "1"]
    assert len(task.data.group) == 2  # the task that stalls at its second build
    killed_attempt = Task(task.pathspec, attempt=0)  # it had trained one trial when killed
    last_epoch = f"[{task.data.group[0].trial_id}] epoch {EPOCHS}/{EPOCHS}"
    assert not killed_attempt.successful and last_epoch in killed_attempt.stdout

    # Every proposal is recorded once, trained: the trial the killed attempt had finished too.
    data = run["end"].task.data
    proposed = sorted(p.trial_id for p in data.proposals)
    assert len(proposed) == 3
    assert sorted(r.trial_id for r in data.records) == proposed
    assert {r.trial_id: r.status for r in data.records} == dict.fromkeys(proposed, "ok")
    assert sorted(r.trial_id for r in data.history) == proposed
    group = {p.trial_id for p in task.data.group}
    assert {r.result.task_pathspec for r in data.records if r.trial_id in group} == {task.pathspec}


def _kill_every_attempt(pidfile: Path, attempts: int, stop: threading.Event) -> list[int]:
    """SIGKILL each attempt of the task that writes `<pidfile>.<attempt>`, as it stalls."""
    killed: list[int] = []
    deadline = time.monotonic() + KILL_DEADLINE_S
    while len(killed) < attempts and not stop.wait(POLL_S) and time.monotonic() < deadline:
        written = Path(f"{pidfile}.{len(killed)}")
        if written.exists():
            pid = int(written.read_text())
            assert _started_by_this_test(pid), f"pid {pid} is not a task of this test's run"
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
    return killed


def test_a_task_killed_past_its_retries_is_a_record_and_the_search_goes_on(
    tmp_path: Path,
) -> None:
    """Its stand-in never set `group`: the join crashed and the cycle's finished trials were
    lost, and the configuration came back in every later cycle."""
    objective = write_objective(
        tmp_path,
        "flow-dies",
        model={"builder": "tests.builders:dies"},
        search_space={"behaviour": {"type": "categorical", "choices": ["ok", "die"]}},
        budget={"trials_per_cycle": 2, "group_size": 1, "max_epochs": 2},
        proposers={"enqueue": [{"behaviour": "die"}, {"behaviour": "ok"}]},
    )
    pidfile = tmp_path / "dies.pid"
    stop = threading.Event()
    with ThreadPoolExecutor(max_workers=1) as pool:
        killer = pool.submit(_kill_every_attempt, pidfile, 3, stop)  # 1 + TASK_RETRIES
        try:
            first = run_cycle(objective, env={"FACTORY_TEST_PIDFILE": str(pidfile)}, fresh=True)
        finally:
            stop.set()
        assert len(killer.result()) == 3

    data = first["end"].task.data
    by_behaviour = {r.proposal.params["behaviour"]: r for r in data.records}
    assert by_behaviour["ok"].status == "ok"  # the sibling task's trial is kept
    died = by_behaviour["die"]
    assert died.status == "failed"
    assert "killed by signal 9" in died.result.cause and "attempts 0, 1, 2" in died.result.cause

    # Without the pid file a `die` trial trains like any other: one that Optuna proposes in
    # cycle 2 would otherwise stall a minute in its train task and again when re-measured.
    second = run_cycle(objective)
    later = second["end"].task.data
    assert later.cycle == 2
    assert died.trial_id in {r.trial_id for r in later.history}  # kept, append-only
    assert all(p.params != died.proposal.params for p in later.proposals)  # not proposed again
