"""Training: one proposal → one seeded Lightning fit → one `TrialResult`, whatever happens.

A non-finite loss ends the trial as `diverged`, running past the budget's trial timeout as
`timeout`, and any other exception as `failed` with its cause. `train_group` runs several
proposals in one task (back to back), so one task's process start-up serves a whole group.
Under successive halving (`fidelity`) a trial that completes a lower rung keeps a `Checkpoint`,
and a promoted trial continues from it (factory_lib.fidelity).
"""

from __future__ import annotations

import io
import logging
import math
import os
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import lightning as L
import torch
from torch import nn

from factory_lib.data import Preprocessing
from factory_lib.datamodule import TrialData, build_trial_data
from factory_lib.evaluate import EVALUATOR_FINGERPRINT, evaluate, quality_metrics
from factory_lib.fidelity import needs_checkpoint, promotions, trial_epochs
from factory_lib.models import ModelShapeError, build_model
from factory_lib.objective import METRIC_DIRECTIONS, Objective
from factory_lib.prune import Curves
from factory_lib.records import Proposal, TrialRecord, TrialResult, weights_fingerprint
from factory_lib.reward import score

OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}
TRAINING_DEFAULTS: dict[str, Any] = {"lr": 1e-3, "weight_decay": 0.0, "optimizer": "adam"}
CAUSE_MAX_CHARS = 500


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


class TrialDiverged(RuntimeError):
    """The training loss became NaN or infinite."""


class TrialPruned(RuntimeError):
    """The trial's validation curve fell behind earlier trials' (factory_lib.prune)."""


class TrialTimedOut(RuntimeError):
    """The trial ran past the budget's trial timeout."""


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


class _Guard(L.Callback):
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


class _Pruner(L.Callback):
    """After each epoch's validation, report the curve and stop the trial if it fell behind
    the other trials' (factory_lib.prune)."""

    def __init__(self, objective: Objective, references: Curves, trial_id: str) -> None:
        self.spec, self.references, self.trial_id = objective.pruning, references, trial_id
        self.direction = train_direction(objective)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Runs after the epoch's validation, so the curve already holds this epoch's value.
        assert isinstance(pl_module, TrialModule)
        reason = self.references.check(self.trial_id, pl_module.curve, self.spec, self.direction)
        if reason is not None:
            raise TrialPruned(reason)


class _EpochReport(L.Callback):
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


@dataclass(frozen=True)
class TrialOutput:
    """A trial's result and, when it trained to the end, its weights (and a fidelity
    checkpoint when it may be promoted to a higher rung)."""

    result: TrialResult
    weights: bytes | None
    checkpoint: bytes | None = None


def _cause(exc: BaseException) -> str:
    where = traceback.extract_tb(exc.__traceback__)[-1:] if exc.__traceback__ else []
    at = f" (at {where[0].filename.rsplit('/', 1)[-1]}:{where[0].lineno})" if where else ""
    return f"{type(exc).__name__}: {exc}{at}"[:CAUSE_MAX_CHARS]


