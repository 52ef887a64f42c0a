"""Champions read back from runs: the current one, any earlier version, the promotion log; and
people's registry decisions written onto runs as tags."""

from __future__ import annotations

from factory_lib.history import CycleState
from factory_lib.registry import EventKind, RegistryEvent, event_tag
from factory_lib.registry.model import ChampionModel
from factory_lib.runs.client import FLOW_NAME, all_namespaces, find_version, latest_cycle


def load_champion(objective_name: str, flow_name: str = FLOW_NAME) -> ChampionModel:
    """The current champion of an objective, from its latest successful cycle."""
    return champion_of(latest_cycle(flow_name, objective_name), objective_name)


def champion_of(state: CycleState | None, objective_name: str) -> ChampionModel:
    """The champion a cycle's state holds; a clear error when there is none yet."""
    if state is None or state.bundle is None:
        raise LookupError(f"objective {objective_name!r} has no champion yet: run a cycle first")
    return ChampionModel(state.bundle.package)


def load_version(objective_name: str, trial_id: str, flow_name: str = FLOW_NAME) -> ChampionModel:
    """Any model that was ever champion (or awaited approval) of an objective."""
    return ChampionModel(find_version(flow_name, objective_name, trial_id).package)


def versions(objective_name: str, flow_name: str = FLOW_NAME) -> tuple[RegistryEvent, ...]:
    """The objective's promotion log: every promotion, approval, rejection and rollback."""
    state = latest_cycle(flow_name, objective_name)
    return state.events if state is not None else ()


def record_decision(
    state: CycleState, kind: EventKind, trial_id: str, actor: str, reason: str
) -> None:
    """Record a person's registry decision as a tag on the cycle's run (history is untouched)."""
    from metaflow.client.core import Run

    with all_namespaces():
        Run(state.run_pathspec).add_tag(event_tag(kind, trial_id, actor, reason))
