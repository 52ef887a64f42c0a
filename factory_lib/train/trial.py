"""One proposal → one seeded Lightning fit → one `TrialResult`, whatever happens.

A non-finite loss ends the trial as `diverged`, running past the budget's trial timeout as
`timeout`, and any other exception as `failed` with its cause. The deadline covers the whole
trial, from building the model to the end of the sealed evaluation; here it is checked between
batches and once more at the end, so a hang inside one call is left to the supervisor
(factory_lib.train.supervisor), which kills the worker process the trial runs in.
"""

from __future__ import annotations

import logging
import math
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import lightning as L
import torch

from factory_lib.data.module import TrialData
from factory_lib.evaluate import EVALUATOR_FINGERPRINT, evaluate
from factory_lib.fidelity import needs_checkpoint, trial_epochs
from factory_lib.models.builders import build_model
from factory_lib.objective import Objective
from factory_lib.records import Proposal, TrialResult, weights_fingerprint
from factory_lib.train.callbacks import (
    EpochReport,
    Guard,
    Pruner,
    TrialDiverged,
    TrialPruned,
    TrialTimedOut,
)
from factory_lib.train.checkpoint import Checkpoint, CheckpointSource, random_state, serialise
from factory_lib.train.module import TrialModule, train_direction
from factory_lib.train.prune import Curves

CAUSE_MAX_CHARS = 500


@dataclass(frozen=True)
class TrialOutput:
    """A trial's result and, when it trained to the end, its weights (and a fidelity
    checkpoint when it may be promoted to a higher rung)."""

    result: TrialResult
    weights: bytes | None
    checkpoint: bytes | None = None


def cause_of(exc: BaseException) -> str:
    where = traceback.extract_tb(exc.__traceback__)[-1:] if exc.__traceback__ else []
    at = f" (at {where[0].filename.rsplit('/', 1)[-1]}:{where[0].lineno})" if where else ""
    return f"{type(exc).__name__}: {exc}{at}"[:CAUSE_MAX_CHARS]


def stand_in(proposal: Proposal, data: TrialData) -> TrialResult:
    """What a trial that has just started is recorded as if its worker never reports back: a
    `timeout` with no curve (the supervisor fills in the cause)."""
    return TrialResult(
        proposal=proposal,
        status="timeout",
        started_at=time.time(),
        evaluator=EVALUATOR_FINGERPRINT,
        data_fingerprint=data.summary.fingerprint,
    )


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
                Guard(deadline),
                early_stopping,
                EpochReport(proposal.trial_id, target),
                Pruner(objective, Curves.of(references), proposal.trial_id),
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
        if time.monotonic() > deadline:  # the deadline covers the sealed evaluation too
            raise TrialTimedOut(
                "ran past the budget's trial_timeout_s by the end of its evaluation"
            )
    except TrialDiverged as exc:
        return TrialOutput(result("diverged", str(exc)), None)
    except TrialPruned as exc:
        return TrialOutput(result("pruned", str(exc)), None)
    except TrialTimedOut as exc:
        return TrialOutput(
            result("timeout", f"{exc} ({objective.budget.trial_timeout_s:g} s)"), None
        )
    except Exception as exc:  # noqa: BLE001 - the boundary that turns any error into a record
        return TrialOutput(result("failed", cause_of(exc)), None)
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
