"""The LightningModule a trial trains: any `nn.Module`, the objective's loss and metric.

`_common_step(batch, stage)` logs `{stage}/loss` and the validation metric the curve follows.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import lightning as L
import torch
from torch import nn

from factory_lib.data.splits import Preprocessing
from factory_lib.evaluate import quality_metrics
from factory_lib.models.builders import ModelShapeError
from factory_lib.objective import METRIC_DIRECTIONS, Objective
from factory_lib.train.checkpoint import Checkpoint

OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}
TRAINING_DEFAULTS: dict[str, Any] = {"lr": 1e-3, "weight_decay": 0.0, "optimizer": "adam"}


def train_metric(objective: Objective) -> str:
    """The validation metric a trial's curve and early stopping follow."""
    reward = objective.reward.metric
    return reward if reward in objective.metric_names else objective.metric_names[0]


def train_direction(objective: Objective) -> Literal["maximize", "minimize"]:
    """Which way is better for `train_metric` (the reward's own direction when it is that)."""
    metric = train_metric(objective)
    return (
        objective.primary_direction
        if metric == objective.reward.metric
        else METRIC_DIRECTIONS[metric]
    )


class TrialModule(L.LightningModule):
    """Wraps any `nn.Module` for the objective's task; logs `{stage}/loss` and the val metric."""

    def __init__(
        self,
        net: nn.Module,
        objective: Objective,
        params: dict[str, Any],
        preprocessing: Preprocessing | None,
    ) -> None:
        super().__init__()
        self.net = net
        self.task = objective.task
        self.metric = train_metric(objective)
        self.training_params = {k: params.get(k, v) for k, v in TRAINING_DEFAULTS.items()}
        self.preprocessing = preprocessing
        self.loss_fn: nn.Module = (
            nn.CrossEntropyLoss() if self.task == "classification" else nn.MSELoss()
        )
        self.curve: list[float] = []
        self.start_epoch = 0  # epochs inherited from a checkpoint
        self.resume_optimizer: dict[str, Any] | None = None
        self._val_outputs: list[tuple[torch.Tensor, torch.Tensor]] = []

    def resume(self, checkpoint: Checkpoint) -> None:
        """Continue from a checkpoint: its weights, curve and (once built) optimiser state."""
        self.net.load_state_dict(checkpoint.net)
        self.curve = list(checkpoint.curve)
        self.start_epoch = len(checkpoint.curve)
        self.resume_optimizer = checkpoint.optimizer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.net(x)
        return out

    def _common_step(self, batch: Sequence[torch.Tensor], stage: str) -> torch.Tensor:
        x, y = batch[0], batch[1]
        out = self(x)
        loss: torch.Tensor = self.loss_fn(
            out if self.task == "classification" else out.squeeze(-1), y
        )
        self.log(f"{stage}/loss", loss, on_step=False, on_epoch=True, batch_size=len(y))
        if stage == "val":
            self._val_outputs.append((out.detach(), y))
        return loss

    def training_step(self, batch: Sequence[torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._common_step(batch, "train")

    def validation_step(self, batch: Sequence[torch.Tensor], batch_idx: int) -> None:
        self._common_step(batch, "val")

    def on_validation_epoch_end(self) -> None:
        outs, ys = zip(*self._val_outputs, strict=True)
        self._val_outputs.clear()
        value = quality_metrics(
            torch.cat(outs), torch.cat(ys), self.task, (self.metric,), self.preprocessing
        )[self.metric]
        self.log(f"val/{self.metric}", value)
        self.curve.append(value)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        name = str(self.training_params["optimizer"])
        if name not in OPTIMIZERS:
            raise ModelShapeError(f"optimizer {name!r} is not one of {sorted(OPTIMIZERS)}")
        optimizer: torch.optim.Optimizer = OPTIMIZERS[name](
            self.parameters(),
            lr=float(self.training_params["lr"]),
            weight_decay=float(self.training_params["weight_decay"]),
        )
        if self.resume_optimizer is not None:
            optimizer.load_state_dict(self.resume_optimizer)
        return optimizer
