"""The promotion log: promotions, approvals, rejections and rollbacks, recorded as run tags."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

from factory_lib.registry.gate import FrozenModel
from factory_lib.registry.package import ChampionBundle

REGISTRY_TAG = "registry"
EventKind = Literal["promoted", "pending", "approved", "rejected", "rollback"]


class RegistryEvent(FrozenModel):
    """One entry of an objective's promotion log; the log is only ever appended to."""

    kind: EventKind
    trial_id: str
    run: str
    at: str  # UTC, e.g. 20261126T051900Z
    actor: str
    reason: str = ""


def utc_stamp() -> str:
    import datetime

    return datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")


def event_tag(kind: EventKind, trial_id: str, actor: str, reason: str = "") -> str:
    """A run tag that records a person's registry decision on that cycle's run."""
    clean = " ".join(reason.split())[:200]
    return f"{REGISTRY_TAG}:{kind}:{trial_id}:{utc_stamp()}:{actor}:{clean}"


def events_from_tags(tags: Sequence[str], run: str) -> list[RegistryEvent]:
    """The registry events recorded as tags on a run, oldest first."""
    found = []
    for tag in tags:
        parts = tag.split(":", 5)
        if (
            len(parts) == 6
            and parts[0] == REGISTRY_TAG
            and parts[1] in ("approved", "rejected", "rollback")
        ):
            kind: Any = parts[1]
            found.append(
                RegistryEvent(
                    kind=kind,
                    trial_id=parts[2],
                    run=run,
                    at=parts[3],
                    actor=parts[4],
                    reason=parts[5],
                )
            )
    return sorted(found, key=lambda e: e.at)


def apply_events(
    bundle: ChampionBundle | None,
    pending: ChampionBundle | None,
    events: Sequence[RegistryEvent],
    version: Callable[[str], ChampionBundle],
) -> tuple[ChampionBundle | None, ChampionBundle | None, tuple[RegistryEvent, ...]]:
    """The champion, the pending candidate and the applied events after people's decisions.

    `version(trial_id)` finds a model that was ever champion or candidate (for a rollback).
    """
    applied: list[RegistryEvent] = []
    for event in events:
        decided = pending if pending is not None and pending.trial_id == event.trial_id else None
        if event.kind == "approved" and decided is not None:
            bundle, pending = decided, None
        elif event.kind == "rejected" and decided is not None:
            pending = None
        elif event.kind == "rollback":
            bundle = version(event.trial_id)
        else:
            continue
        applied.append(event)
    return bundle, pending, tuple(applied)
