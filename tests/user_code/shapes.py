"""Things an objective may wrongly name as its data module or model builder, and a builder
that declares the parameters it reads."""

from __future__ import annotations

from typing import Any

from torch import nn

NOT_CALLABLE = 3


class NotADataModule:
    """A class, but not a LightningDataModule."""


def declared(params: dict[str, Any], input_shape: tuple[int, ...], n_outputs: int) -> nn.Module:
    """An MLP with one hidden layer of `hidden` units."""
    hidden = int(params.get("hidden", 16))
    n_in = 1
    for side in input_shape:
        n_in *= side
    return nn.Sequential(
        nn.Flatten(), nn.Linear(n_in, hidden), nn.ReLU(), nn.Linear(hidden, n_outputs)
    )


declared.params = ("hidden",)  # type: ignore[attr-defined]  # what factory_lib.checks reads
