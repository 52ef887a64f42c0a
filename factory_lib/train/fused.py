"""Fused trials: MLPs of one shape trained as one batched model, each with its own optimiser.

K trials whose networks have the same shape (family mlp, same depth, width and activation, no
normalisation) differ only in numbers: learning rate, weight decay, dropout, seed. Their
layers are stacked and run with batched matmuls, so a small model keeps the device busy
instead of paying kernel launches and Lightning's loop per trial.

Each trial is the same trial it would be alone: its network is built under its own seed (same
initial weights), it sees its own seeded batch order (the same as `DeviceBatches`), and its
parameters sit in their own optimiser group with its own lr and weight decay, stepped by the
same torch optimiser. Early stopping, divergence and the sealed evaluation are per trial. The
loss curve of a fused trial equals the one trained alone within float tolerance (tested, with
dropout 0: dropout masks come from one shared random stream here).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import lightning as L
import torch
from torch import nn
from torch.nn import functional as F

from factory_lib.data.module import TensorDataModule, TrialData
from factory_lib.evaluate import EVALUATOR_FINGERPRINT, evaluate, quality_metrics
from factory_lib.fidelity import needs_checkpoint, trial_epochs
from factory_lib.models.builders import ACTIVATIONS, DEFAULTS, build_model
from factory_lib.objective import Objective
from factory_lib.records import Proposal, TrialResult, weights_fingerprint
from factory_lib.train.checkpoint import Checkpoint, random_state, serialise
from factory_lib.train.module import TRAINING_DEFAULTS, train_direction, train_metric
from factory_lib.train.prune import Curves
from factory_lib.train.trial import TrialOutput

FUSABLE_OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}


def fuse_key(objective: Objective, params: dict[str, Any], epochs: int) -> tuple[Any, ...] | None:
    """Trials with equal keys can be fused; None for a trial that must train alone."""
    p = {**DEFAULTS, "family": objective.model.families[0], **TRAINING_DEFAULTS, **params}
    if objective.model.builder is not None or p["family"] != "mlp" or p["norm"] != "none":
        return None
    if p["optimizer"] not in FUSABLE_OPTIMIZERS:
        return None
    return (int(p["depth"]), int(p["width"]), p["activation"], p["optimizer"], epochs)


def _stacked_forward(
    layers: list[list[tuple[torch.Tensor, torch.Tensor]]],
    x: torch.Tensor,
    activation: nn.Module,
    dropouts: torch.Tensor,
    training: bool,
) -> torch.Tensor:
    """x: (K, B, features) → (K, B, outputs); layers[l][k] = (weight, bias) of trial k."""
    h = x.flatten(2)
    for i, layer in enumerate(layers):
        weight = torch.stack([w for w, _ in layer])  # (K, out, in)
        bias = torch.stack([b for _, b in layer])  # (K, out)
        h = torch.baddbmm(bias.unsqueeze(1), h, weight.transpose(1, 2))
        if i < len(layers) - 1:
            h = activation(h)
            if training and bool((dropouts > 0).any()):
                keep = (torch.rand_like(h) >= dropouts.view(-1, 1, 1)).to(h.dtype)
                h = h * keep / (1 - dropouts.view(-1, 1, 1))
    return h


def train_fused(
    objective: Objective,
    proposals: Sequence[Proposal],
    data: TrialData,
    references: Sequence[Sequence[float]] | Curves = (),
) -> list[TrialOutput]:
    """Train same-shape MLP trials as one batched model; one result per trial."""
    assert isinstance(data.datamodule, TensorDataModule), "fused trials need in-memory data"
    dm = data.datamodule
    board = Curves.of(references)
    started, started_at = time.monotonic(), time.time()
    deadline = started + objective.budget.trial_timeout_s
    summary = data.summary
    nets: list[nn.Module] = []
    for p in proposals:  # built under its own seed: the initial weights it would have alone
        L.seed_everything(p.seed, workers=True, verbose=False)
        nets.append(
            build_model(objective, p.params, summary.input_shape, summary.n_outputs).to(dm.device)
        )
    linears = [[m for m in net.modules() if isinstance(m, nn.Linear)] for net in nets]
    layers: list[list[tuple[torch.Tensor, torch.Tensor]]] = [
        [(lin[i].weight, lin[i].bias) for lin in linears] for i in range(len(linears[0]))
    ]
    training = [{**TRAINING_DEFAULTS, **p.params} for p in proposals]
    optimizer = FUSABLE_OPTIMIZERS[str(training[0]["optimizer"])](
        [
            {
                "params": list(net.parameters()),
                "lr": float(t["lr"]),
                "weight_decay": float(t["weight_decay"]),
            }
            for net, t in zip(nets, training, strict=True)
        ]
    )
    activation = ACTIVATIONS[str({**DEFAULTS, **proposals[0].params}["activation"])]()
    dropouts = torch.tensor(
        [float(p.params.get("dropout", DEFAULTS["dropout"])) for p in proposals], device=dm.device
    )
    batches = [dm.train_batches(p.seed) for p in proposals]
    metric, direction = train_metric(objective), train_direction(objective)
    sign = 1.0 if direction == "maximize" else -1.0
    k = len(proposals)
    curves: list[list[float]] = [[] for _ in range(k)]
    running = list(range(k))
    status: dict[int, tuple[str, str]] = {}
    best = [float("-inf")] * k
    waits = [0] * k
    snapshots: dict[int, dict[str, torch.Tensor]] = {}
    val_x, val_y = dm.tensors["val"]
    too_long = f"ran past the budget's trial_timeout_s ({objective.budget.trial_timeout_s:g} s)"
    target = trial_epochs(objective, proposals[0])  # one fuse key, one epoch budget
    for epoch in range(target):
        for group in zip(*batches, strict=True):
            xb = torch.stack([b[0] for b in group])
            yb = torch.stack([b[1] for b in group])
            out = _stacked_forward(layers, xb, activation, dropouts, training=True)
            if objective.task == "classification":
                flat = F.cross_entropy(out.flatten(0, 1), yb.flatten(), reduction="none")
            else:
                flat = F.mse_loss(out.squeeze(-1).flatten(), yb.flatten(), reduction="none")
            losses = flat.view(k, -1).mean(dim=1)  # each trial's mean loss, as alone
            finite = torch.isfinite(losses).tolist()
            for i in list(running):
                if not finite[i]:
                    status[i] = ("diverged", f"non-finite training loss at epoch {epoch}")
                    running.remove(i)
            if not running:
                break
            optimizer.zero_grad()
            losses[running].sum().backward()  # type: ignore[no-untyped-call]
            for i in range(k):  # finished trials keep their weights: no gradient, no step
                if i not in running:
                    for param in nets[i].parameters():
                        param.grad = None
            optimizer.step()
            if time.monotonic() > deadline:
                break
        if time.monotonic() > deadline:
            for i in running:
                status[i] = ("timeout", too_long)
            running = []
        if not running:
            break
        with torch.no_grad():
            out = _stacked_forward(
                layers,
                val_x.unsqueeze(0).expand(k, *val_x.shape),
                activation,
                dropouts,
                training=False,
            )
        for i in list(running):
            value = quality_metrics(out[i], val_y, objective.task, (metric,), data.preprocessing)[
                metric
            ]
            curves[i].append(value)
            if value != value:  # NaN
                status[i] = ("diverged", "non-finite validation metric")
                running.remove(i)
                continue
            if sign * value > best[i]:
                best[i], waits[i] = sign * value, 0
            else:
                waits[i] += 1
            pruned = board.check(proposals[i].trial_id, curves[i], objective.pruning, direction)
            if pruned is not None:  # as alone: the pruner speaks after early stopping's count
                status[i] = ("pruned", pruned)
                running.remove(i)
            elif waits[i] >= objective.budget.early_stopping_patience:
                snapshots[i] = {n: t.detach().clone() for n, t in nets[i].state_dict().items()}
                running.remove(i)
    random_after_fit = random_state()
    train_seconds = (time.monotonic() - started) / k
    outputs = []
    for i, p in enumerate(proposals):
        base = {
            "proposal": p,
            "curve": tuple(curves[i]),
            "epochs": len(curves[i]),
            "started_at": started_at,
            "evaluator": EVALUATOR_FINGERPRINT,
            "data_fingerprint": data.summary.fingerprint,
        }
        if i in status:
            outputs.append(
                TrialOutput(TrialResult(status=status[i][0], cause=status[i][1], **base), None)
            )
            continue
        if i in snapshots:
            nets[i].load_state_dict(snapshots[i])
        evaluation = evaluate(
            nets[i],
            data.eval_sets,
            objective.task,
            objective.metric_names,
            data.preprocessing,
            train_seconds,
        )
        if time.monotonic() > deadline:  # one window for the fused trials, evaluations included
            late = f"{too_long} by the end of its evaluation"
            outputs.append(TrialOutput(TrialResult(status="timeout", cause=late, **base), None))
            continue
        blob = serialise(nets[i])
        kept = None
        if needs_checkpoint(objective, p) and len(curves[i]) == target and i not in snapshots:
            kept = Checkpoint.take(
                nets[i],
                _own_optimizer_state(optimizer, nets[i], training[i]),
                curves[i],
                sign * best[i],
                waits[i],
                random_after_fit,
            )
        outputs.append(
            TrialOutput(
                TrialResult(
                    status="ok",
                    evaluation=evaluation,
                    weights_sha=weights_fingerprint(blob),
                    resumable=kept is not None,
                    **base,
                ),
                blob,
                kept,
            )
        )
    return outputs


def _own_optimizer_state(
    fused: torch.optim.Optimizer, net: nn.Module, training: dict[str, Any]
) -> dict[str, Any]:
    """One trial's share of the fused optimiser, as the state of an optimiser of its own."""
    alone = FUSABLE_OPTIMIZERS[str(training["optimizer"])](
        net.parameters(), lr=float(training["lr"]), weight_decay=float(training["weight_decay"])
    )
    for param in net.parameters():
        alone.state[param] = {
            k: v.detach().cpu().clone() if isinstance(v, torch.Tensor) else v
            for k, v in fused.state[param].items()
        }
    state: dict[str, Any] = alone.state_dict()
    return state
