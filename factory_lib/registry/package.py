"""What it takes to rebuild a model, and the champion bundle one cycle hands to the next.

Pydantic only (no torch): every step can read these cheaply.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

from factory_lib.data.splits import Preprocessing
from factory_lib.objective import Objective
from factory_lib.registry.card import ModelCard
from factory_lib.registry.gate import Champion, FrozenModel


class ModelPackage(FrozenModel):
    """Everything `predict` needs: how to build the network, its weights, its preprocessing."""

    objective: Objective
    params: dict[str, Any]
    input_shape: tuple[int, ...]
    n_outputs: int
    preprocessing: Preprocessing | None
    weights: bytes
    weights_sha: str
    trial_id: str


class Exports(BaseModel):
    """The exported champion and the evidence that it predicts what the trained one does."""

    model_config = ConfigDict(frozen=True)

    trial_id: str
    torchscript: bytes
    onnx: bytes
    max_abs_diff: dict[str, float]
    tolerance: float
    input_shape: tuple[int, ...]


class ChampionBundle(FrozenModel):
    """A champion (or a candidate awaiting approval) with everything it brings."""

    champion: Champion
    package: ModelPackage
    model_card: ModelCard | None = None
    exports: Exports | None = None

    @classmethod
    def of(
        cls,
        champion: Champion | None,
        package: ModelPackage | None,
        model_card: ModelCard | dict[str, Any] | None = None,
        exports: Exports | None = None,
    ) -> ChampionBundle | None:
        """The bundle of a cycle's champion artifacts; None while there is no champion.

        A model card stored as a plain dict (cycles from before cards were typed) is read into a
        `ModelCard`.
        """
        if champion is None or package is None:
            return None
        card = ModelCard.model_validate(model_card) if isinstance(model_card, dict) else model_card
        return cls(champion=champion, package=package, model_card=card, exports=exports)

    @property
    def trial_id(self) -> str:
        return self.champion.trial_id


# Candidates awaiting approval were their own type; pickles of them load as bundles.
Candidate = ChampionBundle
