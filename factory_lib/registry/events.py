"""The promotion log: promotions, approvals, rejections, rollbacks and champions promoted in
from another branch, recorded as run tags."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

from factory_lib.registry.gate import FrozenModel
from factory_lib.registry.package import ChampionBundle

REGISTRY_TAG = "registry"
EventKind = Literal["promoted", "pending", "approved", "rejected", "rollback", "promoted_from"]
# People's decisions, recorded as tags; the others are the gate's, recorded in history.
DECISIONS = ("approved", "rejected", "rollback", "promoted_from")


class RegistryEvent(FrozenModel):
    """One entry of an objective's promotion log; the log is only ever appended to."""

    kind: EventKind
    trial_id: str
    run: str
    at: str  # UTC, e.g. 20261126T051900Z
    actor: str
    reason: str = ""
    branch: str = ""  # promoted_from: the branch whose champion (or candidate) this was


def utc_stamp() -> str:
    import datetime

    return datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")


def event_tag(
    kind: EventKind, trial_id: str, actor: str, reason: str = "", branch: str = ""
) -> str:
    """A run tag that records a person's registry decision on that cycle's run; `branch`
    (promoted_from) names where the trial comes from."""
    clean = " ".join(reason.split())[:200]
    trial = f"{trial_id}@{branch}" if branch else trial_id
    return f"{REGISTRY_TAG}:{kind}:{trial}:{utc_stamp()}:{actor}:{clean}"


def events_from_tags(tags: Sequence[str], run: str) -> list[RegistryEvent]:
    """The registry events recorded as tags on a run, oldest first."""
    found = []
    for tag in tags:
        parts = tag.split(":", 5)
        if len(parts) == 6 and parts[0] == REGISTRY_TAG and parts[1] in DECISIONS:
            kind: Any = parts[1]
            trial_id, _, branch = parts[2].partition("@")
            found.append(
                RegistryEvent(
                    kind=kind,
                    trial_id=trial_id,
                    run=run,
                    at=parts[3],
                    actor=parts[4],
                    reason=parts[5],
                    branch=branch,
                )
            )
    return sorted(found, key=lambda e: e.at)


def apply_events(
    bundle: ChampionBundle | None,
    pending: ChampionBundle | None,
    events: Sequence[RegistryEvent],
    version: Callable[[RegistryEvent], ChampionBundle],
) -> tuple[ChampionBundle | None, ChampionBundle | None, tuple[RegistryEvent, ...]]:
    """The champion, the pending candidate and the applied events after people's decisions.

    `version(event)` finds the model a rollback names (one that was ever champion or candidate
    of this search) or a promotion from another branch names (one of that branch's).
    """
    applied: list[RegistryEvent] = []
    for event in events:
        decided = pending if pending is not None and pending.trial_id == event.trial_id else None
        if event.kind == "approved" and decided is not None:
            bundle, pending = decided, None
        elif event.kind == "rejected" and decided is not None:
            pending = None
        elif event.kind in ("rollback", "promoted_from"):
            bundle = version(event)
        else:
            continue
        applied.append(event)
    return bundle, pending, tuple(applied)
