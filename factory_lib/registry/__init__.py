"""The registry: champion and challenger, what a champion is made of, and its log.

- `gate`: the promotion gate (challenger by validation, re-measured over seeds, judged on test).
- `package`: `ModelPackage`, `Exports` and the `ChampionBundle` a cycle hands on.
- `card`: the `ModelCard` of every promoted model.
- `events`: the promotion log (promotions, approvals, rejections, rollbacks as run tags).
- `model`, `export`: a package loaded back to predict, and its TorchScript/ONNX exports (torch).

Reading champions back from runs is `factory_lib.runs` (`load_champion`).
"""

from factory_lib.registry.card import ModelCard
from factory_lib.registry.events import (
    EventKind,
    RegistryEvent,
    apply_events,
    event_tag,
    events_from_tags,
    utc_stamp,
)
from factory_lib.registry.gate import Champion, Evidence, PromotionDecision, decide
from factory_lib.registry.package import Candidate, ChampionBundle, Exports, ModelPackage

__all__ = [
    "Candidate",
    "Champion",
    "ChampionBundle",
    "EventKind",
    "Evidence",
    "Exports",
    "ModelCard",
    "ModelPackage",
    "PromotionDecision",
    "RegistryEvent",
    "apply_events",
    "decide",
    "event_tag",
    "events_from_tags",
    "utc_stamp",
]
