"""Reading runs: a search's cycles through the Client API, and the one reader of their artifacts.

Only this package, the cycle card, the CLI's runner and `flows/` import Metaflow (pyproject's
import contracts hold it).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from factory_lib.history import CycleState, champion_of, numbering_problem, state_of
from factory_lib.records import Proposal
from factory_lib.registry import ChampionBundle, apply_events, events_from_tags
from factory_lib.runs.env import DATASTORE_DIR, DATASTORE_VARIABLE, PROJECT, find_local_datastore

FLOW_NAME = "CycleFlow"
OBJECTIVE_TAG = "objective:{}"
# Metaflow's system tag for a run's branch, and the user tag `factory adopt` puts on a run from
# before branches: "adopted:<branch>:<UTC stamp>:<who>".
BRANCH_TAG = "project_branch"
ADOPTED_TAG = "adopted"
# A retired cycle's run tag: "retired:<UTC stamp>:<who>:<why>" (runs.retire writes it).
RETIRED_TAG = "retired"
# What a signal that ended a task usually means.
SIGNAL_NOTES = {
    9: " (SIGKILL: killed from outside, or by the kernel's out-of-memory killer)",
    11: " (SIGSEGV: a crash in native code)",
    15: " (SIGTERM: stopped from outside)",
}


def objective_tag(name: str) -> str:
    return OBJECTIVE_TAG.format(name)


def branch_name(branch: str | None = None, production: bool = False) -> str:
    """The branch a search lives on, named as the flow's `--branch`/`--production` name it:
    `user.<you>` by default, `test.<branch>`, `prod`, `prod.<branch>`; a full name (`user.alice`,
    `test.quick_try`, `prod`) is taken as it is. ValueError for a name Metaflow refuses."""
    from metaflow.exception import MetaflowException
    from metaflow.plugins.project_decorator import format_name
    from metaflow.util import get_username

    kind, dot, rest = (branch or "").partition(".")
    if branch == "prod" or (dot and kind in ("user", "test", "prod") and rest):
        if production:
            raise ValueError(f"--branch {branch} is a full branch name: leave out --production")
        return str(branch)
    try:
        user = get_username()  # type: ignore[no-untyped-call]
        return str(format_name(FLOW_NAME, PROJECT, production, branch, user)[1])  # type: ignore[no-untyped-call]
    except MetaflowException as exc:
        raise ValueError(f"--branch {branch}: {exc.message}") from None


def flow_options(branch: str) -> dict[str, Any]:
    """The flow's top-level @project options that run on a branch: {"production": True,
    "branch": NAME} for prod(.NAME), {"branch": NAME} for test.NAME, none for a user branch
    (whose user runs it)."""
    kind, _, name = branch.partition(".")
    options: dict[str, Any] = {"production": True} if kind == "prod" else {}
    return {**options, "branch": name} if name and kind != "user" else options


def flow_command(branch: str, command: str = "run") -> str:
    """The flow's command line for a branch, e.g. `python flows/cycle.py --production run`."""
    options = "".join(
        f" --{k}" if v is True else f" --{k} {v}" for k, v in flow_options(branch).items()
    )
    return f"python flows/cycle.py{options} {command}"


def default_branch(branch: str | None) -> str:
    """`branch`, or this user's own branch where it is None."""
    return branch if branch is not None else branch_name()


def branch_of(run: Any) -> str | None:
    """The branch a run (a metaflow.Run) belongs to: the one it ran on, or the one `factory
    adopt` gave a run from before branches; None for such a run not adopted."""
    for tag in run.system_tags:
        if tag.startswith(f"{BRANCH_TAG}:"):
            return str(tag.partition(":")[2])
    for tag in sorted(run.user_tags):
        if tag.startswith(f"{ADOPTED_TAG}:"):
            return str(tag.split(":")[1])
    return None


@dataclass(frozen=True)
class Retirement:
    """A person's mark on a cycle the search skips (`factory retire`): the chain, the budget,
    patience, the champion and the reports pass over it; its records stay, and so do its trial
    and cycle numbers."""

    run: str  # pathspec
    at: str  # UTC, e.g. 20261126T051900Z
    actor: str
    reason: str
    tag: str  # the run tag itself, for `factory unretire`

    def describe(self) -> str:
        return f"retired {self.at} by {self.actor}: {self.reason}"


def retirement_of(run: Any) -> Retirement | None:
    """The retirement a run's tags record (a metaflow.Run), or None."""
    for tag in sorted(run.user_tags):
        parts = tag.split(":", 3)
        if len(parts) == 4 and parts[0] == RETIRED_TAG:
            return Retirement(run.pathspec, parts[1], parts[2], parts[3], tag)
    return None


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


