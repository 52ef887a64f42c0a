"""Model builders for the failure tests, named by import path in test objectives.

`behaviour` is a search-space parameter of the test objective: each value plants one way a
real trial goes wrong. FACTORY_TEST_FAIL_ALL=1 makes every trial raise (a cycle in which
nothing works). `stalls_once` stops a task for the test to kill from outside.
"""

from __future__ import annotations

import itertools
import os
import time
from pathlib import Path
from typing import Any

import torch
from metaflow import current
from torch import nn

# How long a stalled build waits to be killed; if nobody does, it trains after all.
STALL_S = 60.0
_builds = itertools.count(1)


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


def stalls_once(params: dict[str, Any], input_shape: tuple[int, ...], n_outputs: int) -> nn.Module:
    """`planted`, but the second model built in a task's first attempt stalls to be killed.

    The stalled process writes its pid to the file FACTORY_TEST_PIDFILE names, which only the
    first process to stall does: the retry, and every other task, train at once. Stalling at the
    second build means the killed attempt has finished one trial already.
    """
    pidfile = os.environ.get("FACTORY_TEST_PIDFILE")
    if pidfile and next(_builds) == 2 and current.retry_count == 0 and not Path(pidfile).exists():
        written = Path(f"{pidfile}.tmp")
        written.write_text(str(os.getpid()))
        written.replace(pidfile)  # whole or absent for the test that polls for it
        time.sleep(STALL_S)
    return planted(params, input_shape, n_outputs)


def dies(params: dict[str, Any], input_shape: tuple[int, ...], n_outputs: int) -> nn.Module:
    """`planted`, but a trial with `behaviour: die` stalls in every attempt to be killed.

    The stalled process writes its pid to `<FACTORY_TEST_PIDFILE>.<attempt>` for the test to
    SIGKILL, as a task killed from outside (or by the out-of-memory killer) would be.
    """
    pidfile = os.environ.get("FACTORY_TEST_PIDFILE")
    if pidfile and params.get("behaviour") == "die":
        written = Path(f"{pidfile}.{current.retry_count}.tmp")
        written.write_text(str(os.getpid()))
        written.replace(f"{pidfile}.{current.retry_count}")
        time.sleep(STALL_S)
    return planted({k: v for k, v in params.items() if k != "behaviour"}, input_shape, n_outputs)
