"""Fidelity checkpoints: what a trial keeps to continue exactly where it stopped."""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn


def serialise(net: nn.Module) -> bytes:
    """A network's weights as bytes (CPU tensors), as history keeps them."""
    buf = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in net.state_dict().items()}, buf)
    return buf.getvalue()


RandomState = tuple[torch.Tensor, torch.Tensor | None]  # torch's CPU and GPU random states


def random_state() -> RandomState:
    """torch's random state now, on the CPU and (when there is one) the GPU."""
    return torch.get_rng_state(), torch.cuda.get_rng_state() if torch.cuda.is_available() else None


@dataclass(frozen=True)
class Checkpoint:
    """Where a trial stopped at a fidelity rung: all it needs to go on as if it never stopped."""

    net: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    curve: tuple[float, ...]
    early_stopping_best: float | None  # the best validation value so far, in the metric's units
    early_stopping_wait: int  # epochs since it improved
    rng: torch.Tensor  # torch's random state (dropout masks) after the last epoch
    cuda_rng: torch.Tensor | None = None  # the same on the GPU, when it trained on one

    @classmethod
    def take(
        cls,
        net: nn.Module,
        optimizer: dict[str, Any],
        curve: Sequence[float],
        early_stopping_best: float | None,
        early_stopping_wait: int,
        random: RandomState,
    ) -> bytes:
        """A checkpoint of a trial that stopped at its rung, as bytes (CPU tensors)."""
        return cls(
            net={k: v.detach().cpu().clone() for k, v in net.state_dict().items()},
            optimizer=optimizer,
            curve=tuple(curve),
            early_stopping_best=early_stopping_best,
            early_stopping_wait=early_stopping_wait,
            rng=random[0],
            cuda_rng=random[1],
        ).to_bytes()

    def restore_random_state(self) -> None:
        torch.set_rng_state(self.rng)
        if self.cuda_rng is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state(self.cuda_rng)

    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        torch.save(asdict(self), buf)
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, blob: bytes) -> Checkpoint:
        return cls(**torch.load(io.BytesIO(blob), weights_only=True))


CheckpointSource = Callable[[], bytes]
