"""GPU checks: run by the device script (benchmarks/gpu.sh); skipped where there is no CUDA."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from factory_lib.data.module import build_trial_data
from factory_lib.objective import load_objective
from factory_lib.propose.base import make_proposal
from factory_lib.train.fused import train_fused
from factory_lib.train.trial import run_trial
from tests.conftest import ROOT

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]
DIGITS = load_objective(ROOT / "objectives" / "digits.yaml").with_overrides(epochs=4)


def test_in_memory_data_lives_on_the_gpu() -> None:
    data = build_trial_data(DIGITS)
    x, y = data.datamodule.tensors["train"]  # type: ignore[attr-defined]
    assert x.is_cuda and y.is_cuda


def test_trial_trains_on_the_gpu_and_fused_matches_alone() -> None:
    data = build_trial_data(DIGITS)
    params = {"family": "mlp", "depth": 2, "width": 64, "activation": "relu", "dropout": 0.0}
    proposals = [
        make_proposal(DIGITS, 1, i, i, {**params, "lr": 1e-3 * (i + 1)}, "gpu", "")
        for i in range(4)
    ]
    alone = [run_trial(DIGITS, p, data) for p in proposals]
    fused = train_fused(DIGITS, proposals, data)
    for a, f in zip(alone, fused, strict=True):
        assert a.result.status == f.result.status == "ok"
        np.testing.assert_allclose(f.result.curve, a.result.curve, atol=2e-3)
