"""One cycle at a time per search: a lease per objective and branch, kept in the run's own
datastore.

    start  `take_lease`: an exclusive create of
           <datastore root>/<flow>/_leases/<objective>@<branch>.json
           (local: a hard link from a finished temporary file, as atomic as O_CREAT|O_EXCL and
           never seen half written; S3: a conditional PUT, `If-None-Match: *`)
    join   `check_branch`: the run goes on on the branch it was planned on (a `resume` without
           the same --branch/--production would move it to another search);
           `check_not_superseded`: no newer cycle of the search finished since this one was
           planned (a `resume` of an older run would fork the search's history)
    end    `publish_cycle`: the same check, then the run tag `objective:<name>` (the next cycle
           chains from here), then the lease given back

A lease names the holder run, its user, host and pid (the process that started the start task:
the local runtime) and when it was taken. Another cycle of the objective refuses to start while
it is held, unless it is stale (`stale_reason`): past its time to live (`lease_ttl_s`: the
budget's trials and seeds at their trial timeout, plus an hour), its runtime on this host is gone,
or Metaflow knows the holder run as finished, or not at all. `factory unlock OBJECTIVE` removes
a lease; `FACTORY_BREAK_LEASE=1` lets one start take it over. docs/reliability.md says more.

A lease is given back when the cycle ends or when its start step fails (there is then nothing to
resume), and not when a later step fails: that run can be resumed, and the lease keeps the
search for it until it goes stale.
"""

from __future__ import annotations

import hashlib
import os
import socket
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, ValidationError

from factory_lib.objective import Objective
from factory_lib.runs.client import (
    FLOW_NAME,
    all_namespaces,
    default_branch,
    flow_command,
    newest_cycle,
    objective_tag,
)
from factory_lib.runs.env import process_alive, user_name

LEASE_DIR = "_leases"
# Set to 1: the start step takes the lease over from whoever holds it (the holder is named).
BREAK_VARIABLE = "FACTORY_BREAK_LEASE"
# Set to 1: a run may finish (join, end) although a newer cycle finished since it was planned.
ALLOW_SUPERSEDED_VARIABLE = "FACTORY_ALLOW_SUPERSEDED"
# On top of the budget's trials and seeds at their timeout: start-up, data, retries, the card.
LEASE_MARGIN_S = 3600
_TIME = "%Y-%m-%d %H:%M:%S UTC"


class LeaseHeld(RuntimeError):
    """Another cycle of the objective is running (its lease is held and not stale)."""


class Superseded(RuntimeError):
    """A newer cycle of the objective finished after this one was planned."""


class BranchMoved(RuntimeError):
    """A run resumed on another branch than the one its cycle was planned on."""


class DatastoreError(RuntimeError):
    """The datastore cannot be read or written where the lease lives."""


