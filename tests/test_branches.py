"""Searches that stay apart: an objective on a branch of the flow's @project.

One module fixture runs real cycles of one objective, in this order: a cycle of the code from
before branches (a run without a branch), adopted into this user's branch; then this user's
cycle, a quick try on its own branch, another user's cycle, this user's next cycle and a first
production cycle. Each later one is newer than the earlier ones, so a chain that looked at the
objective alone would have continued from the wrong parent every time.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest

from factory_lib.registry import utc_stamp
from factory_lib.runs import load_champion, versions
from factory_lib.runs.client import (
    branch_name,
    branch_of,
    flow_command,
    flow_options,
    latest_cycle,
)
from factory_lib.runs.lease import BranchMoved, check_branch
from tests.conftest import ROOT, factory_cli, run_cycle, write_objective

NAME = "branches-test"
# The last commit before branches: its flow has no @project and chains by objective alone.
BEFORE_BRANCHES = "73f899c"
BOB = {"METAFLOW_USER": "bob"}


# ---------------------------------------------------------------------------------------------
# Names


def test_branch_names_follow_the_flows_own_options() -> None:
    me = branch_name()
    assert me.startswith("user.")
    assert branch_name("quick_try") == "test.quick_try"
    assert branch_name(production=True) == "prod"
    assert branch_name("eu", production=True) == "prod.eu"
    assert branch_name("user.alice") == "user.alice"  # a full name is taken as it is
    with pytest.raises(ValueError, match="lowercase alphanumeric"):
        branch_name("Quick-Try")
    with pytest.raises(ValueError, match="leave out --production"):
        branch_name("test.x", production=True)
    assert flow_options("prod.eu") == {"production": True, "branch": "eu"}
    assert flow_options("test.quick_try") == {"branch": "quick_try"}
    assert flow_options(me) == {}
    assert flow_command("prod", "resume") == "python flows/cycle.py --production resume"


def test_a_run_resumed_on_another_branch_is_refused() -> None:
    check_branch("test.quick_try", "test.quick_try", "CycleFlow/1")
    check_branch(None, "user.alice", "CycleFlow/1")  # planned before branches
    with pytest.raises(BranchMoved) as refused:
        check_branch("test.quick_try", "user.alice", "CycleFlow/1")
    assert "python flows/cycle.py --branch quick_try resume" in str(refused.value)


# ---------------------------------------------------------------------------------------------
# Real cycles on branches


@dataclass(frozen=True)
class Branches:
    old: Any  # metaflow.Run of the code from before branches
    status_before_adopt: subprocess.CompletedProcess[str]
    adopted: subprocess.CompletedProcess[str]
    adopted_again: subprocess.CompletedProcess[str]
    mine: Any  # this user's first cycle since branches
    quick: Any
    bobs: Any
    mine_next: Any
    prod: Any


def _run_before_branches(objective: Path, tmp: Path, datastore: str) -> str:
    """One cycle of the code from before branches (its flow and factory_lib, from git); its id."""
    archive = subprocess.run(
        ["git", "archive", BEFORE_BRANCHES, "flows", "factory_lib"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(tmp / "old", filter="data")
    old_flow = str(tmp / "old" / "flows" / "cycle.py")
    proc = subprocess.run(
        [sys.executable, old_flow, "--config", "objective", str(objective), "run", "--trials", "2"],
        cwd=datastore,
        env={**os.environ, "PYTHONPATH": str(tmp / "old")},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "on user." not in proc.stdout + proc.stderr  # the old code: no branch anywhere
    return next(
        line.split("(run-id ")[1].split(")")[0]
        for line in (proc.stdout + proc.stderr).splitlines()
        if "(run-id " in line
    )


@pytest.fixture(scope="module")
def branches(tmp_path_factory: pytest.TempPathFactory, datastore: str) -> Branches:
    from metaflow import Run, namespace

    tmp = tmp_path_factory.mktemp("branches")
    objective = write_objective(tmp, NAME)
    old_id = _run_before_branches(objective, tmp, datastore)
    status = factory_cli("status", "--objective", NAME)
    adopted = factory_cli("adopt", "--objective", NAME)
    again = factory_cli("adopt", "--objective", NAME)
    mine = run_cycle(objective, trials=2)
    quick = run_cycle(objective, branch="quick_try", trials=2)
    bobs = run_cycle(objective, env=BOB, trials=2)
    mine_next = run_cycle(objective, trials=2)
    # one epoch: a model of its own (the same trial of a fresh search trains the same weights)
    prod = run_cycle(objective, production=True, trials=2, epochs=1)
    namespace(None)
    return Branches(
        Run(f"CycleFlow/{old_id}"), status, adopted, again, mine, quick, bobs, mine_next, prod
    )


def _parent(run: Any) -> str | None:
    previous = run["start"].task["plan"].data.previous
    return previous.run_pathspec if previous else None


def _cycle(run: Any) -> int:
    return int(run["end"].task["cycle"].data)


def _champion_weights(run: Any) -> str:
    return str(run["end"].task["champion_package"].data.weights_sha)


@pytest.mark.slow
def test_runs_from_before_branches_are_adopted_and_chain_on(branches: Branches) -> None:
    old = branches.old
    assert f"objective:{NAME}" in old.tags  # a cycle of the objective, on no branch:
    assert not any(t.startswith("project_branch:") for t in old.system_tags)
    # before adoption the search on this branch is empty, and says what to do
    said = branches.status_before_adopt.stderr
    assert branches.status_before_adopt.returncode == 1
    assert f"has no successful cycle on branch {branch_name()} yet" in said
    assert f"runs from before branches: `factory adopt --objective {NAME}`" in said
    assert branches.adopted.returncode == 0, branches.adopted.stderr
    assert f"adopted into {branch_name()}; its next cycle continues from {old.pathspec}" in (
        branches.adopted.stdout
    )
    assert branch_of(old) == branch_name()
    assert any(t.startswith(f"adopted:{branch_name()}:") for t in old.user_tags)
    assert "no runs from before branches left to adopt" in branches.adopted_again.stderr
    # the history written before branches goes on, numbers and records included
    mine = branches.mine
    assert _parent(mine) == old.pathspec and _cycle(mine) == 2
    history = mine["end"].task["history"].data
    assert [r.proposal.trial_id for r in history[:2]] == ["c001-t00", "c001-t01"]
    assert len(history) == 4


@pytest.mark.slow
def test_a_quick_try_and_another_users_cycles_never_become_the_parent(
    branches: Branches,
) -> None:
    b = branches
    assert b.mine.created_at < b.quick.created_at < b.bobs.created_at < b.mine_next.created_at
    assert branch_of(b.quick) == "test.quick_try" and branch_of(b.bobs) == "user.bob"
    # each began its own search, though newer cycles of the objective existed
    assert (_parent(b.quick), _cycle(b.quick)) == (None, 1)
    assert (_parent(b.bobs), _cycle(b.bobs)) == (None, 1)
    assert (_parent(b.prod), _cycle(b.prod)) == (None, 1)
    # this user's next cycle continued from this user's last one, past the quick try and bob's
    assert (_parent(b.mine_next), _cycle(b.mine_next)) == (b.mine.pathspec, 3)
    start = b.mine_next["start"].task.stdout
    assert f"{NAME} on {branch_name()}: cycle 3, 4 earlier trials" in start
    # and each reader reads its own branch
    mine = json.loads(factory_cli("status", "--objective", NAME, "--json").stdout)
    assert [c["cycle"] for c in mine["cycles"]] == [1, 2, 3] and mine["branch"] == branch_name()
    assert [c["run_id"] for c in mine["cycles"]] == [b.old.id, b.mine.id, b.mine_next.id]
    bob = factory_cli("status", "--objective", NAME, "--branch", "user.bob", "--json")
    assert [c["run_id"] for c in json.loads(bob.stdout)["cycles"]] == [b.bobs.id]
    quick = factory_cli("status", "--objective", NAME, "--branch", "quick_try", "--json")
    assert [c["run_id"] for c in json.loads(quick.stdout)["cycles"]] == [b.quick.id]
    assert load_champion(NAME).package.weights_sha == _champion_weights(b.mine_next)
    assert load_champion(NAME, "user.bob").package.weights_sha == _champion_weights(b.bobs)


@pytest.mark.slow
def test_production_changes_champion_only_by_an_explicit_promotion(branches: Branches) -> None:
    b = branches
    prod_own = _champion_weights(b.prod)
    assert prod_own != _champion_weights(b.mine_next)
    assert load_champion(NAME, "prod").package.weights_sha == prod_own  # its own, until promoted
    unreasoned = factory_cli("promote", "--objective", NAME, "--reason", " ")
    assert unreasoned.returncode == 1 and "give a --reason" in unreasoned.stderr
    carol = {"METAFLOW_USER": "carol"}
    promote = ("promote", "--objective", NAME, "--branch", branch_name(), "--reason", "beats prod")
    promoted = factory_cli(*promote, env=carol)
    assert promoted.returncode == 0, promoted.stderr
    mine = b.mine_next["end"].task["champion"].data.trial_id
    assert f"{mine} of {branch_name()} is now the champion of prod, approved by carol" in (
        promoted.stdout
    )
    # recorded in production's promotion log, with who approved it and why
    event = versions(NAME, "prod")[-1]
    assert (event.kind, event.trial_id, event.branch, event.actor, event.reason) == (
        "promoted_from",
        mine,
        branch_name(),
        "carol",
        "beats prod",
    )
    assert event.run == b.prod.pathspec and event.at <= utc_stamp()
    log = factory_cli("versions", "--objective", NAME, "--production").stdout
    assert f"promoted_from {mine}@{branch_name()} carol" in log
    # production's champion is now this branch's, and its next cycle starts from it
    assert load_champion(NAME, "prod").package.weights_sha == _champion_weights(b.mine_next)
    state = latest_cycle("CycleFlow", NAME, branch="prod")
    assert state is not None and state.bundle is not None
    assert state.bundle.package.weights_sha == _champion_weights(b.mine_next)
    # the branch it came from is untouched
    assert load_champion(NAME).package.weights_sha == _champion_weights(b.mine_next)
    again = factory_cli("promote", "--objective", NAME, "--reason", "twice")
    assert again.returncode == 0, again.stderr
    assert "is the champion of prod already: nothing recorded" in again.stdout
    assert versions(NAME, "prod")[-1] == event


# ---------------------------------------------------------------------------------------------
# One datastore, wherever you stand


@pytest.mark.slow
def test_the_search_is_found_from_any_folder_of_the_project(
    branches: Branches, tmp_path: Path, datastore: str
) -> None:
    project = tmp_path / "project"
    (project / "objectives" / "mine").mkdir(parents=True)
    (project / ".metaflow").symlink_to(Path(datastore) / ".metaflow")
    env = {k: v for k, v in os.environ.items() if k != "METAFLOW_DATASTORE_SYSROOT_LOCAL"}
    champion = "from factory_lib.runs import load_champion; "
    champion += f"print(load_champion({NAME!r}).package.weights_sha)"
    expected = [b.id for b in (branches.old, branches.mine, branches.mine_next)]
    for where in (project, project / "objectives" / "mine"):
        status = _cli_in(where, env, "status", "--objective", NAME, "--json")
        assert [c["run_id"] for c in json.loads(status.stdout)["cycles"]] == expected
        loaded = subprocess.run(
            [sys.executable, "-c", champion], cwd=where, env=env, capture_output=True, text=True
        )
        assert loaded.stdout.strip() == _champion_weights(branches.mine_next), loaded.stderr
    # outside the project: the repository's own datastore, and the message says where it looked
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    lost = _cli_in(outside, env, "status", "--objective", NAME)
    assert lost.returncode == 1
    assert (
        f"Looked in the local datastore {ROOT / '.metaflow'} (the repository root: no .metaflow "
        f"above {outside})"
    ) in lost.stderr
    assert "METAFLOW_DATASTORE_SYSROOT_LOCAL=<the folder that holds .metaflow>" in lost.stderr
    # pointed at it, from anywhere
    pointed = {**env, "METAFLOW_DATASTORE_SYSROOT_LOCAL": str(project)}
    found = _cli_in(outside, pointed, "status", "--objective", NAME, "--json")
    assert [c["run_id"] for c in json.loads(found.stdout)["cycles"]] == expected


def _cli_in(where: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "factory_lib.ops.cli", *args],
        cwd=where,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
