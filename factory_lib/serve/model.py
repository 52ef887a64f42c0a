"""The served model: the registry's current champion, run by onnxruntime from its checked export.

The exports take raw features encoded (factory_lib.registry.export) and hold the
standardisation; what is left to do here is the encoding (tables) and, for classification,
turning class scores into the labels `ChampionModel.predict` returns. A champion without
exports (an export that failed its check) is served by its PyTorch network instead.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from factory_lib.registry.package import ChampionBundle
from factory_lib.runs.champions import champion_bundle
from factory_lib.runs.client import FLOW_NAME, latest_cycle


@dataclass(frozen=True)
class Current:
    """The registry's answer: the champion being served now and the cycle that says so."""

    bundle: ChampionBundle
    run: str  # the latest cycle's run pathspec, whose tags (approve, rollback) were applied


def current_champion(objective_name: str, branch: str | None = None) -> Current:
    """The objective's current champion: the one read of the registry that serving makes.

    A promotion awaiting approval is not the champion (`CycleState.pending`) and is not served.
    `branch` is the search's @project branch (yours by default; production's is "prod").
    """
    state = latest_cycle(FLOW_NAME, objective_name, branch=branch)
    bundle = champion_bundle(state, objective_name, branch)
    assert state is not None  # champion_bundle refuses a search without a cycle
    return Current(bundle, state.run_pathspec)


@dataclass(frozen=True)
class ModelVersion:
    """What identifies the served model, and what `/model` and the metrics say of it."""

    trial_id: str
    weights_sha: str
    promoted_in_cycle: int
    run: str
    runtime: str  # onnxruntime or torch


class ServedModel:
    """One champion ready to answer: encoded rows in, predictions (labels or values) out."""

    def __init__(self, current: Current, threads: int = 0) -> None:
        bundle = current.bundle
        package = bundle.package
        self.bundle = bundle
        self.objective = package.objective
        self.preprocessing = package.preprocessing
        self.input_shape = package.input_shape
        self.features = int(np.prod(package.input_shape))
        self.classification = package.objective.task == "classification"
        prep = package.preprocessing
        self.classes = prep.classes if prep is not None else None
        runtime, self._outputs = (
            ("onnxruntime", _onnx_runner(bundle.exports.onnx, threads))
            if bundle.exports is not None
            else ("torch", _torch_runner(bundle))
        )
        self.version = ModelVersion(
            trial_id=bundle.trial_id,
            weights_sha=package.weights_sha,
            promoted_in_cycle=bundle.champion.promoted_in_cycle,
            run=current.run,
            runtime=runtime,
        )

    def encode(self, x: Any) -> np.ndarray:
        """Raw inputs (arrays of the features, or table rows) → float32 rows, flat. Images come
        as the exports take them, decoded pixels: only a table's rows need encoding here."""
        prep = self.preprocessing
        table = prep is not None and prep.encoder is not None and prep.encoder.kind == "table"
        encoded = prep.encode(x) if table and prep is not None else np.asarray(x, np.float32)
        return np.ascontiguousarray(encoded.reshape(len(encoded), -1), dtype=np.float32)

    def predict(self, encoded: np.ndarray) -> list[Any]:
        """Predictions for encoded rows, as `ChampionModel.predict` gives them, JSON-ready."""
        out = self._outputs(encoded)
        if not self.classification:
            return [float(v) for v in out.reshape(-1)]
        labels = out.argmax(axis=1)
        if self.classes is not None:
            return [_plain(self.classes[i]) for i in labels]
        return [int(i) for i in labels]

    def describe(self) -> dict[str, Any]:
        """What `/model` answers: version, lineage, metrics and the model card."""
        champion = self.bundle.champion
        evaluation = champion.record.result.evaluation
        card = self.bundle.model_card
        return {
            "objective": self.objective.name,
            "trial_id": self.version.trial_id,
            "version": self.version.weights_sha,
            "promoted_in_cycle": self.version.promoted_in_cycle,
            "cycle_run": self.version.run,
            "runtime": self.version.runtime,
            "input_shape": list(self.input_shape),
            "metric": {"name": champion.metric, "test": champion.test_value},
            "metrics": (
                {"val": dict(evaluation.val), "test": dict(evaluation.test)}
                if evaluation is not None
                else {}
            ),
            "model_card": card.model_dump(mode="json") if card is not None else None,
        }


def _plain(value: Any) -> Any:
    """A class label as JSON takes it (numpy scalars become Python ones)."""
    return value.item() if isinstance(value, np.generic) else value


def _onnx_runner(blob: bytes, threads: int) -> Callable[[np.ndarray], np.ndarray]:
    """The checked ONNX export in an onnxruntime session; onnxruntime alone runs it."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads  # 0: onnxruntime's default, one per core
    session = onnxruntime.InferenceSession(blob, options, providers=["CPUExecutionProvider"])

    def run(encoded: np.ndarray) -> np.ndarray:
        out: np.ndarray = session.run(None, {"x": encoded})[0]
        return out

    return run


def _torch_runner(bundle: ChampionBundle) -> Callable[[np.ndarray], np.ndarray]:
    """The trained network itself, for a champion whose exports failed their check."""
    import torch

    from factory_lib.registry.model import ChampionModel

    champion = ChampionModel(bundle.package)
    prep = bundle.package.preprocessing
    shape = bundle.package.input_shape
    regression = bundle.package.objective.task == "regression"

    def run(encoded: np.ndarray) -> np.ndarray:
        x = prep.standardise(encoded) if prep is not None else encoded.reshape((-1, *shape))
        with torch.no_grad():
            out: np.ndarray = champion.net(torch.from_numpy(np.ascontiguousarray(x))).numpy()
        if regression:
            out = prep.inverse_y(out.reshape(-1)) if prep is not None else out.reshape(-1)
        return out

    return run