class Lease(BaseModel):
    """Who runs a cycle of an objective, since when, and where the lease is kept."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    objective: str
    run: str  # the holder's pathspec, CycleFlow/<run id>
    user: str
    host: str
    pid: int  # the process that started the holder's start task: the local runtime
    taken_at: datetime
    expires_at: datetime
    token: str  # tells this lease from a later one of the same run
    where: str  # the lease file: a local path or an s3:// URL
    branch: str | None = None  # the search's branch (None: a lease from before branches)

    def describe(self) -> str:
        return (
            f"{self.run} (user {self.user} on {self.host}, pid {self.pid}, since "
            f"{self.taken_at.strftime(_TIME)}; stale after {self.expires_at.strftime(_TIME)})"
        )


@dataclass(frozen=True)
class Datastore:
    """A Metaflow datastore: its type (`local`, `s3`) and root (a path or an s3:// URL)."""

    kind: str
    root: str

    @classmethod
    def of_task(cls) -> Datastore:
        """The datastore the running task writes to (its `ds-type`/`ds-root` metadata)."""
        from metaflow import current

        with all_namespaces():
            task = current.task
            assert task is not None, "Datastore.of_task() runs inside a task"
            meta = task.metadata_dict
        return cls(meta["ds-type"], meta["ds-root"])

    @classmethod
    def configured(cls) -> Datastore | None:
        """The datastore a run started here would use (METAFLOW_DEFAULT_DATASTORE and its root)."""
        from metaflow.metaflow_config import DEFAULT_DATASTORE
        from metaflow.plugins import DATASTORES

        for impl in DATASTORES:
            if impl.TYPE == DEFAULT_DATASTORE:
                root = impl.get_datastore_root_from_config(lambda *_: None, create_on_absent=False)
                return cls(DEFAULT_DATASTORE, root) if root else None
        return None

    def lease_location(self, flow_name: str, objective_name: str, branch: str) -> str:
        name = f"{objective_name}@{branch}.json"
        if self.kind == "local":
            return str(Path(self.root) / flow_name / LEASE_DIR / name)
        return f"{self.root.rstrip('/')}/{flow_name}/{LEASE_DIR}/{name}"


class _Store(Protocol):
    """One lease file with compare-and-swap: `version` is what `read` returned with the body."""

    where: str

    def create(self, body: bytes) -> bool: ...
    def read(self) -> tuple[bytes, str] | None: ...
    def replace(self, body: bytes, version: str) -> bool: ...
    def delete(self, version: str) -> bool: ...


class _LocalStore:
    """A lease file on the local datastore. Creating it is atomic: a finished temporary file is
    hard-linked to the name, which fails if the name exists. Replacing or deleting compares the
    content first; the moment between compare and act is the only race, and a cycle that slips
    through it still cannot fork history (`check_not_superseded`)."""

    def __init__(self, where: str) -> None:
        self.where = where
        self.path = Path(where)

    def create(self, body: bytes) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._write_temporary(body)
        try:
            os.link(tmp, self.path)
        except FileExistsError:
            return False
        finally:
            tmp.unlink()
        return True

    def read(self) -> tuple[bytes, str] | None:
        try:
            body = self.path.read_bytes()
        except FileNotFoundError:
            return None
        return body, hashlib.sha256(body).hexdigest()

    def replace(self, body: bytes, version: str) -> bool:
        tmp = self._write_temporary(body)
        found = self.read()
        if found is None or found[1] != version:
            tmp.unlink()
            return False
        os.replace(tmp, self.path)
        return True

    def delete(self, version: str) -> bool:
        found = self.read()
        if found is None or found[1] != version:
            return False
        self.path.unlink(missing_ok=True)
        return True

    def _write_temporary(self, body: bytes) -> Path:
        fd, name = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.")
        try:
            os.write(fd, body)
            os.fsync(fd)  # a full disk fails here, before the lease exists
        except OSError:
            os.close(fd)
            os.unlink(name)
            raise
        os.close(fd)
        return Path(name)


class _S3Store:
    """A lease object on the S3 datastore, with S3's conditional writes: create with
    `If-None-Match: *`, replace and delete with `If-Match: <etag>`."""

    # What S3 answers when a condition fails (409: a concurrent conditional write won).
    _LOST = ("PreconditionFailed", "ConditionalRequestConflict", "412", "409")

    def __init__(self, where: str) -> None:
        from metaflow.plugins.datatools.s3.s3util import get_s3_client

        self.where = where
        self.bucket, _, self.key = where.removeprefix("s3://").partition("/")
        self.client, self.error = get_s3_client()  # type: ignore[no-untyped-call]

    def create(self, body: bytes) -> bool:
        return self._conditional(self.client.put_object, Body=body, IfNoneMatch="*")

    def read(self) -> tuple[bytes, str] | None:
        try:
            got = self.client.get_object(Bucket=self.bucket, Key=self.key)
        except self.error as exc:
            if _code(exc) in ("NoSuchKey", "404"):
                return None
            raise DatastoreError(f"cannot read the lease {self.where}: {exc}") from exc
        return got["Body"].read(), str(got["ETag"])

    def replace(self, body: bytes, version: str) -> bool:
        return self._conditional(self.client.put_object, Body=body, IfMatch=version)

    def delete(self, version: str) -> bool:
        return self._conditional(self.client.delete_object, IfMatch=version)

    def _conditional(self, call: Callable[..., Any], **kwargs: Any) -> bool:
        try:
            call(Bucket=self.bucket, Key=self.key, **kwargs)
        except self.error as exc:
            if _code(exc) in (*self._LOST, "NoSuchKey", "404"):
                return False
            raise DatastoreError(f"cannot write the lease {self.where}: {exc}") from exc
        return True


def _code(exc: Any) -> str:
    return str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))


