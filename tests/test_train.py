"""Real Lightning training on tiny data, on the CPU: every outcome becomes a result."""

from __future__ import annotations

import numpy as np
import pytest

from factory_lib.data.module import build_trial_data
from factory_lib.models.builders import ModelShapeError, build_model, count_params
from factory_lib.objective import load_objective
from factory_lib.propose.base import make_proposal
from factory_lib.train.trial import run_trial
from tests.conftest import ROOT

SMOKE = load_objective(ROOT / "objectives" / "smoke.yaml")
DIGITS = load_objective(ROOT / "objectives" / "digits.yaml")


def _planted(timeout_s: float = 60.0):
    return SMOKE.model_copy(
        update={
            "model": SMOKE.model.model_copy(update={"builder": "tests.builders:planted"}),
            "budget": SMOKE.budget.model_copy(update={"trial_timeout_s": timeout_s}),
        }
    )


def _proposal(objective, **params):
    return make_proposal(objective, 1, 0, 0, params, "test", "")


def test_mlp_and_cnn_shapes_and_sizes() -> None:
    mlp = build_model(DIGITS, {"family": "mlp", "depth": 2, "width": 32}, (1, 8, 8), 10)
    assert count_params(mlp) == 64 * 32 + 32 + 32 * 32 + 32 + 32 * 10 + 10
    cnn = build_model(DIGITS, {"family": "cnn", "blocks": 2, "channels": 8}, (1, 8, 8), 10)
    assert count_params(cnn) > 0


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"family": "cnn", "blocks": 4}, "pools a 8x8 image below 1x1"),
        ({"family": "cnn", "kernel": 4}, "must be odd"),
        ({"family": "mlp", "activation": "swish"}, "activation 'swish'"),
        ({"family": "rnn"}, "not in model.families"),
    ],
)
def test_impossible_models_are_named(params: dict, message: str) -> None:
    with pytest.raises(ModelShapeError, match=message):
        build_model(DIGITS, params, (1, 8, 8), 10)


def test_trial_trains_and_is_evaluated_on_both_splits() -> None:
    data = build_trial_data(SMOKE)
    objective = SMOKE.with_overrides(epochs=20)
    out = run_trial(objective, _proposal(objective, lr=0.05, width=16, depth=1), data)
    r = out.result
    assert r.status == "ok", r.cause
    assert r.evaluation is not None
    assert set(r.evaluation.val) == set(r.evaluation.test) == {"accuracy", "macro_f1"}
    assert r.evaluation.val["accuracy"] > 0.8
    assert r.evaluation.params == 4 * 16 + 16 + 16 * 3 + 3
    assert r.evaluation.latency_ms > 0
    assert len(r.curve) == r.epochs >= 1
    assert out.weights is not None and r.weights_sha


def test_same_seed_same_result() -> None:
    data = build_trial_data(SMOKE)
    p = _proposal(SMOKE, lr=0.05, width=16, depth=1)
    a, b = run_trial(SMOKE, p, data).result, run_trial(SMOKE, p, data).result
    assert a.curve == b.curve
    assert a.evaluation is not None and b.evaluation is not None
    assert a.evaluation.test == b.evaluation.test
    assert a.weights_sha == b.weights_sha


@pytest.mark.parametrize(
    ("behaviour", "status", "cause"),
    [
        ("raise", "failed", "RuntimeError: planted failure"),
        ("nan", "diverged", "non-finite training loss"),
        ("hang", "timeout", "trial_timeout_s"),
    ],
)
def test_bad_trials_become_records(behaviour: str, status: str, cause: str) -> None:
    objective = _planted(timeout_s=1.5)
    out = run_trial(
        objective, _proposal(objective, behaviour=behaviour), build_trial_data(objective)
    )
    assert out.result.status == status
    assert cause in out.result.cause
    assert out.weights is None


def test_regression_is_scored_in_target_units() -> None:
    objective = load_objective(ROOT / "objectives" / "diabetes.yaml").with_overrides(epochs=5)
    data = build_trial_data(objective)
    out = run_trial(objective, _proposal(objective, lr=0.01, width=32, depth=1), data)
    assert out.result.status == "ok", out.result.cause
    assert out.result.evaluation is not None
    rmse = out.result.evaluation.test["rmse"]
    test_y = data.datamodule.tensors["test"][1].numpy()
    y_std = float(np.std(data.preprocessing.inverse_y(test_y)))
    assert 0.3 * y_std < rmse < 2 * y_std  # in the target's units, not standardised ones


def test_standardised_features_stay_bounded_on_unseen_splits() -> None:
    from factory_lib.data.splits import load_splits

    for objective in (DIGITS, load_objective(ROOT / "objectives" / "wine.yaml")):
        splits = load_splits(objective.data, objective.task)
        for split in ("val", "test"):
            # digits has pixels that are (nearly) always 0 in its training split
            assert np.abs(splits.x[split]).max() < 20


def test_device_batches_match_a_seeded_dataloader() -> None:
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from factory_lib.data.module import TensorDataModule
    from factory_lib.data.splits import load_splits

    splits = load_splits(SMOKE.data, SMOKE.task)
    dm = TensorDataModule(splits, batch_size=16, device=torch.device("cpu"))
    x, y = dm.tensors["train"]
    loader = DataLoader(
        TensorDataset(x, y), batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(7)
    )
    batches = dm.train_batches(seed=7)
    for _epoch in range(3):  # the generator carries over between epochs in both
        pairs = list(zip(loader, batches, strict=True))
        assert len(pairs) == len(batches) == -(-len(y) // 16)
        for (lx, ly), (bx, by) in pairs:
            assert torch.equal(lx, bx) and torch.equal(ly, by)


def test_curves_and_early_stopping_follow_their_metrics_direction() -> None:
    from factory_lib.train.module import train_direction, train_metric

    diabetes = load_objective(ROOT / "objectives" / "diabetes.yaml")
    by_size = diabetes.model_copy(
        update={"reward": diabetes.reward.model_copy(update={"metric": "params"})}
    )
    assert train_metric(by_size) == "rmse" and train_direction(by_size) == "minimize"
    assert train_direction(diabetes) == "minimize" and train_direction(DIGITS) == "maximize"
