"""History: the append-only record of a search, read back through the Metaflow Client API.

Each successful cycle's end step holds the whole history so far; the next cycle starts from
the latest successful run tagged `objective:<name>`. The datastore is the source of truth.
"""

from __future__ import annotations

import os
import pwd
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

from factory_lib.records import Proposal, TrialRecord
from factory_lib.registry import (
    Candidate,
    Champion,
    ModelPackage,
    RegistryEvent,
    events_from_tags,
)

OBJECTIVE_TAG = "objective:{}"
DEFAULT_USER = "factory"


class HistoryRewriteError(RuntimeError):
    """A cycle tried to change or drop records an earlier cycle wrote."""


@dataclass(frozen=True)
class CycleState:
    """What one cycle hands to the next."""

    run_pathspec: str
    cycle: int
    history: tuple[TrialRecord, ...]
    champion: Champion | None
    champion_package: ModelPackage | None
    stale_cycles: int
    llm_usd_total: float
    model_card: dict[str, Any] | None = None
    exports: Any = None
    events: tuple[RegistryEvent, ...] = ()  # the promotion log, tag events applied
    pending: Candidate | None = None  # a promotion awaiting approval


def ensure_metaflow_user() -> None:
    """Give Metaflow a user name where the environment has none it accepts (it refuses root).

    A container or CI job often runs as root with no USER set; its runs are then owned by
    the account name, or by `factory` for root.
    """
    names = (os.environ.get(v) for v in ("METAFLOW_USER", "SUDO_USER", "USERNAME", "USER"))
    if not any(n and n != "root" for n in names):
        account = pwd.getpwuid(os.getuid()).pw_name
        os.environ["METAFLOW_USER"] = account if account != "root" else DEFAULT_USER


def local_worker_default(argv: Sequence[str]) -> None:
    """Local runs default to one parallel task per CPU core instead of Metaflow's 16.

    On a small machine 16 concurrent train tasks mostly fight over cores (measured in
    docs/benchmarks.md). `--max-workers` or METAFLOW_RUN_MAX_WORKERS still decide; runs that
    send tasks elsewhere (`--with batch`, `kubernetes`) keep Metaflow's default.
    """
    if not any(("batch" in a or "kubernetes" in a) for a in argv):
        workers = str(os.cpu_count() or 1)
        os.environ.setdefault("METAFLOW_RUN_MAX_WORKERS", workers)
        os.environ.setdefault("METAFLOW_RESUME_MAX_WORKERS", workers)


def objective_tag(name: str) -> str:
    return OBJECTIVE_TAG.format(name)


def append(previous: Sequence[TrialRecord], new: Sequence[TrialRecord]) -> tuple[TrialRecord, ...]:
    """previous + new, refusing a trial id that history already holds."""
    known = {r.trial_id for r in previous}
    clash = [r.trial_id for r in new if r.trial_id in known]
    if clash:
        raise HistoryRewriteError(f"trial ids already in history: {clash}")
    return (*previous, *new)


def check_extends(previous: Sequence[TrialRecord], current: Sequence[TrialRecord]) -> None:
    """Raise unless `current` starts with every record of `previous`, unchanged."""
    if len(current) < len(previous) or any(a != b for a, b in zip(previous, current, strict=False)):
        raise HistoryRewriteError("history would lose or change records an earlier cycle wrote")


@contextmanager
def all_namespaces() -> Iterator[None]:
    """Cycles run by a scheduler or a colleague belong to one search: look in every namespace."""
    from metaflow.client.core import get_namespace, namespace
    from metaflow.exception import MetaflowUnknownUser

    try:
        before = get_namespace()
    except MetaflowUnknownUser:  # root with no USER (a container): no user namespace to restore
        before = None
    namespace(None)
    try:
        yield
    finally:
        namespace(before)


