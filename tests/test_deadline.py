"""Every trial has a hard deadline, from building its model to the end of its evaluation.

Trials planted by `tests.builders:planted` get stuck where the trial's own check between
batches never runs (a forward pass or a model build blocked in a C call), die as the
out-of-memory killer would kill them, or take their time in the sealed evaluation. The group
around them must record each within the deadline and a bounded grace, keep what finished, and
give the next trial a budget of its own.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import Any

import pytest

from factory_lib.data.module import build_trial_data
from factory_lib.objective import Objective, load_objective
from factory_lib.propose.base import make_proposal
from factory_lib.records import Proposal
from factory_lib.train.group import train_group
from factory_lib.train.supervisor import grace_s, start_method
from factory_lib.train.trial import run_trial
from tests.conftest import ROOT, run_cycle, write_objective

SMOKE = load_objective(ROOT / "objectives" / "smoke.yaml")
TIMEOUT_S = 5.0
# The supervisor notices a trial past its deadline within this much (it waits on the pipe
# with the deadline as its timeout): slack on an assertion, not a measurement.
NOTICE_S = 1.0
# Seconds per training batch of the trial after a stuck one: about 9 batches, half its budget.
STEADY_STEP_S = 0.25
# One torch thread per task, so the worker is forked: the test pays no interpreter start-up.
FORKED = os.cpu_count() or 1


def _planted(timeout_s: float) -> Objective:
    return SMOKE.model_copy(
        update={
            "model": SMOKE.model.model_copy(update={"builder": "tests.builders:planted"}),
            "budget": SMOKE.budget.model_copy(update={"trial_timeout_s": timeout_s}),
        }
    )


def _proposals(objective: Objective, *params: dict[str, Any]) -> list[Proposal]:
    return [make_proposal(objective, 1, i, i, p, "test", "") for i, p in enumerate(params)]


def _killed_after(cause: str) -> float:
    found = re.search(r"killed ([\d.]+) s after it started", cause)
    assert found, cause
    return float(found[1])


def test_stuck_trials_are_timeouts_within_the_grace_and_the_next_gets_its_full_budget(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pidfile = tmp_path / "stuck.pid"
    monkeypatch.setenv("FACTORY_TEST_PIDFILE", str(pidfile))
    objective = _planted(TIMEOUT_S)
    proposals = _proposals(
        objective,
        {"behaviour": "stuck"},  # its forward pass blocks in a C call
        {"step_s": STEADY_STEP_S},  # needs a good part of a budget of its own
        {"behaviour": "stuck_build"},  # its model never finishes building
        {},
    )
    assert start_method(1) == "fork"
    started = time.monotonic()
    outputs = train_group(objective, proposals, concurrent_tasks=FORKED)
    elapsed = time.monotonic() - started

    assert [o.result.status for o in outputs] == ["timeout", "ok", "timeout", "ok"]
    bound = TIMEOUT_S + grace_s(TIMEOUT_S) + NOTICE_S
    for stuck in (outputs[0].result, outputs[2].result):
        assert TIMEOUT_S < _killed_after(stuck.cause) <= bound
        assert f"trial_timeout_s ({TIMEOUT_S:g} s)" in stuck.cause
        assert stuck.evaluation is None and stuck.started_at > 0
    steady = outputs[1].result
    assert steady.evaluation is not None
    assert steady.evaluation.train_seconds > TIMEOUT_S / 3  # it could not have shared a budget
    assert all(o.weights is not None for o in (outputs[1], outputs[3]))
    assert elapsed < 2 * bound + TIMEOUT_S * 2  # two kills, two trials within their budgets
    stuck_pid = int(pidfile.read_text())
    assert stuck_pid != os.getpid() and not Path(f"/proc/{stuck_pid}").exists()  # killed


def test_a_worker_killed_from_outside_fails_its_trial_and_the_group_goes_on() -> None:
    """The out-of-memory killer (or a crash in native code) ends the worker, not the task."""
    objective = _planted(TIMEOUT_S)
    proposals = _proposals(objective, {}, {"behaviour": "killed"}, {})
    outputs = train_group(objective, proposals, concurrent_tasks=FORKED)
    assert [o.result.status for o in outputs] == ["ok", "failed", "ok"]
    assert "worker process died (killed by signal 9)" in outputs[1].result.cause


def test_a_slow_sealed_evaluation_past_the_deadline_is_a_timeout_not_ok() -> None:
    """Ten evaluation calls of 0.5 s each: the trial ends past a 3 s deadline, if after it
    trained within it. In the trial's own process, no worker: its own check sees it. (On a
    machine so busy that training itself passes the deadline, it is a timeout all the same.)"""
    objective = _planted(3.0)
    (slow,) = _proposals(objective, {"eval_s": 0.5})
    result = run_trial(objective, slow, build_trial_data(objective)).result
    assert result.status == "timeout", result.cause
    if len(result.curve) == objective.budget.max_epochs:  # it trained: passed in evaluation
        assert "by the end of its evaluation" in result.cause


def test_without_isolation_the_group_trains_in_this_process() -> None:
    objective = _planted(TIMEOUT_S)
    objective = objective.model_copy(
        update={"budget": objective.budget.model_copy(update={"isolate": False})}
    )
    proposals = _proposals(objective, {"behaviour": "hang"}, {})  # slow in Python: checked
    outputs = train_group(objective, proposals, concurrent_tasks=FORKED)
    assert [o.result.status for o in outputs] == ["timeout", "ok"]
    assert "killed" not in outputs[0].result.cause


@pytest.mark.slow
def test_a_flow_records_a_stuck_trial_as_timeout_and_trains_the_rest(tmp_path: Path) -> None:
    """One train task of both trials, in a real cycle. The task has the machine's cores to
    itself, so its worker is spawned (on one core, forked)."""
    objective = write_objective(
        tmp_path,
        "flow-deadline",
        model={"builder": "tests.builders:planted"},
        search_space={"behaviour": {"type": "categorical", "choices": ["ok", "stuck"]}},
        budget={"trials_per_cycle": 2, "group_size": 2, "trial_timeout_s": TIMEOUT_S},
        proposers={"enqueue": [{"behaviour": "stuck"}, {"behaviour": "ok"}]},
    )
    run = run_cycle(objective, fresh=True)
    (task,) = run["train"]
    assert task.successful and task.data.train_error is None
    records = {r.proposal.params["behaviour"]: r for r in run["end"].task.data.records}
    assert records["ok"].status == "ok"
    stuck = records["stuck"].result
    assert stuck.status == "timeout"
    assert TIMEOUT_S < _killed_after(stuck.cause) <= TIMEOUT_S + grace_s(TIMEOUT_S) + NOTICE_S
    assert stuck.task_pathspec == task.pathspec
