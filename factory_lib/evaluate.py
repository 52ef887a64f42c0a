"""The sealed evaluator: the one place that scores a trained model.

Proposers never call this and cannot change it. It scores the validation split (which the
search may see) and the held-out test split (which it never sees), and measures the model's
cost: parameter count and inference latency per sample.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterable, Mapping

import numpy as np
import torch
from torch import nn

from factory_lib.data.splits import Preprocessing
from factory_lib.models.builders import count_params
from factory_lib.records import Evaluation


def _own_fingerprint() -> str:
    import hashlib
    from pathlib import Path

    return hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:12]


# Records made under another evaluator are never compared as if they were the same.
EVALUATOR_FINGERPRINT = _own_fingerprint()
LATENCY_REPEATS = 7
LATENCY_BATCH = 256


def quality_metrics(
    outputs: torch.Tensor,
    targets: torch.Tensor,
    task: str,
    names: tuple[str, ...],
    preprocessing: Preprocessing | None,
) -> dict[str, float]:
    """Task metrics from raw model outputs; regression is scored in the target's own units."""
    out = outputs.detach().float().cpu().numpy()
    y = targets.detach().cpu().numpy()
    if task == "classification":
        pred = out.argmax(axis=1)
        scorers = {
            "accuracy": lambda: float((pred == y).mean()),
            "macro_f1": lambda: macro_f1(y, pred),
        }
    else:
        pred = out.reshape(-1)
        if preprocessing is not None:
            pred, y = preprocessing.inverse_y(pred), preprocessing.inverse_y(y)
        finite = bool(np.isfinite(pred).all())
        scorers = {
            "rmse": lambda: float(np.sqrt(np.mean((pred - y) ** 2))) if finite else float("nan"),
            "r2": lambda: r2(y, pred) if finite else float("nan"),
        }
    return {k: scorers[k]() for k in names}  # only what is asked: curves need one per epoch


def macro_f1(y: np.ndarray, pred: np.ndarray) -> float:
    """The unweighted mean of each class's F1 over the classes in `y` or `pred` (a class never
    predicted scores 0), as scikit-learn's `f1_score(average="macro", zero_division=0)`;
    written out, so that no train task imports scikit-learn for it (~0.5 s)."""
    labels, index = np.unique(np.concatenate([y, pred]), return_inverse=True)
    true_i, pred_i = index[: len(y)], index[len(y) :]
    tp = np.bincount(true_i[y == pred], minlength=len(labels))
    true, predicted = (np.bincount(i, minlength=len(labels)) for i in (true_i, pred_i))
    return float(np.mean(2 * tp / (true + predicted)))


def r2(y: np.ndarray, pred: np.ndarray) -> float:
    """The coefficient of determination, as scikit-learn's `r2_score` (a constant target:
    1.0 when predicted exactly, 0.0 otherwise)."""
    residual = float(np.sum((y - pred) ** 2, dtype=np.float64))
    total = float(np.sum((y - np.mean(y, dtype=np.float64)) ** 2, dtype=np.float64))
    if total == 0.0:
        return 1.0 if residual == 0.0 else 0.0
    return 1.0 - residual / total


@torch.no_grad()
def _predict(
    model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Outputs and targets over a split streamed batch by batch (only those are kept), and
    the first inputs (for the latency measurement)."""
    outs, ys, first = [], [], None
    for x, y in batches:
        first = x[:LATENCY_BATCH] if first is None else first
        outs.append(model(x.to(device)).cpu())
        ys.append(y.cpu())
    if first is None:
        raise ValueError("an evaluation split yields no batch")
    return torch.cat(outs), torch.cat(ys), first


@torch.no_grad()
def latency_ms_per_sample(model: nn.Module, x: torch.Tensor, device: torch.device) -> float:
    """Median over repeats of one batch's inference time, divided by the batch size."""
    batch = x[:LATENCY_BATCH].to(device)
    model(batch)  # warm-up
    times = []
    for _ in range(LATENCY_REPEATS):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        model(batch)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return 1000.0 * statistics.median(times) / len(batch)


def evaluate(
    model: nn.Module,
    eval_sets: Mapping[str, Iterable[tuple[torch.Tensor, torch.Tensor]]],
    task: str,
    metric_names: tuple[str, ...],
    preprocessing: Preprocessing | None,
    train_seconds: float,
) -> Evaluation:
    """Score a trained model on the validation and held-out test splits, streamed."""
    model.eval()
    device = next(model.parameters()).device
    scores, first = {}, {}
    for split, batches in eval_sets.items():
        out, y, first[split] = _predict(model, batches, device)
        scores[split] = quality_metrics(out, y, task, metric_names, preprocessing)
    return Evaluation(
        val=scores["val"],
        test=scores["test"],
        params=count_params(model),
        latency_ms=latency_ms_per_sample(model, first["test"], device),
        train_seconds=train_seconds,
    )
