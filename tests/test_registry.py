"""The registry: a promotion log, any version loadable, rollback and approval as events."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from factory_lib.cycle.plan import plan_cycle
from factory_lib.objective import load_objective
from factory_lib.registry.events import events_from_tags
from factory_lib.runs.champions import load_champion, load_version, versions
from tests.conftest import factory_cli, run_cycle, write_objective

WEAK = {"lr": 0.001, "width": 4, "depth": 1}
STRONG = {"lr": 0.08, "width": 32, "depth": 2}


def _factory(*args: str) -> subprocess.CompletedProcess[str]:
    proc = factory_cli(*args)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


def test_tags_parse_into_events_in_time_order() -> None:
    tags = [
        "registry:rollback:c001-t00:20261126T051900Z:ana:bad on new data",
        "objective:x",
        "registry:approved:c003-t01:20261126T041900Z:bo:",
        "registry:unknown:c1:20261126T041900Z:bo:",
    ]
    events = events_from_tags(tags, "CycleFlow/1")
    assert [(e.kind, e.trial_id, e.actor) for e in events] == [
        ("approved", "c003-t01", "bo"),
        ("rollback", "c001-t00", "ana"),
    ]
    assert events[1].reason == "bad on new data"


@pytest.mark.slow
def test_rollback_is_an_event_and_the_next_cycle_starts_from_it(tmp_path: Path) -> None:
    objective = write_objective(
        tmp_path,
        "registry",
        budget={"trials_per_cycle": 1},
        proposers={"enqueue": [WEAK, STRONG, {**STRONG, "lr": 0.05}]},
    )
    run_cycle(objective, fresh=True)
    second = run_cycle(objective)["end"].task.data
    assert second.decision.status == "promoted", second.decision.reason
    assert load_champion("registry").package.trial_id == "c002-t00"

    _factory(
        "rollback",
        "--objective",
        "registry",
        "--to",
        "c001-t00",
        "--reason",
        "regressed in production",
    )
    assert load_champion("registry").package.trial_id == "c001-t00"
    assert load_version("registry", "c002-t00").package.trial_id == "c002-t00"  # still loadable
    log = versions("registry")
    assert [(e.kind, e.trial_id) for e in log] == [
        ("promoted", "c001-t00"),
        ("promoted", "c002-t00"),
        ("rollback", "c001-t00"),
    ]
    assert log[-1].reason == "regressed in production"
    # What the next cycle's start step plans from (the same call, without running the cycle).
    plan = plan_cycle(load_objective(objective), "CycleFlow", run_id=None)
    assert plan.cycle == 3
    assert plan.history == second.history  # history untouched by the rollback
    assert plan.champion.trial_id == "c001-t00"  # the next cycle starts from it
    assert "rollback" in _factory("versions", "--objective", "registry").stdout


@pytest.mark.slow
def test_a_promotion_can_wait_for_approval(tmp_path: Path) -> None:
    objective = write_objective(tmp_path, "registry-approval", promotion={"require_approval": True})
    data = run_cycle(objective, fresh=True)["end"].task.data
    assert data.decision.status == "pending" and data.champion is None
    assert data.pending is not None and data.pending.model_card is not None
    with pytest.raises(LookupError):
        load_champion("registry-approval")
    out = _factory("approve", "--objective", "registry-approval", "--reason", "looks right").stdout
    assert out.startswith(f"approved {data.pending.champion.trial_id}")
    assert load_champion("registry-approval").package.trial_id == data.pending.champion.trial_id
    assert [e.kind for e in versions("registry-approval")] == ["pending", "approved"]
