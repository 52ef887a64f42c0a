"""Export: the champion as TorchScript and ONNX, preprocessing included, checked before kept.

Each export takes the raw features as float32 arrays of the data's input shape (for a table,
its rows encoded by `ChampionModel.export_input`: imputed, one-hot; for images, decoded
pixels (N, C, H, W) in 0–255) and returns what `ChampionModel.predict` computes before its
final step: class scores (argmax for the label) or the regression value in the target's own
units. The standardisation is inside the graph; the encoding, which works on strings and
files, is not, and the model card says what it is. Loading one needs only torch (TorchScript)
or onnxruntime (ONNX): neither this repo's training code nor Metaflow.
"""

from __future__ import annotations

import io
import warnings
from typing import Any

import numpy as np
import torch
from torch import nn

from factory_lib.registry.model import ChampionModel
from factory_lib.registry.package import Exports, ModelPackage

TOLERANCE = 1e-4
ONNX_OPSET = 17


class ExportMismatch(RuntimeError):
    """An export whose predictions differ from the trained model's: it is not kept."""


class _Pipeline(nn.Module):
    """Standardise → network → (regression) back to the target's units."""

    def __init__(self, champion: ChampionModel) -> None:
        super().__init__()
        prep = champion.package.preprocessing
        shape = champion.package.input_shape
        mean = torch.tensor(prep.x_mean if prep else [0.0], dtype=torch.float32)
        std = torch.tensor(prep.x_std if prep else [1.0], dtype=torch.float32)
        self.mean: torch.Tensor
        self.std: torch.Tensor
        self.register_buffer("mean", mean.reshape(shape) if prep else mean)
        self.register_buffer("std", std.reshape(shape) if prep else std)
        self.y_mean = float(prep.y_mean) if prep else 0.0
        self.y_std = float(prep.y_std) if prep else 1.0
        self.regression = champion.package.objective.task == "regression"
        self.shape = tuple(shape)
        self.net = champion.net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape((x.shape[0], *self.shape))  # raw rows may come flat (digits: 64 pixels)
        out: torch.Tensor = self.net((x - self.mean) / self.std)
        if self.regression:
            out = out.squeeze(-1) * self.y_std + self.y_mean
        return out


def reference_outputs(champion: ChampionModel, x: Any) -> np.ndarray:
    """What the trained model computes for raw `x`, in the exports' output form."""
    out = champion.outputs(x)
    if champion.package.objective.task == "regression":
        return champion.predict(x)
    return out


def export_champion(package: ModelPackage, sample: Any, tolerance: float = TOLERANCE) -> Exports:
    """Export to TorchScript and ONNX; raise ExportMismatch if either disagrees on `sample`
    (raw inputs, as `predict` takes them)."""
    champion = ChampionModel(package)
    pipeline = _Pipeline(champion).eval()
    encoded = champion.export_input(sample)
    x = torch.from_numpy(np.ascontiguousarray(encoded, dtype=np.float32))
    buf, onnx_buf = io.BytesIO(), io.BytesIO()
    # TorchScript and the TorchScript-based ONNX exporter are deprecated in torch 2.13, but
    # they are what loads with torch (or onnxruntime) alone, without Python model code.
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", DeprecationWarning)
        scripted = torch.jit.trace(pipeline, x[:2])  # type: ignore[no-untyped-call]
        torch.jit.save(scripted, buf)
        torch.onnx.export(
            pipeline,
            (x[:2],),
            onnx_buf,  # type: ignore[arg-type]  # the TorchScript exporter writes to file objects
            dynamo=False,
            opset_version=ONNX_OPSET,
            input_names=["x"],
            output_names=["y"],
            dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}},
        )
    exports = Exports(
        trial_id=package.trial_id,
        torchscript=buf.getvalue(),
        onnx=onnx_buf.getvalue(),
        max_abs_diff={},
        tolerance=tolerance,
        input_shape=package.input_shape,
    )
    expected = reference_outputs(champion, sample)
    diffs = {
        "torchscript": float(
            np.abs(run_torchscript(exports.torchscript, encoded) - expected).max()
        ),
        "onnx": float(np.abs(run_onnx(exports.onnx, encoded) - expected).max()),
    }
    bad = {k: v for k, v in diffs.items() if not v <= tolerance}
    if bad:
        raise ExportMismatch(f"exports disagree with the trained model beyond {tolerance}: {bad}")
    return exports.model_copy(update={"max_abs_diff": diffs})


def run_torchscript(blob: bytes, x: np.ndarray) -> np.ndarray:
    """Run a TorchScript export on raw features: torch alone, no project code."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        model = torch.jit.load(io.BytesIO(blob))  # type: ignore[no-untyped-call]
    with torch.no_grad():
        out: np.ndarray = model(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))).numpy()
    return out


def run_onnx(blob: bytes, x: np.ndarray) -> np.ndarray:
    """Run an ONNX export on raw features: onnxruntime alone, no project code."""
    import onnxruntime

    session = onnxruntime.InferenceSession(blob, providers=["CPUExecutionProvider"])
    out: np.ndarray = session.run(None, {"x": np.ascontiguousarray(x, dtype=np.float32)})[0]
    return out