def run_trial(
    objective: Objective,
    proposal: Proposal,
    data: TrialData,
    task_pathspec: str | None = None,
    references: Sequence[Sequence[float]] | Curves = (),
    checkpoint: CheckpointSource | None = None,
) -> TrialOutput:
    """Train and evaluate one proposal; every outcome becomes a result, none escapes as an error.

    With `checkpoint` (a continuation under successive halving) the trial goes on from where
    its parent stopped instead of from scratch.
    """
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    started_at = time.time()
    started = time.monotonic()
    deadline = started + objective.budget.trial_timeout_s
    target = trial_epochs(objective, proposal)
    L.seed_everything(proposal.seed, workers=True, verbose=False)
    module: TrialModule | None = None

    def result(status: str, cause: str = "", **extra: Any) -> TrialResult:
        curve = tuple(module.curve) if module is not None else ()
        return TrialResult.model_validate(
            {
                "proposal": proposal,
                "status": status,
                "cause": cause,
                "curve": curve,
                "epochs": len(curve),
                "start_epoch": module.start_epoch if module is not None else 0,
                "task_pathspec": task_pathspec,
                "started_at": started_at,
                "evaluator": EVALUATOR_FINGERPRINT,
                "data_fingerprint": data.summary.fingerprint,
                **extra,
            }
        )

    try:
        net = build_model(
            objective, proposal.params, data.summary.input_shape, data.summary.n_outputs
        )
        module = TrialModule(net, objective, proposal.params, data.preprocessing)
        monitor = f"val/{module.metric}"
        direction = train_direction(objective)
        early_stopping = L.pytorch.callbacks.EarlyStopping(
            monitor=monitor,
            mode="max" if direction == "maximize" else "min",
            patience=objective.budget.early_stopping_patience,
        )
        if checkpoint is not None:
            parent = Checkpoint.from_bytes(checkpoint())
            module.resume(parent)
            parent.restore_random_state()
            if parent.early_stopping_best is not None:
                early_stopping.best_score = torch.tensor(parent.early_stopping_best)
            early_stopping.wait_count = parent.early_stopping_wait
        trainer = L.Trainer(
            accelerator="auto",
            devices=1,
            max_epochs=target - module.start_epoch,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            callbacks=[
                _Guard(deadline),
                early_stopping,
                _EpochReport(proposal.trial_id, target),
                _Pruner(objective, Curves.of(references), proposal.trial_id),
            ],
        )
        trainer.fit(module, datamodule=data.datamodule)
        random_after_fit = random_state()
        train_seconds = time.monotonic() - started
        if module.curve and not math.isfinite(module.curve[-1]):
            raise TrialDiverged("non-finite validation metric")
        evaluation = evaluate(
            module.net,
            data.eval_sets,
            objective.task,
            objective.metric_names,
            data.preprocessing,
            train_seconds,
        )
        if not all(math.isfinite(v) for v in (*evaluation.val.values(), *evaluation.test.values())):
            raise TrialDiverged("non-finite evaluation metrics")
    except TrialDiverged as exc:
        return TrialOutput(result("diverged", str(exc)), None)
    except TrialPruned as exc:
        return TrialOutput(result("pruned", str(exc)), None)
    except TrialTimedOut as exc:
        return TrialOutput(
            result("timeout", f"{exc} ({objective.budget.trial_timeout_s:g} s)"), None
        )
    except Exception as exc:  # noqa: BLE001 - the boundary that turns any error into a record
        return TrialOutput(result("failed", _cause(exc)), None)
    weights = serialise(module.net)
    kept = None
    if (
        needs_checkpoint(objective, proposal)
        and len(module.curve) == target
        and not early_stopping.stopped_epoch
    ):
        best = early_stopping.best_score
        kept = Checkpoint.take(
            module.net,
            trainer.optimizers[0].state_dict(),
            module.curve,
            float(best) if torch.isfinite(best) else None,
            int(early_stopping.wait_count),
            random_after_fit,
        )
    return TrialOutput(
        result(
            "ok",
            evaluation=evaluation,
            weights_sha=weights_fingerprint(weights),
            resumable=kept is not None,
        ),
        weights,
        kept,
    )