class DamagedRunError(RuntimeError):
    """A cycle the search would continue from cannot be trusted: the message names the run, what
    failed in it and how to continue from the last good cycle (`--from-run`)."""

    def __init__(self, run: str, problem: str, hint: str = "") -> None:
        self.run, self.problem, self.hint = run, problem, hint
        super().__init__(f"{run} cannot be continued from: {problem}{hint}")

    def with_hint(self, hint: str) -> DamagedRunError:
        return DamagedRunError(self.run, self.problem, hint)


# What `state_of` cannot do without: missing from a finished cycle's end step, the run is damaged.
END_ARTIFACTS = frozenset(
    {"cycle", "history", "records", "champion", "champion_package", "stale_cycles", "decision"}
)


@dataclass(frozen=True)
class Chain:
    """What a new cycle continues: the previous cycle's state (people's decisions applied), the
    newest successful cycle of the objective (when looked), and the highest cycle and trial
    numbers the search has used, damaged and retired runs included, so that none is used twice;
    the numbers of the search's retired cycles, which its budget does not count."""

    previous: CycleState | None
    newest: str | None
    last_cycle: int = 0
    last_number: int = -1
    notices: tuple[str, ...] = ()
    retired_cycles: tuple[int, ...] = ()

    @property
    def cycles_counted(self) -> int:
        """The cycles of the search so far that count against `budget.max_cycles`."""
        return self.last_cycle - len(self.retired_cycles) if self.previous else 0


class _CheckedData:
    """A finished run's end artifacts; one that cannot be loaded (a blob truncated or emptied, a
    datastore that cannot be read) raises DamagedRunError naming it."""

    def __init__(self, pathspec: str, data: Any) -> None:
        self._pathspec, self._data = pathspec, data

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        try:
            return getattr(self._data, name)
        except AttributeError:
            if name in END_ARTIFACTS:
                raise DamagedRunError(
                    self._pathspec, f"its end step has no artifact {name!r}"
                ) from None
            raise
        except Exception as exc:
            raise DamagedRunError(
                self._pathspec,
                f"its artifact {name!r} cannot be read ({type(exc).__name__}: {exc})",
            ) from exc


def objective_runs(flow_name: str, objective_name: str) -> list[Any]:
    """Every run tagged `objective:<name>` on any branch (finished or not), newest first."""
    from metaflow.client.core import Flow
    from metaflow.exception import MetaflowNotFound

    with all_namespaces():
        try:
            runs = list(Flow(flow_name).runs(objective_tag(objective_name)))  # type: ignore[no-untyped-call]
        except MetaflowNotFound:
            return []
    return sorted(runs, key=lambda r: r.created_at, reverse=True)


def search_runs(flow_name: str, objective_name: str, branch: str | None = None) -> list[Any]:
    """The runs of a search: tagged `objective:<name>` on `branch` (this user's by default),
    finished or not, newest first (metaflow.Run)."""
    branch = default_branch(branch)
    with all_namespaces():
        return [r for r in objective_runs(flow_name, objective_name) if branch_of(r) == branch]


def unscoped_runs(flow_name: str, objective_name: str) -> list[Any]:
    """The runs of an objective from before branches that no branch has adopted, newest first."""
    with all_namespaces():
        return [r for r in objective_runs(flow_name, objective_name) if branch_of(r) is None]


def where_runs_are() -> str:
    """Where this process reads runs from, for messages that found nothing."""
    from metaflow.metaflow_config import DEFAULT_METADATA, SERVICE_URL

    if DEFAULT_METADATA != "local":
        return f"the metadata service {SERVICE_URL}"
    found = find_local_datastore()
    where = found.describe() if found else f"the local datastore {Path.cwd() / DATASTORE_DIR}"
    return (
        f"{where}; point at another with {DATASTORE_VARIABLE}=<the folder that holds "
        f"{DATASTORE_DIR}>"
    )


def nothing_found(objective_name: str, branch: str | None, flow_name: str = FLOW_NAME) -> str:
    """Why a search has nothing to read: where it looked, and the branches (and runs from
    before branches) that do hold cycles of the objective."""
    branch = default_branch(branch)
    message = f"objective {objective_name!r} has no successful cycle on branch {branch} yet"
    with all_namespaces():
        others = sorted({branch_of(r) or "" for r in objective_runs(flow_name, objective_name)})
    named = [b for b in others if b and b != branch]
    if named:
        message += f"; branches with runs of it: {', '.join(named)} (--branch NAME reads one)"
    if "" in others:
        message += (
            f"; it has runs from before branches: `factory adopt --objective {objective_name}` "
            f"makes them the history of {branch}"
        )
    return f"{message}. Looked in {where_runs_are()}."


