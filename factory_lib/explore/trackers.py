"""A search's history in an MLflow tracking store: one run per trial (`factory export-mlflow`).

Each trial becomes a run named by its trial id, in an experiment named after the objective:
its parameters, its validation curve as the history of `val_<metric>_by_epoch` (one step per
epoch),
its final validation and held-out metrics, rewards and cost, and tags for the trial id, cycle,
source, status (and cause), and whether it is the search's champion. Running the export again
adds the trials the experiment lacks and moves the champion tags; nothing is duplicated.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from factory_lib.objective import Objective
from factory_lib.records import TrialRecord

# MLflow 3 keeps its file store in maintenance mode and refuses it unless told otherwise;
# a local folder is what a person without a tracking server has.
FILE_STORE_OPT_IN = "MLFLOW_ALLOW_FILE_STORE"
RUN_STATUS = {"ok": "FINISHED", "pruned": "KILLED"}  # the others: FAILED
CAUSE_MAX_CHARS = 500  # MLflow's tag values are limited; causes are cut to this


@dataclass(frozen=True)
class MlflowExport:
    """What an export wrote: the experiment, the runs added, the runs it already held."""

    experiment_id: str
    added: int
    kept: int


def tracking_uri(where: str) -> str:
    """A tracking URI as given, or a folder as a file store's URI."""
    if "://" in where or where.startswith("file:"):
        return where
    return Path(where).resolve().as_uri()


def export_mlflow(
    objective: Objective,
    history: Sequence[TrialRecord],
    champion: str | None,
    where: str,
    experiment: str | None = None,
) -> MlflowExport:
    """Write `history` into the MLflow tracking store at `where` (see the module's text)."""
    uri = tracking_uri(where)
    if uri.startswith("file:"):
        os.environ.setdefault(FILE_STORE_OPT_IN, "true")
    try:
        from mlflow import MlflowClient
        from mlflow.entities import Metric, Param
    except ImportError as exc:
        raise LookupError(
            "factory export-mlflow needs MLflow: bash .ci/setup mlflow (docs/tracking.md)"
        ) from exc
    client = MlflowClient(tracking_uri=uri)
    name = experiment or objective.name
    found = client.get_experiment_by_name(name)
    experiment_id = found.experiment_id if found else client.create_experiment(name)
    existing = {
        run.data.tags.get("trial_id"): run.info.run_id
        for run in client.search_runs([experiment_id], max_results=50_000)
    }
    added = 0
    for r in history:
        run_id = existing.get(r.trial_id)
        if run_id is None:
            run_id = _write_run(client, experiment_id, objective, r, Metric, Param)
            added += 1
        client.set_tag(run_id, "champion", str(r.trial_id == champion).lower())
    return MlflowExport(experiment_id=experiment_id, added=added, kept=len(history) - added)


def _write_run(
    client: Any,
    experiment_id: str,
    objective: Objective,
    r: TrialRecord,
    metric: Any,
    param: Any,
) -> str:
    p, result = r.proposal, r.result
    started = int(result.started_at * 1000) if result.started_at else None
    tags = {
        "trial_id": p.trial_id,
        "cycle": str(p.cycle),
        "source": p.source,
        "status": r.status,
        "objective": objective.name,
        "feasible": str(r.feasible).lower(),
        **({"cause": result.cause[:CAUSE_MAX_CHARS]} if result.cause else {}),
        **({"flags": "; ".join(r.flags)} if r.flags else {}),
    }
    run = client.create_run(experiment_id, start_time=started, tags=tags, run_name=p.trial_id)
    stamp = started or 0
    names = objective.metric_names  # the curve follows the reward's metric where it is one
    followed = objective.reward.metric if objective.reward.metric in names else names[0]
    curve_name = f"val_{followed}_by_epoch"
    metrics = [metric(curve_name, v, stamp, i) for i, v in enumerate(result.curve)]
    final: dict[str, float] = {}
    if result.evaluation is not None:
        ev = result.evaluation
        final |= {f"val_{k}": v for k, v in ev.val.items()}
        final |= {f"test_{k}": v for k, v in ev.test.items()}
        final |= {
            "params": float(ev.params),
            "latency_ms": ev.latency_ms,
            "train_seconds": ev.train_seconds,
        }
    if r.val_reward is not None:
        final["val_reward"] = r.val_reward
    if r.test_reward is not None:
        final["test_reward"] = r.test_reward
    last = max(len(result.curve) - 1, 0)
    metrics += [metric(k, v, stamp, last) for k, v in final.items()]
    params = {**p.params, "seed": p.seed, "epochs": p.epochs or objective.budget.max_epochs}
    client.log_batch(
        run.info.run_id,
        metrics=metrics,
        params=[param(k, str(v)) for k, v in params.items()],
    )
    client.set_terminated(run.info.run_id, status=RUN_STATUS.get(r.status, "FAILED"))
    return str(run.info.run_id)
