"""A packaged model loaded back, ready to predict on raw inputs."""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

import numpy as np

from factory_lib.registry.package import ModelPackage

if TYPE_CHECKING:
    from torch import nn


class ChampionModel:
    """A packaged model ready to predict on raw feature arrays."""

    def __init__(self, package: ModelPackage) -> None:
        import torch

        from factory_lib.models.builders import build_model

        self.package = package
        self.net: nn.Module = build_model(
            package.objective, package.params, package.input_shape, package.n_outputs
        )
        self.net.load_state_dict(torch.load(io.BytesIO(package.weights), weights_only=True))
        self.net.eval()

    def outputs(self, x: np.ndarray) -> np.ndarray:
        """Raw network outputs for raw features (class scores, or standardised values)."""
        import torch

        prep = self.package.preprocessing
        arr = prep.transform_x(x) if prep is not None else np.asarray(x, np.float32)
        with torch.no_grad():
            out: np.ndarray = self.net(torch.from_numpy(np.ascontiguousarray(arr))).numpy()
        return out

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Class labels for classification, values in the target's units for regression."""
        out = self.outputs(x)
        if self.package.objective.task == "classification":
            labels: np.ndarray = out.argmax(axis=1)
            return labels
        prep = self.package.preprocessing
        return prep.inverse_y(out.reshape(-1)) if prep is not None else out.reshape(-1)