def cycle_runs(
    flow_name: str, objective_name: str, retired: bool = True, branch: str | None = None
) -> list[Any]:
    """The successful cycles of a search, newest first (metaflow.Run objects); without
    `retired`, those that are not retired."""
    with all_namespaces():
        return [
            r
            for r in search_runs(flow_name, objective_name, branch)
            if r.successful and (retired or retirement_of(r) is None)
        ]


def newest_cycle(
    flow_name: str,
    objective_name: str,
    exclude_run: str | None = None,
    branch: str | None = None,
) -> str | None:
    """The pathspec of the search's newest successful cycle, or None. Asks runs whether
    they succeeded (a datastore read each) newest first, only until one has: a long search
    costs no more than a short one."""
    with all_namespaces():
        runs = (r for r in search_runs(flow_name, objective_name, branch) if r.id != exclude_run)
        return next((r.pathspec for r in runs if r.successful), None)


def end_data(run: Any) -> Any:
    """A finished run's end artifacts, each read checked (`_CheckedData`); call in
    `all_namespaces()`."""
    try:
        data = run["end"].task.data
    except Exception as exc:
        raise DamagedRunError(
            run.pathspec, f"its end step cannot be read ({type(exc).__name__}: {exc})"
        ) from exc
    return _CheckedData(run.pathspec, data)


def read_cycle(run: Any) -> CycleState:
    """A finished cycle's state from its metaflow.Run (its end step's artifacts, typed).

    DamagedRunError names the artifact that cannot be read, or what is wrong with its history.
    """
    with all_namespaces():
        state = state_of(end_data(run), run.pathspec, str(run.created_at))
    problem = numbering_problem(state.history, state.cycle)
    if problem is not None:
        raise DamagedRunError(run.pathspec, f"its artifact 'history' is inconsistent: {problem}")
    return state


def chain_from(
    flow_name: str,
    objective_name: str,
    exclude_run: str | None = None,
    from_run: str | None = None,
    branch: str | None = None,
) -> Chain:
    """What the next cycle of an objective continues, checked.

    By default the newest successful cycle that is not retired; a tagged run newer than it that
    did not succeed (its end step missing or failed) and is not retired, or a newest cycle whose
    artifacts cannot be read, is a DamagedRunError that says how to continue from the last good
    cycle: `from_run`, a run id, chains from that run explicitly. The runs the chain skips
    (retired, or newer than `from_run`) keep their cycle and trial numbers.
    """
    with all_namespaces():
        branch = default_branch(branch)
        runs = [r for r in search_runs(flow_name, objective_name, branch) if r.id != exclude_run]
        retired = {r.id: retirement_of(r) for r in runs}
        live = [r for r in runs if retired[r.id] is None]
        newest = next((r.pathspec for r in runs if r.successful), None)

        def ok() -> list[Any]:  # every live successful run: only for a hint, when one is due
            return [r for r in live if r.successful]

        if from_run:
            base = _tagged_run(runs, flow_name, objective_name, from_run, branch)
            gone = retired[base.id]
            if gone is not None:
                raise LookupError(
                    f"--from-run {from_run}: {base.pathspec} is {gone.describe()}; "
                    f"undo that with `factory unretire {base.id} --objective {objective_name}`, "
                    "or continue from another cycle"
                )
        else:
            # newest first, asked only until one succeeded (a datastore read per run)
            base = next((r for r in live if r.successful), None)
            newer = _newer_than(live, base)
            if newer:
                raise DamagedRunError(
                    newer[0].pathspec, _unfinished(newer[0], objective_name)
                ).with_hint(_continue_hint(ok(), objective_name))
        if base is None:
            return Chain(previous=None, newest=newest)
        try:
            state = read_cycle(base)
        except DamagedRunError as exc:
            older = [r for r in ok() if r.created_at < base.created_at]
            raise exc.with_hint(_continue_hint(older, objective_name)) from exc
        tag_events = events_from_tags(list(base.tags), base.pathspec)
        state = state.with_decisions(
            *apply_events(
                state.bundle,
                state.pending,
                tag_events,
                lambda event: find_version(
                    flow_name, objective_name, event.trial_id, event.branch or branch
                ),
            )
        )
        last_cycle, last_number = (
            state.cycle,
            max((r.proposal.number for r in state.history), default=-1),
        )
        notices: list[str] = []
        retired_cycles = set(state.retired_cycles)
        for run in _newer_than(runs, base):  # skipped: their numbers stay used
            cycle, number, notice = _numbers_used(run)
            last_cycle, last_number = max(last_cycle, cycle), max(last_number, number)
            notices.extend(notice)
            retirement = retired[run.id]
            if retirement is not None:
                notices.append(
                    f"skipping {run.pathspec} (cycle {cycle}), {retirement.describe()}; "
                    f"continuing from {base.pathspec} (cycle {state.cycle})"
                )
                if cycle > state.cycle:  # a cycle number of this search, not counted
                    retired_cycles.add(cycle)
    return Chain(
        state, newest, last_cycle, last_number, tuple(notices), tuple(sorted(retired_cycles))
    )


