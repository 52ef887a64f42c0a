"""Trial logs in the formats trackers read: one Lightning logger per trial.

Every trial of a train task, fused or not, gets the logger `tracking.logger` names (Lightning's
`CSVLogger` by default, or its `TensorBoardLogger`) with its parameters and trial id as
hyperparameters, its validation curve one step per epoch, and its final metrics at the end.
The files are kept as the task's `trial_logs` artifact (trial id → relative path → bytes), so
they live in the datastore with the rest of the run; `factory logs` writes them out where
TensorBoard or a spreadsheet can open them.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from factory_lib.objective import Objective
from factory_lib.records import TrialResult
from factory_lib.train.module import train_metric

TrialLogs = dict[str, dict[str, bytes]]


def trial_logs(objective: Objective, results: Sequence[TrialResult]) -> TrialLogs:
    """Each trial's log files under the objective's logger ({} with `none`)."""
    kind = objective.tracking.logger
    if kind == "none":
        return {}
    with tempfile.TemporaryDirectory(prefix="trial-logs-") as root:
        for r in results:
            _write(kind, Path(root), objective, r)
        return {
            r.proposal.trial_id: {
                str(f.relative_to(Path(root) / r.proposal.trial_id)): f.read_bytes()
                for f in sorted((Path(root) / r.proposal.trial_id).rglob("*"))
                if f.is_file()
            }
            for r in results
        }


def _write(kind: str, root: Path, objective: Objective, r: TrialResult) -> None:
    from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger  # a train task's

    p = r.proposal
    # name "" and version = the trial id: the files land in <root>/<trial id>/
    logger: Logger = (
        CSVLogger(save_dir=root, name="", version=p.trial_id)
        if kind == "csv"
        else TensorBoardLogger(save_dir=root, name="", version=p.trial_id, default_hp_metric=False)
    )
    hyper: dict[str, Any] = {
        **p.params,
        "trial_id": p.trial_id,
        "cycle": p.cycle,
        "source": p.source,
        "seed": p.seed,
        "status": r.status,
    }
    logger.log_hyperparams(hyper)
    metric = f"val/{train_metric(objective)}"  # what the curve follows
    for epoch, value in enumerate(r.curve):
        logger.log_metrics({metric: value}, step=epoch)
    if r.evaluation is not None:
        ev = r.evaluation
        final = {
            **{f"final/val_{k}": v for k, v in ev.val.items()},
            **{f"final/test_{k}": v for k, v in ev.test.items()},
            "final/params": float(ev.params),
            "final/latency_ms": ev.latency_ms,
            "final/train_seconds": ev.train_seconds,
        }
        logger.log_metrics(final, step=max(len(r.curve) - 1, 0))
    logger.finalize("success" if r.status == "ok" else "failed")
