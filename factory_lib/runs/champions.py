"""Champions read back from runs: the current one, any earlier version, the promotion log; and
people's registry decisions written onto runs as tags."""

from __future__ import annotations

from factory_lib.history import CycleState
from factory_lib.registry import ChampionBundle, EventKind, RegistryEvent, event_tag
from factory_lib.registry.model import ChampionModel
from factory_lib.runs.client import (
    FLOW_NAME,
    all_namespaces,
    default_branch,
    find_version,
    latest_cycle,
    nothing_found,
)


def load_champion(
    objective_name: str, branch: str | None = None, flow_name: str = FLOW_NAME
) -> ChampionModel:
    """The current champion of a search (`branch`: yours by default, e.g. "prod"), from its
    latest successful cycle."""
    state = latest_cycle(flow_name, objective_name, branch=branch)
    return champion_of(state, objective_name, branch)


def champion_of(state: CycleState | None, objective_name: str, branch: str | None) -> ChampionModel:
    """The champion a cycle's state holds; a clear error, saying where it looked, when there
    is none yet."""
    return ChampionModel(champion_bundle(state, objective_name, branch).package)


def champion_bundle(
    state: CycleState | None, objective_name: str, branch: str | None
) -> ChampionBundle:
    """The champion bundle a cycle's state holds (a pending one is not the champion);
    LookupError, saying where it looked, when the search has none yet."""
    if state is None:
        raise LookupError(nothing_found(objective_name, branch))
    if state.bundle is None:
        raise LookupError(
            f"objective {objective_name!r} has no champion yet on branch "
            f"{default_branch(branch)} ({state.run_pathspec} promoted none): run another cycle"
        )
    return state.bundle


def load_version(
    objective_name: str, trial_id: str, branch: str | None = None, flow_name: str = FLOW_NAME
) -> ChampionModel:
    """Any model that was ever champion (or awaited approval) of a search."""
    return ChampionModel(find_version(flow_name, objective_name, trial_id, branch).package)


def versions(
    objective_name: str, branch: str | None = None, flow_name: str = FLOW_NAME
) -> tuple[RegistryEvent, ...]:
    """A search's promotion log: every promotion, approval, rejection, rollback and champion
    promoted in from another branch."""
    state = latest_cycle(flow_name, objective_name, branch=branch)
    return state.events if state is not None else ()


def record_decision(
    state: CycleState,
    kind: EventKind,
    trial_id: str,
    actor: str,
    reason: str,
    from_branch: str = "",
) -> None:
    """Record a person's registry decision as a tag on the cycle's run (history is untouched)."""
    from metaflow.client.core import Run

    with all_namespaces():
        Run(state.run_pathspec).add_tag(event_tag(kind, trial_id, actor, reason, from_branch))
