"""What stops a trial early: a non-finite loss, its deadline, pruning; and the per-epoch report."""

from __future__ import annotations

import time
from typing import Any

import lightning as L
import torch

from factory_lib.objective import Objective
from factory_lib.train.module import TrialModule, train_direction
from factory_lib.train.prune import Curves


class TrialDiverged(RuntimeError):
    """The training loss became NaN or infinite."""


class TrialPruned(RuntimeError):
    """The trial's validation curve fell behind earlier trials' (factory_lib.train.prune)."""


class TrialTimedOut(RuntimeError):
    """The trial ran past the budget's trial timeout."""


class Guard(L.Callback):
    """Stops a trial at once on a non-finite loss or when its time is up."""

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline

    def _check_time(self) -> None:
        if time.monotonic() > self.deadline:
            raise TrialTimedOut("ran past the budget's trial_timeout_s")

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if not torch.isfinite(loss).all():
            raise TrialDiverged(
                f"non-finite training loss at epoch {trainer.current_epoch}, batch {batch_idx}"
            )
        self._check_time()

    def on_validation_batch_end(self, *args: Any, **kwargs: Any) -> None:
        self._check_time()


class Pruner(L.Callback):
    """After each epoch's validation, report the curve and stop the trial if it fell behind
    the other trials' (factory_lib.train.prune)."""

    def __init__(self, objective: Objective, references: Curves, trial_id: str) -> None:
        self.spec, self.references, self.trial_id = objective.pruning, references, trial_id
        self.direction = train_direction(objective)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Runs after the epoch's validation, so the curve already holds this epoch's value.
        assert isinstance(pl_module, TrialModule)
        reason = self.references.check(self.trial_id, pl_module.curve, self.spec, self.direction)
        if reason is not None:
            raise TrialPruned(reason)


class EpochReport(L.Callback):
    """One concise line per epoch in the task log (no progress bars)."""

    def __init__(self, trial_id: str, max_epochs: int) -> None:
        self.trial_id, self.max_epochs = trial_id, max_epochs

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        assert isinstance(pl_module, TrialModule)
        logged = " ".join(
            f"{k} {float(v):.4g}" for k, v in sorted(trainer.callback_metrics.items())
        )
        epoch = pl_module.start_epoch + trainer.current_epoch + 1
        print(f"[{self.trial_id}] epoch {epoch}/{self.max_epochs} {logged}", flush=True)
