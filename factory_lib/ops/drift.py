"""Drift: is the champion still as good on new labelled data, and does the data still look the same?

`check_drift` scores the champion on new data with the sealed evaluator's metrics, compares
with its held-out metrics, and tests each feature against the training split with a
two-sample Kolmogorov–Smirnov test (Bonferroni-corrected). A new cycle is warranted when the
promotion metric got worse by more than `promotion.min_improvement`, or when at least
`DRIFTED_SHARE` of the features moved.

`check_served_drift` runs the feature test alone on the traffic `factory serve` sampled,
which has no labels.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict

from factory_lib.data.splits import load_splits
from factory_lib.registry.model import ChampionModel
from factory_lib.runs.champions import champion_of
from factory_lib.runs.client import FLOW_NAME, default_branch
from factory_lib.runs.lease import Datastore
from factory_lib.serve.traffic import ServedSample, read_sample, traffic_folder

ALPHA = 0.01
DRIFTED_SHARE = 0.1


class DriftReport(BaseModel):
    model_config = ConfigDict(frozen=True)

    objective: str
    champion: str
    rows: int
    metric: str
    now: dict[str, float]  # empty for served traffic: it has no labels
    held_out: dict[str, float]
    worse_by: float  # in the metric's direction: positive means worse than on the held-out split
    features_tested: int
    drifted: tuple[tuple[int, float, float], ...]  # (feature index, KS statistic, p-value)
    warranted: bool
    reasons: tuple[str, ...]
    source: str = "labelled data"  # or "served traffic" (factory serve's sample)

    def lines(self) -> list[str]:
        drifted = ", ".join(f"#{i} (KS {d:.2f}, p {p:.1e})" for i, d, p in self.drifted[:10])
        if self.now:
            now, held = self.now[self.metric], self.held_out[self.metric]
            how = "worse" if self.worse_by > 0 else "not worse"
            quality = [
                f"  {self.metric}: {now:.4f} now, {held:.4f} held-out"
                f" ({how} by {abs(self.worse_by):.4f})"
            ]
        else:
            quality = [f"  {self.metric}: not measured (served traffic has no labels)"]
        what = "new rows" if self.source == "labelled data" else "rows of served traffic"
        return [
            f"champion {self.champion} of {self.objective} on {self.rows} {what}:",
            *quality,
            f"  features drifted: {len(self.drifted)} of {self.features_tested}"
            + (f": {drifted}" if drifted else ""),
            "  a new cycle is warranted: " + "; ".join(self.reasons)
            if self.warranted
            else "  no new cycle needed",
        ]


def load_labelled(path: str | Path, target: str | None = None) -> tuple[Any, np.ndarray]:
    """Features and targets from .npz (arrays `x` and `y`) or .csv (target in the last column);
    for an objective on a table (`target` its column), the rows of a .csv or .parquet file."""
    p = Path(path)
    if target is not None:
        import pandas as pd

        df = pd.read_parquet(p) if p.suffix in (".parquet", ".pq") else pd.read_csv(p)
        if target not in df.columns:
            raise ValueError(f"{p}: no column {target!r} (the objective's target)")
        return df.drop(columns=[target]), df[target].to_numpy()
    if p.suffix == ".npz":
        with np.load(p) as data:
            if "x" not in data or "y" not in data:
                raise ValueError(
                    f"{p}: an .npz needs arrays 'x' and 'y', found {sorted(data.files)}"
                )
            return np.asarray(data["x"], np.float32), np.asarray(data["y"])
    if p.suffix == ".csv":
        with p.open() as f:
            rows = [r for r in csv.reader(f) if r]
        try:
            float(rows[0][0])
        except ValueError:
            rows = rows[1:]  # a header
        table = np.asarray(rows, dtype=np.float64)
        return table[:, :-1].astype(np.float32), table[:, -1]
    raise ValueError(f"{p}: give a .npz (x, y) or a .csv (target last)")


def check_drift(
    objective_name: str,
    x: Any,
    y: np.ndarray,
    flow_name: str = "CycleFlow",
    branch: str | None = None,
) -> DriftReport:
    """Score the champion on new labelled data and test its features for drift."""
    import torch

    from factory_lib.evaluate import quality_metrics
    from factory_lib.runs.client import latest_cycle

    state = latest_cycle(flow_name, objective_name, branch=branch)
    champion: ChampionModel = champion_of(state, objective_name, branch)
    package = champion.package
    objective = package.objective
    metric = objective.promotion_metric
    prep = package.preprocessing
    outputs = torch.from_numpy(champion.outputs(x))
    targets = np.asarray(y)
    if objective.task == "classification" and prep is not None and prep.classes is not None:
        lookup = {str(c): i for i, c in enumerate(prep.classes)}
        unknown = sorted({str(v) for v in targets} - set(lookup))
        if unknown:
            raise ValueError(f"labels the champion never saw: {', '.join(unknown[:5])}")
        targets = np.asarray([lookup[str(v)] for v in targets])
    if objective.task == "classification":
        target_tensor = torch.from_numpy(targets.astype(np.int64))
    else:
        scaled = prep.transform_y(targets.astype(np.float32)) if prep is not None else targets
        target_tensor = torch.from_numpy(np.asarray(scaled, np.float32))
    now = quality_metrics(outputs, target_tensor, objective.task, objective.metric_names, prep)
    assert state is not None and state.champion is not None
    evaluation = state.champion.record.result.evaluation
    assert evaluation is not None
    held_out = dict(evaluation.test)
    sign = 1.0 if objective.promotion_direction == "maximize" else -1.0
    worse_by = sign * (held_out[metric] - now[metric])
    reasons = []
    if worse_by > objective.promotion.min_improvement:
        reasons.append(f"{metric} is worse than held-out by {worse_by:.4f}")
    drifted: tuple[tuple[int, float, float], ...] = ()
    tested = 0
    if objective.data.module is None:  # a user module's raw training features are its own
        new = champion.export_input(x)  # tables and images compared as the network sees them
        drifted, tested = feature_drift(champion, new)
        if tested and len(drifted) / tested >= DRIFTED_SHARE:
            reasons.append(drift_reason(len(drifted), tested))
    return DriftReport(
        objective=objective_name,
        champion=package.trial_id,
        rows=len(x),
        metric=metric,
        now=now,
        held_out=held_out,
        worse_by=float(worse_by),
        features_tested=tested,
        drifted=drifted,
        warranted=bool(reasons),
        reasons=tuple(reasons),
    )


def drift_reason(drifted: int, tested: int) -> str:
    return f"{drifted} of {tested} features drifted (KS, p < {ALPHA}/{tested})"


def feature_drift(
    champion: ChampionModel, new: np.ndarray
) -> tuple[tuple[tuple[int, float, float], ...], int]:
    """Each feature of `new` (encoded as the exports take it) against the champion's training
    split: the drifted ones (index, KS statistic, p-value; smallest p first), and how many
    were tested."""
    from scipy import stats

    objective = champion.package.objective
    train = champion.export_input(load_splits(objective.data, objective.task).raw_x["train"])
    train_flat, new_flat = train.reshape(len(train), -1), new.reshape(len(new), -1)
    tested = train_flat.shape[1]
    drifted: list[tuple[int, float, float]] = []
    for i in range(tested):
        if np.ptp(train_flat[:, i]) == 0 and np.ptp(new_flat[:, i]) == 0:
            continue
        result = stats.ks_2samp(train_flat[:, i], new_flat[:, i])
        if result.pvalue < ALPHA / tested:
            drifted.append((i, float(result.statistic), float(result.pvalue)))
    return tuple(sorted(drifted, key=lambda d: d[2])), tested


def served_sample_folder(
    objective_name: str, sample_dir: str | None = None, branch: str | None = None
) -> str:
    """Where `factory serve` keeps the traffic sample of a search (the objective on `branch`,
    yours by default): `sample_dir` (a folder or an s3:// prefix), or beside the datastore
    (local or S3)."""
    if sample_dir:
        return sample_dir
    store = Datastore.configured()
    if store is None or store.kind not in ("local", "s3"):
        where = f"the {store.kind} datastore" if store is not None else "no datastore"
        raise LookupError(f"{where}: give the traffic sample a place with --sample-dir")
    return traffic_folder(store.root, FLOW_NAME, objective_name, default_branch(branch))


def check_served_drift(
    objective_name: str,
    sample_dir: str | None = None,
    flow_name: str = FLOW_NAME,
    branch: str | None = None,
    since: float | None = None,
) -> DriftReport:
    """The feature test on the traffic `factory serve` sampled for the search on `branch`
    (served since `since`, seconds since the epoch; None: the whole sample kept); LookupError
    when there is none."""
    from factory_lib.runs.client import latest_cycle

    folder = served_sample_folder(objective_name, sample_dir, branch)
    sample: ServedSample = read_sample(folder, since)
    if not len(sample.x):
        after = f" since {_utc(since)}" if since is not None else ""
        raise LookupError(f"no served traffic of {objective_name!r} sampled{after} in {folder}")
    state = latest_cycle(flow_name, objective_name, branch=branch)
    champion = champion_of(state, objective_name, branch)
    objective = champion.package.objective
    if objective.data.module is not None:
        raise LookupError(
            "served drift needs the training split's raw features: a user data module's are its own"
        )
    drifted, tested = feature_drift(champion, sample.x)
    warranted = bool(tested) and len(drifted) / tested >= DRIFTED_SHARE
    return DriftReport(
        objective=objective_name,
        champion=champion.package.trial_id,
        rows=len(sample.x),
        metric=objective.promotion_metric,
        now={},
        held_out={},
        worse_by=0.0,
        features_tested=tested,
        drifted=drifted,
        warranted=warranted,
        reasons=(drift_reason(len(drifted), tested),) if warranted else (),
        source="served traffic",
    )


def _utc(seconds: float) -> str:
    import datetime

    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