def cycle_runs(flow_name: str, objective_name: str) -> list[Any]:
    """The successful cycles of an objective, newest first (metaflow.Run objects)."""
    from metaflow.client.core import Flow
    from metaflow.exception import MetaflowNotFound

    with all_namespaces():
        try:
            runs = list(Flow(flow_name).runs(objective_tag(objective_name)))  # type: ignore[no-untyped-call]
        except MetaflowNotFound:
            return []
        done = [r for r in runs if r.successful]
    return sorted(done, key=lambda r: r.created_at, reverse=True)


def latest_cycle(
    flow_name: str, objective_name: str, exclude_run: str | None = None
) -> CycleState | None:
    """The state left by the latest successful cycle of this objective, if any."""
    for run in cycle_runs(flow_name, objective_name):
        if run.id == exclude_run:
            continue
        with all_namespaces():
            data = run["end"].task.data
            state = CycleState(
                run_pathspec=run.pathspec,
                cycle=data.cycle,
                history=tuple(data.history),
                champion=data.champion,
                champion_package=data.champion_package,
                stale_cycles=data.stale_cycles,
                # cycles run before LLM accounting existed spent nothing on it
                llm_usd_total=getattr(data, "llm_usd_total", 0.0),
                model_card=getattr(data, "model_card", None),
                exports=getattr(data, "exports", None),
                events=tuple(getattr(data, "promotions", ())),
                pending=getattr(data, "pending", None),
            )
            tag_events = events_from_tags(list(run.tags), run.pathspec)
        return apply_events(state, tag_events, flow_name, objective_name)
    return None


def apply_events(
    state: CycleState, events: Sequence[RegistryEvent], flow_name: str, objective_name: str
) -> CycleState:
    """A cycle's state after the registry decisions people recorded on its run (as tags)."""
    for event in events:
        p = state.pending
        decided = p if p is not None and p.champion.trial_id == event.trial_id else None
        if event.kind == "approved" and decided is not None:
            state = replace(
                state,
                champion=decided.champion,
                champion_package=decided.package,
                model_card=decided.model_card,
                exports=decided.exports,
                pending=None,
            )
        elif event.kind == "rejected" and decided is not None:
            state = replace(state, pending=None)
        elif event.kind == "rollback":
            champion, package, card, exports = find_package(
                flow_name, objective_name, event.trial_id
            )
            state = replace(
                state, champion=champion, champion_package=package, model_card=card, exports=exports
            )
        else:
            continue
        state = replace(state, events=(*state.events, event))
    return state


def find_package(
    flow_name: str, objective_name: str, trial_id: str
) -> tuple[Champion, ModelPackage, Any, Any]:
    """The champion record, package, card and exports of a trial that was ever promoted."""
    for run in cycle_runs(flow_name, objective_name):
        with all_namespaces():
            data = run["end"].task.data
            for candidate in (
                (
                    getattr(data, "champion", None),
                    getattr(data, "champion_package", None),
                    getattr(data, "model_card", None),
                    getattr(data, "exports", None),
                ),
                _pending_parts(getattr(data, "pending", None)),
            ):
                champion, package = candidate[0], candidate[1]
                if champion is not None and package is not None and champion.trial_id == trial_id:
                    return champion, package, candidate[2], candidate[3]
    raise LookupError(
        f"objective {objective_name!r} never had {trial_id!r} as champion or candidate"
    )


def _pending_parts(pending: Candidate | None) -> tuple[Any, Any, Any, Any]:
    if pending is None:
        return None, None, None, None
    return pending.champion, pending.package, pending.model_card, pending.exports


def stored_checkpoint(proposal: Proposal) -> bytes:
    """The fidelity checkpoint a continued trial starts from, read from the task that stored it."""
    from metaflow.client.core import Task

    if proposal.continues is None or proposal.checkpoint is None:
        raise LookupError(f"{proposal.trial_id} does not continue a stored checkpoint")
    with all_namespaces():
        stored = Task(proposal.checkpoint)["trial_checkpoints"].data
    if proposal.continues not in stored:
        raise LookupError(f"task {proposal.checkpoint} kept no checkpoint of {proposal.continues}")
    blob: bytes = stored[proposal.continues]
    return blob
