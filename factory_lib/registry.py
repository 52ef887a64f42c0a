"""Champion and challenger: the promotion gate, the packaged model, and loading it back.

The challenger is the cycle's best eligible trial by validation reward (selection never looks
at the test split); it replaces the champion only when it beats it on the held-out test split
by more than `promotion.min_improvement`, in the metric's direction.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict

from factory_lib.data import Preprocessing
from factory_lib.objective import METRIC_DIRECTIONS, Objective
from factory_lib.records import TrialRecord
from factory_lib.reward import better

if TYPE_CHECKING:
    from torch import nn


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True)


class Champion(_Frozen):
    """The best model so far and where it came from."""

    record: TrialRecord
    promoted_in_cycle: int
    metric: str
    test_value: float

    @property
    def trial_id(self) -> str:
        return self.record.trial_id


class PromotionDecision(_Frozen):
    status: Literal["promoted", "kept", "no_candidate"]
    reason: str
    challenger: str | None = None
    champion: str | None = None
    delta: float | None = None


class ModelPackage(_Frozen):
    """Everything `predict` needs: how to build the network, its weights, its preprocessing."""

    objective: Objective
    params: dict[str, Any]
    input_shape: tuple[int, ...]
    n_outputs: int
    preprocessing: Preprocessing | None
    weights: bytes
    weights_sha: str
    trial_id: str


def challenger_of(records: Sequence[TrialRecord]) -> TrialRecord | None:
    """The best eligible trial by validation reward (never by a test metric)."""
    eligible = [r for r in records if r.eligible]
    return max(eligible, key=lambda r: r.val_reward or 0.0) if eligible else None


def decide(
    objective: Objective, champion: Champion | None, records: Sequence[TrialRecord]
) -> tuple[PromotionDecision, Champion | None]:
    """The promotion gate: returns the decision and the champion after it."""
    challenger = challenger_of(records)
    if challenger is None:
        reason = "no trial of this cycle completed within the constraints"
        return PromotionDecision(
            status="no_candidate", reason=reason, champion=champion and champion.trial_id
        ), champion
    metric = objective.promotion_metric
    assert challenger.result.evaluation is not None
    value = challenger.result.evaluation.metrics("test")[metric]
    new = Champion(
        record=challenger,
        promoted_in_cycle=challenger.proposal.cycle,
        metric=metric,
        test_value=value,
    )
    if champion is None:
        return PromotionDecision(
            status="promoted",
            reason="first eligible trial of the search",
            challenger=challenger.trial_id,
        ), new
    direction = (
        METRIC_DIRECTIONS[metric]
        if metric != objective.reward.metric
        else objective.primary_direction
    )
    delta = value - champion.test_value
    margin = objective.promotion.min_improvement
    if better(value, champion.test_value, direction, margin):
        reason = (
            f"test {metric} {value:.4g} beats {champion.test_value:.4g} by more than {margin:g}"
        )
        return PromotionDecision(
            status="promoted",
            reason=reason,
            challenger=challenger.trial_id,
            champion=champion.trial_id,
            delta=delta,
        ), new
    reason = (
        f"test {metric} {value:.4g} does not beat {champion.test_value:.4g} by more than {margin:g}"
    )
    return PromotionDecision(
        status="kept",
        reason=reason,
        challenger=challenger.trial_id,
        champion=champion.trial_id,
        delta=delta,
    ), champion


class ChampionModel:
    """A packaged model ready to predict on raw feature arrays."""

    def __init__(self, package: ModelPackage) -> None:
        import torch

        from factory_lib.models import build_model

        self.package = package
        self.net: nn.Module = build_model(
            package.objective, package.params, package.input_shape, package.n_outputs
        )
        self.net.load_state_dict(torch.load(io.BytesIO(package.weights), weights_only=True))
        self.net.eval()

    def _outputs(self, x: np.ndarray) -> np.ndarray:
        import torch

        prep = self.package.preprocessing
        arr = prep.transform_x(x) if prep is not None else np.asarray(x, np.float32)
        with torch.no_grad():
            out: np.ndarray = self.net(torch.from_numpy(np.ascontiguousarray(arr))).numpy()
        return out

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Class labels for classification, values in the target's units for regression."""
        out = self._outputs(x)
        if self.package.objective.task == "classification":
            labels: np.ndarray = out.argmax(axis=1)
            return labels
        prep = self.package.preprocessing
        return prep.inverse_y(out.reshape(-1)) if prep is not None else out.reshape(-1)


def load_champion(objective_name: str, flow_name: str = "CycleFlow") -> ChampionModel:
    """The current champion of an objective, from its latest successful cycle."""
    from factory_lib.history import latest_cycle

    state = latest_cycle(flow_name, objective_name)
    if state is None or state.champion_package is None:
        raise LookupError(f"objective {objective_name!r} has no champion yet: run a cycle first")
    return ChampionModel(state.champion_package)