def cpu_threads(concurrent_tasks: int) -> int:
    """Torch threads for one CPU task when `concurrent_tasks` share this machine's cores."""
    cores = os.cpu_count() or 1
    return max(1, cores // max(1, min(cores, concurrent_tasks)))


def train_group(
    objective: Objective,
    proposals: Sequence[Proposal],
    task_pathspec: str | None = None,
    concurrent_tasks: int = 1,
    references: Sequence[Sequence[float]] | Curves = (),
    history: Sequence[TrialRecord] = (),
    load_checkpoint: Callable[[Proposal], bytes] | None = None,
) -> list[TrialOutput]:
    """Run a group of proposals in this process; one's failure never touches another.

    Same-shape MLP trials are fused into one batched model (`budget.fuse`); the others train
    back to back. `references` are earlier trials' validation curves for pruning (or a shared
    `Curves` board); each trial that finishes here joins them for the next. Under successive
    halving, trials promoted by their rank among `history` and this group continue here at
    once (factory_lib.fidelity), and a proposal that continues an earlier cycle's trial gets
    its checkpoint from `load_checkpoint`. Results come back in the order of `proposals`,
    continuations after.
    """
    if not torch.cuda.is_available():
        torch.set_num_threads(cpu_threads(concurrent_tasks))
    data = build_trial_data(objective)
    curves = references if isinstance(references, Curves) else Curves(references)
    done: dict[str, TrialOutput] = {}

    def finished(outputs: Sequence[TrialOutput]) -> None:
        for out in outputs:
            done[out.result.proposal.trial_id] = out
            curves.finished(out.result.proposal.trial_id, out.result.curve, out.result.status)

    for cluster in fusable_clusters(objective, proposals, data):
        finished(_train_fused_or_alone(objective, cluster, data, curves))

    def train_alone(proposal: Proposal) -> None:
        source = _checkpoint_source(proposal, done, load_checkpoint)
        finished([run_trial(objective, proposal, data, references=curves, checkpoint=source)])

    for proposal in proposals:
        if proposal.trial_id not in done:
            train_alone(proposal)
    cycle = max((p.cycle for p in proposals), default=0)
    promoted: list[Proposal] = []
    while objective.fidelity is not None:
        local = [score(objective, o.result) for o in done.values()]
        here = [
            p
            for p in promotions(objective, [*history, *local], cycle)
            if (parent := done.get(p.continues or "")) is not None and parent.checkpoint
        ]
        if not here:
            break
        for proposal in here:
            print(f"[{proposal.trial_id}] promoted: {proposal.rationale}", flush=True)
            train_alone(proposal)
        promoted += here
    outputs = []
    for proposal in [*proposals, *promoted]:
        out = done[proposal.trial_id]
        out = TrialOutput(
            out.result.model_copy(update={"task_pathspec": task_pathspec}),
            out.weights,
            out.checkpoint,
        )
        r = out.result
        print(
            f"[{proposal.trial_id}] {r.status}" + (f" ({r.cause})" if r.cause else ""), flush=True
        )
        outputs.append(out)
    return outputs


def _checkpoint_source(
    proposal: Proposal,
    done: dict[str, TrialOutput],
    load_checkpoint: Callable[[Proposal], bytes] | None,
) -> CheckpointSource | None:
    """Where a continued trial's checkpoint comes from: this task, or the task that stored it.

    Read lazily inside the trial, so a checkpoint that cannot be read fails that trial alone.
    """
    if proposal.continues is None:
        return None
    parent = done.get(proposal.continues)

    def read() -> bytes:
        if parent is not None and parent.checkpoint is not None:
            return parent.checkpoint
        if load_checkpoint is None:
            raise LookupError(f"no checkpoint of {proposal.continues} in this task")
        return load_checkpoint(proposal)

    return read


def fusable_clusters(
    objective: Objective, proposals: Sequence[Proposal], data: TrialData
) -> list[list[Proposal]]:
    """Groups of two or more proposals that can train as one fused model."""
    from factory_lib.datamodule import TensorDataModule
    from factory_lib.fused import fuse_key

    if not objective.budget.fuse or not isinstance(data.datamodule, TensorDataModule):
        return []
    clusters: dict[Any, list[Proposal]] = {}
    for p in proposals:
        if p.continues is not None:  # continued from a checkpoint: alone
            continue
        key = fuse_key(objective, p.params, trial_epochs(objective, p))
        if key is not None:
            clusters.setdefault(key, []).append(p)
    return [c for c in clusters.values() if len(c) > 1]


def _train_fused_or_alone(
    objective: Objective,
    cluster: list[Proposal],
    data: TrialData,
    references: Curves,
) -> list[TrialOutput]:
    from factory_lib.fused import train_fused

    try:
        outputs = train_fused(objective, cluster, data, references)
    except Exception as exc:  # noqa: BLE001 - a fused failure must not lose the trials
        print(f"fused training of {len(cluster)} trials failed ({_cause(exc)}); training alone")
        return [run_trial(objective, p, data, references=references) for p in cluster]
    print(f"fused {len(cluster)} trials: {', '.join(p.trial_id for p in cluster)}", flush=True)
    return outputs
