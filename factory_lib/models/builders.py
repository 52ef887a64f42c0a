"""Models built from a proposal's parameters: MLP, small CNN, or the user's own builder."""

from __future__ import annotations

from collections.abc import Mapping
from math import prod
from typing import Any

import torch
from torch import nn

from factory_lib.imports import resolve
from factory_lib.models.grammar import check
from factory_lib.models.params import CHOICES
from factory_lib.objective import Objective

# Used when a parameter is neither in the search space nor fixed by the objective.
DEFAULTS: dict[str, Any] = {
    "depth": 2,
    "width": 128,
    "activation": "relu",
    "dropout": 0.0,
    "norm": "none",
    "blocks": 2,
    "channels": 16,
    "kernel": 3,
}
ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "tanh": nn.Tanh,
    "silu": nn.SiLU,
    "leaky_relu": nn.LeakyReLU,
}


class ModelShapeError(ValueError):
    """Parameters that cannot make a model for this data (the message names them)."""


def _param(params: Mapping[str, Any], name: str) -> Any:
    return params.get(name, DEFAULTS[name])


def _activation(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise ModelShapeError(f"activation {name!r} is not one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


def build_mlp(params: Mapping[str, Any], input_shape: tuple[int, ...], n_outputs: int) -> nn.Module:
    """depth hidden layers of `width` units, each Linear → norm → activation → dropout."""
    depth, width = int(_param(params, "depth")), int(_param(params, "width"))
    norm, dropout = str(_param(params, "norm")), float(_param(params, "dropout"))
    if depth < 0 or width < 1:
        raise ModelShapeError(
            f"mlp needs depth >= 0 and width >= 1, got depth={depth} width={width}"
        )
    if norm not in CHOICES["norm"]:
        raise ModelShapeError(f"norm {norm!r} is not one of none, batch, layer")
    layers: list[nn.Module] = [nn.Flatten()]
    n_in = prod(input_shape)
    for _ in range(depth):
        layers.append(nn.Linear(n_in, width))
        if norm == "batch":
            layers.append(nn.BatchNorm1d(width))
        elif norm == "layer":
            layers.append(nn.LayerNorm(width))
        layers.append(_activation(str(_param(params, "activation"))))
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        n_in = width
    layers.append(nn.Linear(n_in, n_outputs))
    return nn.Sequential(*layers)


def build_cnn(params: Mapping[str, Any], input_shape: tuple[int, ...], n_outputs: int) -> nn.Module:
    """`blocks` × (Conv → BatchNorm → activation → 2×2 max-pool), then a linear head."""
    if len(input_shape) != 3:
        raise ModelShapeError(f"cnn needs image-shaped input (C, H, W), got {input_shape}")
    blocks, channels, kernel = (int(_param(params, k)) for k in ("blocks", "channels", "kernel"))
    channels_in, height, width = input_shape
    if kernel % 2 == 0 or kernel > min(height, width):
        raise ModelShapeError(
            f"kernel={kernel} must be odd and at most the image side {min(height, width)}"
        )
    if blocks < 1 or min(height, width) // 2**blocks < 1:
        raise ModelShapeError(f"blocks={blocks} pools a {height}x{width} image below 1x1")
    layers: list[nn.Module] = []
    for b in range(blocks):
        out = channels * 2**b
        layers += [
            nn.Conv2d(channels_in, out, kernel, padding=kernel // 2),
            nn.BatchNorm2d(out),
            _activation(str(_param(params, "activation"))),
            nn.MaxPool2d(2),
        ]
        channels_in = out
    dropout = float(_param(params, "dropout"))
    side = (height // 2**blocks) * (width // 2**blocks)
    layers += [nn.Flatten(), nn.Dropout(dropout), nn.Linear(channels_in * side, n_outputs)]
    return nn.Sequential(*layers)


def compile_blocks(
    blocks: list[dict[str, Any]], input_shape: tuple[int, ...], n_outputs: int
) -> nn.Module:
    """Build a checked architecture; a linear head to `n_outputs` ends it."""

    class Residual(nn.Module):
        def __init__(self, body: nn.Module) -> None:
            super().__init__()
            self.body = body

        def forward(self, x: Any) -> Any:
            return x + self.body(x)

    layers: list[nn.Module] = []
    shape = tuple(input_shape)
    for block in blocks:
        kind, image = block["type"], len(shape) == 3
        if kind == "linear":
            if image or len(shape) > 1:
                layers.append(nn.Flatten())
            layers.append(nn.Linear(prod(shape), block["units"]))
            shape = (block["units"],)
        elif kind == "conv":
            layers.append(
                nn.Conv2d(
                    shape[0], block["channels"], block["kernel"], padding=block["kernel"] // 2
                )
            )
            shape = (block["channels"], shape[1], shape[2])
        elif kind == "pool":
            layers.append(nn.MaxPool2d(2))
            shape = (shape[0], shape[1] // 2, shape[2] // 2)
        elif kind == "norm":
            layers.append(nn.BatchNorm2d(shape[0]) if image else nn.BatchNorm1d(shape[0]))
        elif kind == "activation":
            layers.append(ACTIVATIONS[block["fn"]]())
        elif kind == "dropout":
            layers.append(nn.Dropout(float(block["p"])))
        elif kind == "residual":
            c = shape[0]
            body = [nn.Conv2d(c, c, 3, padding=1) if image else nn.Linear(c, c) for _ in range(2)]
            layers.append(Residual(nn.Sequential(body[0], nn.ReLU(), body[1])))
    layers += [nn.Flatten(), nn.Linear(prod(shape), n_outputs)]
    return nn.Sequential(*layers)


BUILDERS = {"mlp": build_mlp, "cnn": build_cnn}


def build_arch(
    objective: Objective, params: Mapping[str, Any], input_shape: tuple[int, ...], n_outputs: int
) -> nn.Module:
    """An architecture proposed as data, checked against the grammar, then compiled."""
    grammar = objective.model.grammar
    if grammar is None or "architecture" not in params:
        raise ModelShapeError("family 'arch' needs model.grammar and an 'architecture' parameter")
    blocks, errors = check(params["architecture"], grammar, input_shape, n_outputs)
    if errors:
        raise ModelShapeError("; ".join(errors))
    return compile_blocks(blocks, input_shape, n_outputs)


def build_model(
    objective: Objective, params: Mapping[str, Any], input_shape: tuple[int, ...], n_outputs: int
) -> nn.Module:
    """Compile a proposal's parameters into a module, checking shapes with one dry forward pass."""
    if objective.model.builder is not None:
        model = resolve(objective.model.builder, "model.builder")(
            dict(params), input_shape, n_outputs
        )
        if not isinstance(model, nn.Module):
            raise ModelShapeError(
                f"model.builder returned {type(model).__name__}, not an nn.Module"
            )
    else:
        family = str(params.get("family", objective.model.families[0]))  # one family: it
        if family not in objective.model.families:
            raise ModelShapeError(
                f"family {family!r} is not in model.families {objective.model.families}"
            )
        if family == "arch":
            model = build_arch(objective, params, input_shape, n_outputs)
        else:
            model = BUILDERS[family](params, input_shape, n_outputs)
    model.eval()
    with torch.no_grad():
        out = model(torch.zeros((2, *input_shape)))
    if out.shape != (2, n_outputs):
        raise ModelShapeError(f"model output shape {tuple(out.shape)[1:]} is not ({n_outputs},)")
    return model.train()


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