def _store(where: str) -> _Store:
    return _S3Store(where) if where.startswith("s3://") else _LocalStore(where)


def lease_ttl_s(objective: Objective) -> float:
    """How long a lease lives without its holder finishing: every trial and every re-measuring
    seed one after another at the trial timeout, plus LEASE_MARGIN_S."""
    budget = objective.budget
    return (
        budget.trials_per_cycle + objective.promotion.seeds
    ) * budget.trial_timeout_s + LEASE_MARGIN_S


def run_known_finished(pathspec: str) -> str | None:
    """Why Metaflow says a run no longer runs (finished, or unknown), or None."""
    from metaflow.client.core import Run
    from metaflow.exception import MetaflowNotFound

    with all_namespaces():
        try:
            run = Run(pathspec)
        except MetaflowNotFound:
            return f"Metaflow does not know {pathspec}"
        return f"{pathspec} has finished" if run.finished else None


def stale_reason(
    lease: Lease,
    now: datetime,
    host: str,
    run_finished: Callable[[str], str | None] = run_known_finished,
) -> str | None:
    """Why a lease no longer protects a running cycle, or None while it does."""
    if now >= lease.expires_at:
        return f"it expired at {lease.expires_at.strftime(_TIME)}"
    if lease.host == host and not process_alive(lease.pid):
        return f"its runtime (pid {lease.pid} on {host}) is gone"
    return run_finished(lease.run)


def _parse(body: bytes) -> Lease | None:
    try:
        return Lease.model_validate_json(body)
    except ValidationError:
        return None


def take_lease(
    objective: Objective,
    run_pathspec: str,
    datastore: Datastore | None = None,
    now: datetime | None = None,
    branch: str | None = None,
) -> tuple[Lease | None, tuple[str, ...]]:
    """Take the search's lease (the objective on `branch`, yours by default) for this run;
    LeaseHeld (naming the holder and what to do) while another cycle holds it. Returns the
    lease and notices (a stale lease taken over).

    `datastore` defaults to the running task's; one without lease support (not local, not S3)
    runs without a lease, and says so.
    """
    datastore = datastore or Datastore.of_task()
    if datastore.kind not in ("local", "s3"):
        return None, (
            f"no lease on the {datastore.kind} datastore: one cycle at a time is "
            "not enforced there",
        )
    flow_name = run_pathspec.split("/")[0]
    branch = default_branch(branch)
    where = datastore.lease_location(flow_name, objective.name, branch)
    now = now or datetime.now(UTC)
    lease = Lease(
        objective=objective.name,
        run=run_pathspec,
        user=user_name(),
        host=socket.gethostname(),
        pid=os.getppid(),
        taken_at=now,
        expires_at=now + timedelta(seconds=lease_ttl_s(objective)),
        token=uuid.uuid4().hex,
        where=where,
        branch=branch,
    )
    body = lease.model_dump_json(indent=1).encode()
    try:
        store = _store(where)
        for _ in range(3):  # a lease given back or taken over meanwhile: look again
            if store.create(body):
                return lease, ()
            found = store.read()
            if found is None:
                continue
            held = _parse(found[0])
            reason = "it cannot be read" if held is None else stale_reason(held, now, lease.host)
            if reason is None and os.environ.get(BREAK_VARIABLE) == "1":
                reason = f"{BREAK_VARIABLE}=1"
            if reason is None:
                assert held is not None
                raise LeaseHeld(held_message(held))
            if store.replace(body, found[1]):
                holder = held.describe() if held is not None else "an unreadable lease"
                return lease, (f"took over the lease of {holder}: {reason}",)
    except OSError as exc:
        raise DatastoreError(datastore_message(where, exc)) from exc
    raise LeaseHeld(
        f"the lease {where} keeps changing: another cycle of {objective.name!r} on {branch} is "
        "starting; wait for it"
    )


def held_message(held: Lease) -> str:
    on = f" on branch {held.branch}" if held.branch else ""
    branch = f" --branch {held.branch}" if held.branch else ""
    return (
        f"objective {held.objective!r} is already running a cycle{on}: {held.describe()}. One "
        f"cycle at a time per search: wait for it to finish; if it is dead, run `factory unlock "
        f"{held.objective}{branch}` (or start with {BREAK_VARIABLE}=1) and start again. "
        f"Lease: {held.where}"
    )


