"""Model builders for the failure tests, named by import path in test objectives.

`behaviour` is a search-space parameter of the test objective: each value plants one way a
real trial goes wrong. FACTORY_TEST_FAIL_ALL=1 makes every trial raise (a cycle in which
nothing works).
"""

from __future__ import annotations

import os
import time
from typing import Any

import torch
from torch import nn


class _Hang(nn.Module):
    """Slow enough per batch to run past a short trial timeout."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            time.sleep(1.0)
        out: torch.Tensor = self.net(x)
        return out


class _NaN(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.net(x) * float("nan")
        return out


def planted(params: dict[str, Any], input_shape: tuple[int, ...], n_outputs: int) -> nn.Module:
    behaviour = params.get("behaviour", "ok")
    if os.environ.get("FACTORY_TEST_FAIL_ALL") == "1" or behaviour == "raise":
        raise RuntimeError(f"planted failure (behaviour={behaviour})")
    net = nn.Sequential(
        nn.Flatten(), nn.Linear(input_shape[-1], int(params.get("width", 8))), nn.ReLU()
    )
    net.append(nn.Linear(int(params.get("width", 8)), n_outputs))
    if behaviour == "nan":
        return _NaN(net)
    if behaviour == "hang":
        return _Hang(net)
    return net
