"""A packaged model loaded back, ready to predict on raw inputs."""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Any

import numpy as np

from factory_lib.registry.package import ModelPackage

if TYPE_CHECKING:
    from torch import nn


class ChampionModel:
    """A packaged model ready to predict on raw inputs, in the form its data source holds:
    a DataFrame with the table's columns, image files (or PIL images, or pixel arrays),
    arrays of the features; for a user data module, a batch as its loaders yield."""

    def __init__(self, package: ModelPackage) -> None:
        import torch

        from factory_lib.models.builders import build_model

        self.package = package
        self.net: nn.Module = build_model(
            package.objective, package.params, package.input_shape, package.n_outputs
        )
        self.net.load_state_dict(torch.load(io.BytesIO(package.weights), weights_only=True))
        self.net.eval()

    def export_input(self, x: Any) -> np.ndarray:
        """Raw inputs as the exports take them: encoded (tables, images), not standardised."""
        prep = self.package.preprocessing
        return prep.encode(x) if prep is not None else np.asarray(x, np.float32)

    def outputs(self, x: Any) -> np.ndarray:
        """Raw network outputs for raw inputs (class scores, or standardised values)."""
        import torch

        prep = self.package.preprocessing
        encoded = self.export_input(x)
        shape = (len(encoded), *self.package.input_shape)
        arr = prep.standardise(encoded) if prep is not None else encoded.reshape(shape)
        with torch.no_grad():
            out: np.ndarray = self.net(torch.from_numpy(np.ascontiguousarray(arr))).numpy()
        return out

    def predict(self, x: Any) -> np.ndarray:
        """Class labels for classification (the target's own values where the data named
        them, else indices), values in the target's units for regression."""
        out = self.outputs(x)
        prep = self.package.preprocessing
        if self.package.objective.task == "classification":
            labels: np.ndarray = out.argmax(axis=1)
            if prep is not None and prep.classes is not None:
                labels = np.asarray(prep.classes)[labels]
            return labels
        return prep.inverse_y(out.reshape(-1)) if prep is not None else out.reshape(-1)