def datastore_message(where: str, exc: OSError) -> str:
    return (
        f"cannot write to the datastore at {where}: {exc.strerror or exc} "
        "(is it mounted read-only, full, or not yours to write?)"
    )


def release_lease(lease: Lease | None) -> tuple[str, ...]:
    """Give the lease back if it is still this one; notices when it no longer was."""
    if lease is None:
        return ()
    try:
        store = _store(lease.where)
        found = store.read()
        if found is None:
            return (f"the lease of {lease.run} was already removed (factory unlock?)",)
        held = _parse(found[0])
        if held is None or held.token != lease.token:
            holder = held.run if held is not None else "an unreadable lease"
            return (f"the lease of {lease.objective!r} is now {holder}'s: left as it is",)
        if not store.delete(found[1]):
            return (f"the lease of {lease.objective!r} changed while giving it back: left",)
    except OSError as exc:
        raise DatastoreError(datastore_message(lease.where, exc)) from exc
    return ()


def unlock(
    objective_name: str,
    flow_name: str = FLOW_NAME,
    datastore: Datastore | None = None,
    branch: str | None = None,
) -> Lease | str | None:
    """Remove the search's lease (`factory unlock`): the lease removed, the location of an
    unreadable one removed, or None when there was none."""
    datastore = datastore or Datastore.configured()
    if datastore is None:
        return None
    where = datastore.lease_location(flow_name, objective_name, default_branch(branch))
    try:
        store = _store(where)
        found = store.read()
        if found is None or not store.delete(found[1]):
            return None
    except OSError as exc:
        raise DatastoreError(datastore_message(where, exc)) from exc
    return _parse(found[0]) or where


def check_branch(planned: str | None, running: str, run_pathspec: str) -> None:
    """Refuse (BranchMoved) a run that goes on on another branch than its cycle was planned on
    (a `resume` without the same --branch/--production): it would join another search."""
    if planned is None or planned == running:
        return
    kind, _, name = planned.partition(".")
    raise BranchMoved(
        f"{run_pathspec} was planned on branch {planned} but now runs on {running}: it would "
        f"end in another search. Resume it on its own branch: {flow_command(planned, 'resume')}"
        + (f" (as the user {name})" if kind == "user" else "")
    )


def check_not_superseded(
    objective_name: str,
    newest_when_planned: str | None,
    run_pathspec: str,
    branch: str | None = None,
) -> tuple[str, ...]:
    """Refuse (Superseded) when a cycle of the search finished after this run was planned:
    finishing it would fork the search's history. FACTORY_ALLOW_SUPERSEDED=1 lets it finish."""
    flow_name, run_id = run_pathspec.split("/")
    newest = newest_cycle(flow_name, objective_name, exclude_run=run_id, branch=branch)
    if newest is None or newest == newest_when_planned:
        return ()
    planned = newest_when_planned or "no earlier cycle"
    what = (
        f"{run_pathspec} was planned from {planned}, but {newest} has finished since as the "
        f"newest cycle of {objective_name!r}"
    )
    if os.environ.get(ALLOW_SUPERSEDED_VARIABLE) == "1":
        return (
            f"{what}; finishing anyway ({ALLOW_SUPERSEDED_VARIABLE}=1): the next cycle "
            f"continues from this one, without {newest}'s trials",
        )
    raise Superseded(
        f"{what}. Finishing this run (a resume of an older cycle?) would fork the search's "
        f"history, so it stops here. Start a new cycle instead (`python flows/cycle.py run`), "
        f"or set {ALLOW_SUPERSEDED_VARIABLE}=1 to finish it anyway."
    )


def publish_cycle(
    objective_name: str,
    newest_when_planned: str | None,
    lease: Lease | None,
    run_pathspec: str,
    branch: str | None = None,
) -> tuple[str, ...]:
    """The end step's last act: check nothing newer finished, tag the run `objective:<name>`
    (the next cycle of its branch chains from it), give the lease back. Returns notices."""
    from metaflow.client.core import Run

    notices = check_not_superseded(objective_name, newest_when_planned, run_pathspec, branch)
    with all_namespaces():
        Run(run_pathspec).add_tag(objective_tag(objective_name))
    return (*notices, *release_lease(lease))
