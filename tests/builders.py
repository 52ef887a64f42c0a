"""Model builders for the failure tests, named by import path in test objectives.

`behaviour` is a search-space parameter of the test objective: each value plants one way a
real trial goes wrong. FACTORY_TEST_FAIL_ALL=1 makes every trial raise (a cycle in which
nothing works). `stalls_once` stops a task for the test to kill from outside.

Builders run where the trials train: in the task's process, or in the worker process it
supervises (factory_lib.train.supervisor), whose parent is the task.
"""

from __future__ import annotations

import ctypes
import itertools
import multiprocessing
import os
import signal
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

# How long a stalled build waits to be killed; if nobody does, it trains after all.
STALL_S = 60.0
_builds = itertools.count(1)
_libc = ctypes.CDLL(None)


def native_sleep(seconds: float) -> None:
    """Block in a C call (libc's sleep), as a hang in native code does: no Python runs."""
    _libc.sleep(int(seconds))


def task_pid() -> int:
    """The train task's process: this one, or the parent of the trial worker this is."""
    parent = multiprocessing.parent_process()
    return parent.pid if parent is not None and parent.pid is not None else os.getpid()


def _write_pid(path: str, pid: int) -> None:
    written = Path(f"{path}.tmp")
    written.write_text(str(pid))
    written.replace(path)  # whole or absent for the test that polls for it


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


class _Stuck(nn.Module):
    """A training step stuck in native code: no check between batches is ever reached."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            if pidfile := os.environ.get("FACTORY_TEST_PIDFILE"):
                _write_pid(pidfile, os.getpid())
            native_sleep(STALL_S)
        out: torch.Tensor = self.net(x)
        return out


class _Slow(nn.Module):
    """Seconds per training batch (`step_s`) and per call of the sealed evaluation (`eval_s`:
    outside Lightning's validation loop, which runs in inference mode)."""

    def __init__(self, net: nn.Module, step_s: float, eval_s: float) -> None:
        super().__init__()
        self.net, self.step_s, self.eval_s = net, step_s, eval_s

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            time.sleep(self.step_s)
        elif not torch.is_inference_mode_enabled():
            time.sleep(self.eval_s)
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
    if behaviour == "stuck":
        return _Stuck(net)
    if behaviour == "stuck_build":
        native_sleep(STALL_S)
    if behaviour == "killed":  # as the out-of-memory killer would: only in a trial worker!
        assert multiprocessing.parent_process() is not None, "this would kill the task"
        os.kill(os.getpid(), signal.SIGKILL)
    step_s, eval_s = float(params.get("step_s", 0)), float(params.get("eval_s", 0))
    if step_s or eval_s:
        return _Slow(net, step_s, eval_s)
    return net


def stalls_once(params: dict[str, Any], input_shape: tuple[int, ...], n_outputs: int) -> nn.Module:
    """`planted`, but the second model built in a task's first attempt stalls to be killed.

    The stalled task writes its pid to the file FACTORY_TEST_PIDFILE names, which only the
    first task to stall does: the retry, and every other task, train at once. Stalling at the
    second build means the killed attempt has finished one trial already.
    """
    pidfile = os.environ.get("FACTORY_TEST_PIDFILE")
    if pidfile and next(_builds) == 2 and not Path(pidfile).exists():
        _write_pid(pidfile, task_pid())
        time.sleep(STALL_S)
    return planted(params, input_shape, n_outputs)


def dies(params: dict[str, Any], input_shape: tuple[int, ...], n_outputs: int) -> nn.Module:
    """`planted`, but a trial with `behaviour: die` stalls in every attempt to be killed.

    The stalled task writes its pid to `<FACTORY_TEST_PIDFILE>.<attempt>` (attempts counted by
    the files already there) for the test to SIGKILL, as a task killed from outside (or by the
    out-of-memory killer) would be.
    """
    pidfile = os.environ.get("FACTORY_TEST_PIDFILE")
    if pidfile and params.get("behaviour") == "die":
        attempt = next(n for n in itertools.count() if not Path(f"{pidfile}.{n}").exists())
        _write_pid(f"{pidfile}.{attempt}", task_pid())
        time.sleep(STALL_S)
    return planted({k: v for k, v in params.items() if k != "behaviour"}, input_shape, n_outputs)