def latest_cycle(
    flow_name: str,
    objective_name: str,
    exclude_run: str | None = None,
    from_run: str | None = None,
    branch: str | None = None,
) -> CycleState | None:
    """The state left by the latest successful cycle of this search (or by `from_run`), with
    people's registry decisions (approve, reject, rollback, promote: tags on its run) applied;
    checked as `chain_from` says."""
    return chain_from(flow_name, objective_name, exclude_run, from_run, branch).previous


def _newer_than(runs: list[Any], base: Any) -> list[Any]:
    """The runs (newest first) created after `base`; all of them when `base` is None."""
    return [r for r in runs if base is None or r.created_at > base.created_at]


def _tagged_run(
    runs: list[Any], flow_name: str, objective_name: str, run_id: str, branch: str
) -> Any:
    """The run `--from-run` names: a successful cycle of this search."""
    found = [r for r in runs if r.id == run_id]
    if not found:
        raise LookupError(
            f"--from-run {run_id}: {flow_name}/{run_id} is not a cycle of objective "
            f"{objective_name!r} on branch {branch} (no run tagged "
            f"{objective_tag(objective_name)} on it has that id)"
        )
    if not found[0].successful:
        raise DamagedRunError(found[0].pathspec, _unfinished(found[0], objective_name))
    return found[0]


def _unfinished(run: Any, objective_name: str) -> str:
    """Why a tagged run that is not successful cannot be continued from."""
    end = run.end_task
    if end is not None and not end.finished:
        return (
            f"it is tagged {objective_tag(objective_name)} but its end step is still running: "
            "wait for it to finish"
        )
    how = "failed" if end is not None else "is missing"
    return (
        f"it is tagged {objective_tag(objective_name)}, so it is the newest cycle of the "
        f"search, but it did not finish successfully (its end step {how}), and its history "
        "cannot be trusted"
    )


def _continue_hint(candidates: list[Any], objective_name: str) -> str:
    """How to continue from the newest of `candidates` (successful runs, newest first) that
    reads back whole; starting a new search when none does."""
    for run in candidates:
        try:
            state = read_cycle(run)
        except DamagedRunError:
            continue
        return (
            f"\nTo continue the search of {objective_name!r} from its last good cycle, "
            f"{run.pathspec} (cycle {state.cycle}): python flows/cycle.py run --from-run "
            f"{run.id} (with the same --config objective); or start a new search with --fresh."
        )
    return (
        f"\nNo earlier cycle of {objective_name!r} reads back whole: start a new search with "
        "python flows/cycle.py run --fresh."
    )


def _numbers_used(run: Any) -> tuple[int, int, tuple[str, ...]]:
    """The cycle number and highest trial number a run that the chain skips has used, as far as
    its start step can be read; a notice for what cannot be."""
    cycle, number, notices = 0, -1, []
    try:
        # Runs before the start step proposed kept their proposals in a "propose" step.
        proposals = run["propose" if "propose" in run else "start"].task["proposals"].data
        cycle = max((p.cycle for p in proposals), default=0)
        number = max((p.number for p in proposals), default=-1)
    except Exception as exc:  # noqa: BLE001  recorded: numbering goes on from what can be read
        notices.append(
            f"{run.pathspec}: its proposals cannot be read ({type(exc).__name__}: {exc}); "
            "trial numbers continue after those of the runs that can be"
        )
    try:
        cycle = max(cycle, run["start"].task["plan"].data.cycle)
    except Exception as exc:  # noqa: BLE001  recorded, as above
        notices.append(f"{run.pathspec}: its plan cannot be read ({type(exc).__name__}: {exc})")
    return cycle, number, tuple(notices)


def find_version(
    flow_name: str, objective_name: str, trial_id: str, branch: str | None = None
) -> ChampionBundle:
    """A trial that was ever champion or candidate of a search (in a cycle that is not
    retired), with its package."""
    for run in cycle_runs(flow_name, objective_name, retired=False, branch=branch):
        with all_namespaces():  # the champion artifacts alone: not every cycle's history
            data = end_data(run)
            for bundle in (champion_of(data), getattr(data, "pending", None)):
                if bundle is not None and bundle.trial_id == trial_id:
                    return bundle
    raise LookupError(
        f"objective {objective_name!r} never had {trial_id!r} as champion or candidate on "
        f"branch {default_branch(branch)}"
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
