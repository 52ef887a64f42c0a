"""Nothing lost when things break: one cycle at a time per search, and a damaged cycle named.

The flow tests break real runs the way machines and people do (a runtime killed, an old run
resumed, an end step's folder removed, a blob truncated or emptied, a read-only disk) and
assert on what the next cycle says and does; the lease's rules are unit-tested on real files
and on the S3 API of the moto server (tests/aws.py).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from factory_lib.cycle.plan import plan_cycle
from factory_lib.objective import load_objective
from factory_lib.runs.client import DamagedRunError, branch_name, latest_cycle
from factory_lib.runs.lease import (
    Datastore,
    DatastoreError,
    Lease,
    lease_ttl_s,
    release_lease,
    stale_reason,
    take_lease,
)
from tests.aws import Aws
from tests.conftest import FLOW, ROOT, factory_cli, run_cycle, write_objective

SMOKE = load_objective(ROOT / "objectives" / "smoke.yaml")


def _lease_file(root: str | Path, objective: str) -> Path:
    """The lease of the objective's search on this user's own branch."""
    return Path(root) / "CycleFlow" / "_leases" / f"{objective}@{branch_name()}.json"


# ---------------------------------------------------------------------------------------------
# Two cycles at once


def test_a_stale_lease_is_taken_over_and_only_its_own_is_given_back(tmp_path: Path) -> None:
    store = Datastore("local", str(tmp_path))
    first, notices = take_lease(SMOKE, "CycleFlow/1", store)
    assert first is not None and notices == ()
    held = Lease.model_validate_json(_lease_file(tmp_path, "smoke").read_text())
    assert (held.run, held.host, held.pid, held.token) == (
        "CycleFlow/1",
        first.host,
        os.getppid(),
        first.token,
    )
    assert held.expires_at - held.taken_at == timedelta(seconds=lease_ttl_s(SMOKE))
    assert lease_ttl_s(SMOKE) == (3 + 1) * 120 + 3600  # (trials + seeds) × trial timeout + 1 h

    # Metaflow knows no run CycleFlow/1: its lease protects nothing and is taken over, saying so
    second, notices = take_lease(SMOKE, "CycleFlow/2", store)
    assert second is not None
    assert notices == (
        f"took over the lease of {first.describe()}: Metaflow does not know CycleFlow/1",
    )
    assert release_lease(first) == ("the lease of 'smoke' is now CycleFlow/2's: left as it is",)
    assert _lease_file(tmp_path, "smoke").exists()
    assert release_lease(second) == ()
    assert not _lease_file(tmp_path, "smoke").exists()


def test_a_lease_goes_stale_by_time_by_a_dead_runtime_or_a_finished_run() -> None:
    now = datetime.now(UTC)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lease = Lease(
        objective="smoke",
        run="CycleFlow/1",
        user="u",
        host="here",
        pid=os.getpid(),
        taken_at=now,
        expires_at=now + timedelta(hours=1),
        token="t",
        where="/nowhere",
    )

    def running(run: str) -> str | None:
        return None

    assert stale_reason(lease, now, "here", running) is None
    assert stale_reason(lease, now + timedelta(hours=2), "here", running).startswith("it expired")
    gone = lease.model_copy(update={"pid": dead.pid})
    assert (
        stale_reason(gone, now, "here", running) == f"its runtime (pid {dead.pid} on here) is gone"
    )
    assert stale_reason(gone, now, "elsewhere", running) is None  # a pid of another machine
    finished = stale_reason(lease, now, "here", lambda run: f"{run} has finished")
    assert finished == "CycleFlow/1 has finished"


def test_factory_unlock_removes_a_lease_and_says_whose(datastore: str) -> None:
    lease, _ = take_lease(SMOKE, "CycleFlow/12", Datastore("local", f"{datastore}/.metaflow"))
    assert lease is not None
    out = factory_cli("unlock", "smoke")
    assert out.returncode == 0, out.stderr
    search = f"smoke on {branch_name()}"
    assert out.stdout.startswith(f"{search}: removed the lease of {lease.describe()}")
    assert not _lease_file(f"{datastore}/.metaflow", "smoke").exists()
    assert factory_cli("unlock", "smoke").stdout == f"{search}: no lease held\n"


def test_the_lease_on_s3_is_a_conditional_put(aws: Aws, monkeypatch: pytest.MonkeyPatch) -> None:
    from botocore.exceptions import ClientError

    for key, value in aws.env.items():
        monkeypatch.setenv(key, value)
    s3 = aws.client("s3")
    s3.create_bucket(Bucket="leases")
    store = Datastore("s3", "s3://leases/metaflow")
    first, notices = take_lease(SMOKE, "CycleFlow/1", store)
    assert first is not None and notices == ()
    key = f"metaflow/CycleFlow/_leases/smoke@{branch_name()}.json"
    assert first.where == f"s3://leases/{key}"
    # the server refuses a second create: the lease cannot be taken twice at once
    with pytest.raises(ClientError, match="PreconditionFailed"):
        s3.put_object(Bucket="leases", Key=key, Body=b"{}", IfNoneMatch="*")
    second, notices = take_lease(SMOKE, "CycleFlow/2", store)  # CycleFlow/1 is unknown: stale
    assert second is not None and "took over the lease of CycleFlow/1" in notices[0]
    assert release_lease(first) == ("the lease of 'smoke' is now CycleFlow/2's: left as it is",)
    assert release_lease(second) == ()
    assert s3.list_objects_v2(Bucket="leases", Prefix=key)["KeyCount"] == 0


@dataclass(frozen=True)
class _Race:
    """Two cycles started together, and what came after: the runs the slow tests share."""

    objective: Path
    crashed: str  # the id of the cycle that held the lease, then died
    refused: subprocess.CompletedProcess[str]  # the cycle started while it held the lease
    after: Any  # metaflow.Run: the next cycle, which took the stale lease over
    resumed: Any  # metaflow.Run: the crashed cycle resumed after that one had finished


@pytest.fixture(scope="module")
def race(tmp_path_factory: pytest.TempPathFactory) -> _Race:
    from metaflow import Runner

    objective = write_objective(
        tmp_path_factory.mktemp("race"), "breakage", budget={"trials_per_cycle": 1}
    )
    command = [sys.executable, FLOW, "--config", "objective", str(objective), "run"]
    # A cycle holds the lease: stopped (SIGSTOP) as soon as its start step has finished.
    with subprocess.Popen(
        [*command, "--max-workers", "1"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    ) as first:
        assert first.stdout is not None
        run_id = ""
        for line in first.stdout:
            found = re.search(r"\(run-id (\w+)\)", line)
            run_id = found[1] if found else run_id
            if "/start/" in line and "Task finished successfully" in line:
                break
        os.killpg(first.pid, signal.SIGSTOP)
        try:
            refused = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
        finally:
            os.killpg(first.pid, signal.SIGKILL)  # then it dies, as on a crashed machine
            first.wait(timeout=60)
    after = run_cycle(objective)
    with Runner(FLOW, show_output=False, cwd=str(ROOT)).resume(origin_run_id=run_id) as running:
        resumed = running.run
    return _Race(objective, run_id, refused, after, resumed)


@pytest.mark.slow
def test_two_cycles_at_once_refuse_and_an_overtaken_resume_stops(
    race: _Race, datastore: str
) -> None:
    # The second cycle refused at its start, naming the running one and what to do.
    assert race.refused.returncode != 0
    said = race.refused.stdout + race.refused.stderr
    on = branch_name()
    assert (
        f"'breakage' is already running a cycle on branch {on}: CycleFlow/{race.crashed} (" in said
    )
    assert f"factory unlock breakage --branch {on}" in said and "FACTORY_BREAK_LEASE=1" in said

    # The dead cycle's runtime is gone: the next cycle took its lease over and gave it back.
    assert f"took over the lease of CycleFlow/{race.crashed}" in race.after["start"].task.stdout
    assert race.after["end"].task.data.cycle == 1
    assert not _lease_file(f"{datastore}/.metaflow", "breakage").exists()

    # Resuming the dead cycle after that would fork the search: its join refused, naming why.
    assert not race.resumed.successful
    join = race.resumed["join"].task
    assert f"but {race.after.pathspec} has finished since" in join.stderr
    assert "FACTORY_ALLOW_SUPERSEDED=1" in join.stderr


# ---------------------------------------------------------------------------------------------
# A damaged run


@contextlib.contextmanager
def _damaged(
    datastore: str, task: Any, artifact: str, damage: Callable[[bytes], bytes]
) -> Iterator[None]:
    """An artifact's bytes damaged in the local datastore (content-addressed by their sha), and
    the copy the Client keeps in its cache dropped, as on a machine that never read them."""
    from metaflow.metaflow_config import CLIENT_CACHE_PATH

    sha = task[artifact].sha
    for cached in Path(CLIENT_CACHE_PATH).glob(f"*/{sha[:2]}/{sha}.blob"):
        cached.unlink()
    blob = Path(datastore) / ".metaflow" / "CycleFlow" / "data" / sha[:2] / sha
    whole = blob.read_bytes()
    blob.write_bytes(damage(whole))
    try:
        yield
    finally:
        blob.write_bytes(whole)


@pytest.mark.slow
def test_a_damaged_cycle_is_named_and_the_search_continues_from_the_last_good_one(
    race: _Race, datastore: str
) -> None:
    # the search goes on from the cycle that took the lease over (run after the test above)
    objective, first = race.objective, race.after
    second = run_cycle(objective)
    assert latest_cycle("CycleFlow", "breakage").run_pathspec == second.pathspec
    spec = load_objective(objective)
    way_on = f"python flows/cycle.py run --from-run {first.id}"

    # a truncated history blob: the run and the artifact named, and how to go on
    with (
        _damaged(datastore, second["end"].task, "history", lambda b: b[: len(b) // 2]),
        pytest.raises(DamagedRunError) as damaged,
    ):
        plan_cycle(spec, "CycleFlow", run_id=None)
    said = str(damaged.value)
    assert said.startswith(f"{second.pathspec} cannot be continued from: its artifact 'history'")
    assert f"last good cycle, {first.pathspec} (cycle 1): {way_on}" in said

    # an emptied champion_package blob
    with (
        _damaged(datastore, second["end"].task, "champion_package", lambda b: b""),
        pytest.raises(DamagedRunError) as damaged,
    ):
        latest_cycle("CycleFlow", "breakage")
    assert str(damaged.value).startswith(
        f"{second.pathspec} cannot be continued from: its artifact 'champion_package' cannot be "
        "read (EOFError"
    )

    # the end step's folder removed: no longer successful, still the newest cycle of the search
    shutil.rmtree(Path(datastore) / ".metaflow" / "CycleFlow" / second.id / "end")
    with pytest.raises(DamagedRunError) as damaged:
        plan_cycle(spec, "CycleFlow", run_id=None)
    said = str(damaged.value)
    assert said.startswith(f"{second.pathspec} cannot be continued from: it is tagged")
    assert "its end step is missing" in said and way_on in said

    # --from-run continues from the first; numbering goes on after the damaged second's trials
    third = run_cycle(objective, from_run=first.id)
    data = third["end"].task.data
    skipped = second["start"].task.data.proposals
    assert data.cycle == 3
    assert data.history[:1] == first["end"].task.data.history
    assert [r.proposal.number for r in data.history] == [0, 2]  # 1: the second's trial
    assert {r.trial_id for r in data.history}.isdisjoint(p.trial_id for p in skipped)
    assert f"--from-run {first.id}: continuing from {first.pathspec}" in third["start"].task.stdout


def test_a_read_only_datastore_is_one_clear_message(tmp_path: Path) -> None:
    root = tmp_path / "datastore"
    store = root / ".metaflow"
    store.mkdir(parents=True)
    with _read_only(store):
        run = _run_flow(root, write_objective(tmp_path, "ro"))
        # and the lease, written by the start step, says the same should a write fail there
        with pytest.raises(DatastoreError, match=f"cannot write to the datastore at {store}/"):
            take_lease(SMOKE, "CycleFlow/1", Datastore("local", str(store)))
    assert run.returncode == 1
    assert run.stdout == ""
    assert run.stderr.startswith(f"factory: cannot write to the datastore at {store}: ")
    assert run.stderr.count("\n") == 1 and "Nothing was started." in run.stderr


def test_a_full_datastore_is_one_clear_message(tmp_path: Path) -> None:
    """A datastore on a full file system (a 256 KiB tmpfs, filled, in a private mount
    namespace) refuses the run before it starts, naming the path and the disk being full."""
    root = tmp_path / "datastore"
    root.mkdir()
    store = root / ".metaflow"
    objective = write_objective(tmp_path, "full")
    fill = (
        f"mount -t tmpfs -o size=256k tmpfs {root} && mkdir {store} && "
        f'(head -c 1048576 /dev/zero > {root}/fill 2>/dev/null; true) && exec "$@"'
    )
    probe = subprocess.run(
        ["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o size=64k tmpfs {root}"],
        capture_output=True,
    )
    if probe.returncode != 0:
        pytest.skip(f"no private mount namespace here (unshare -rm): {probe.stderr[-200:]!r}")
    run = _run_flow(root, objective, "unshare", "-rm", "sh", "-c", fill, "sh")
    assert run.returncode == 1, run.stdout + run.stderr
    assert run.stdout == ""
    assert run.stderr.startswith(f"factory: cannot write to the datastore at {store}: ")
    assert "No space left on device" in run.stderr
    assert run.stderr.count("\n") == 1 and "Nothing was started." in run.stderr


def _run_flow(root: Path, objective: Path, *wrapper: str) -> subprocess.CompletedProcess[str]:
    """`python flows/cycle.py run` of `objective` with its datastore under `root`, started
    through `wrapper` (a command that execs the rest) if given."""
    return subprocess.run(
        [*wrapper, sys.executable, FLOW, "--config", "objective", str(objective), "run"],
        cwd=ROOT,
        env={**os.environ, "METAFLOW_DATASTORE_SYSROOT_LOCAL": str(root)},
        capture_output=True,
        text=True,
        timeout=300,
    )


@contextlib.contextmanager
def _read_only(path: Path) -> Iterator[None]:
    """`path` unwritable, also for root (an immutable directory), or the test is skipped."""
    as_root = os.geteuid() == 0
    make, undo = (["chattr", "+i"], ["chattr", "-i"]) if as_root else (None, None)
    if make is None:
        path.chmod(0o555)
    elif subprocess.run([*make, str(path)], capture_output=True).returncode != 0:
        pytest.skip("cannot make a directory read-only here (chattr +i failed)")
    try:
        try:
            (path / "probe").touch()
        except OSError:
            pass
        else:
            pytest.skip(f"{path} is still writable")
        yield
    finally:
        if undo is None:
            path.chmod(0o755)
        else:
            subprocess.run([*undo, str(path)], check=True)


def test_a_task_killed_while_the_kernel_killed_for_memory_is_named_out_of_memory(
    tmp_path: Path,
) -> None:
    from factory_lib.runs.env import OomMark, oom_mark, oom_note

    vmstat = tmp_path / "vmstat"
    vmstat.write_text("nr_free_pages 12\noom_kill 3\npgfault 9\n")
    start = oom_mark(vmstat)
    assert start is not None and start.kills == 3
    vmstat.write_text("nr_free_pages 12\noom_kill 5\npgfault 9\n")
    note = oom_note(start, oom_mark(vmstat))
    assert note == (
        f"out of memory: the kernel's out-of-memory killer killed 2 processes on {start.host} "
        "during this cycle"
    )
    assert oom_note(start, start) is None  # no kill since: the signal alone is the cause
    assert oom_note(start, OomMark("another-node", 9)) is None  # another machine says nothing
    assert oom_mark(tmp_path / "absent") is None  # not Linux: nothing is claimed
    assert oom_mark() is None or oom_mark().kills >= 0  # this machine's own counter reads
