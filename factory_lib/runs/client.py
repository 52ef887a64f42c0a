"""Reading runs: a search's cycles through the Client API, and the one reader of their artifacts.

Only this package, the cycle card, the CLI's runner and `flows/` import Metaflow (pyproject's
import contracts hold it).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from factory_lib.history import CycleState, state_of
from factory_lib.records import Proposal
from factory_lib.registry import ChampionBundle, apply_events, events_from_tags

FLOW_NAME = "CycleFlow"
OBJECTIVE_TAG = "objective:{}"
# What a signal that ended a task usually means.
SIGNAL_NOTES = {
    9: " (SIGKILL: killed from outside, or by the kernel's out-of-memory killer)",
    11: " (SIGSEGV: a crash in native code)",
    15: " (SIGTERM: stopped from outside)",
}


def objective_tag(name: str) -> str:
    return OBJECTIVE_TAG.format(name)


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


def read_cycle(run: Any) -> CycleState:
    """A finished cycle's state from its metaflow.Run (its end step's artifacts, typed)."""
    with all_namespaces():
        return state_of(run["end"].task.data, run.pathspec, str(run.created_at))


def latest_cycle(
    flow_name: str, objective_name: str, exclude_run: str | None = None
) -> CycleState | None:
    """The state left by the latest successful cycle of this objective, with people's registry
    decisions (approve, reject, rollback: tags on its run) applied."""
    for run in cycle_runs(flow_name, objective_name):
        if run.id == exclude_run:
            continue
        state = read_cycle(run)
        with all_namespaces():
            tag_events = events_from_tags(list(run.tags), run.pathspec)
        return state.with_decisions(
            *apply_events(
                state.bundle,
                state.pending,
                tag_events,
                lambda trial_id: find_version(flow_name, objective_name, trial_id),
            )
        )
    return None


def find_version(flow_name: str, objective_name: str, trial_id: str) -> ChampionBundle:
    """A trial that was ever champion or candidate of an objective, with its package."""
    for run in cycle_runs(flow_name, objective_name):
        state = read_cycle(run)
        for bundle in (state.bundle, state.pending):
            if bundle is not None and bundle.trial_id == trial_id:
                return bundle
    raise LookupError(
        f"objective {objective_name!r} never had {trial_id!r} as champion or candidate"
    )


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


def task_death(run_pathspec: str, step: str, index: int) -> str | None:
    """How the attempts of a foreach task that never finished ended, where the runtime recorded
    their exit (local runs): e.g. "killed by signal 9 in attempts 0, 1, 2"."""
    from metaflow.client.core import Step
    from metaflow.datastore.flow_datastore import FlowDataStore
    from metaflow.exception import MetaflowException
    from metaflow.plugins import DATASTORES

    with all_namespaces():
        task = next((t for t in Step(f"{run_pathspec}/{step}") if t.index == index), None)
        if task is None:
            return None
        meta = task.metadata_dict
        impl = next((d for d in DATASTORES if meta.get("ds-type") == d.TYPE), None)
        if impl is None or "ds-root" not in meta:
            return None
        flow, run = run_pathspec.split("/")
        store = FlowDataStore(flow, None, storage_impl=impl, ds_root=meta["ds-root"])  # type: ignore[no-untyped-call]
        signals: dict[int, list[int]] = {}
        for attempt in range(int(meta.get("attempt", 0)) + 1):
            try:
                attempt_store = store.get_task_datastore(  # type: ignore[no-untyped-call]
                    run, step, task.id, attempt=attempt, mode="r", allow_not_done=True
                )
                code = attempt_store.load_metadata(["runtime"])["runtime"]["return_code"]
            except (KeyError, OSError, MetaflowException):  # no exit recorded (e.g. on Batch)
                continue
            if isinstance(code, int) and code < 0:
                signals.setdefault(-code, []).append(attempt)
    return (
        "; ".join(
            f"killed by signal {sig}{SIGNAL_NOTES.get(sig, '')} in attempt"
            f"{'s' if len(tries) > 1 else ''} {', '.join(map(str, tries))}"
            for sig, tries in sorted(signals.items())
        )
        or None
    )
