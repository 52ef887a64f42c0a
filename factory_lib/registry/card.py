"""Model cards: what every promoted model is, where it came from, and how to use it again."""

from __future__ import annotations

import json
import statistics
from typing import Any

from pydantic import BaseModel, ConfigDict

from factory_lib import __version__
from factory_lib.data import DataSummary, Preprocessing
from factory_lib.objective import Objective
from factory_lib.registry.gate import Champion, PromotionDecision

# How to retrain the champion's trial alone: run with `objective` and `proposal` bound.
REPRODUCE_PYTHON = (
    "from factory_lib.data.module import build_trial_data; "
    "from factory_lib.train.trial import run_trial; "
    "run_trial(objective, proposal, build_trial_data(objective))"
)


class _CardPart(BaseModel):
    model_config = ConfigDict(frozen=True)


class Lineage(_CardPart):
    cycle: int
    run: str
    train_task: str | None
    proposer: str
    rationale: str
    parent: str | None


class SeedSpread(_CardPart):
    """The held-out metric over retrainings with other seeds (the first is the trial's own)."""

    metric: str
    values: tuple[float, ...]
    mean: float | None
    sd: float | None


class Cost(_CardPart):
    params: int | None
    latency_ms: float | None
    train_seconds: float | None


class Fingerprints(_CardPart):
    data: str
    splits: dict[str, str]
    evaluator: str
    weights: str | None
    factory_lib: str


class ExportSummary(_CardPart):
    """What the card says of the exports (not the bytes), or why there are none."""

    formats: tuple[str, ...] = ()
    max_abs_diff: dict[str, float] = {}
    tolerance: float | None = None
    artifact: str = ""
    error: str | None = None


class ModelCard(_CardPart):
    """A promoted model's card: lineage, metrics with spread, cost, fingerprints, usage."""

    objective: str
    trial: str
    lineage: Lineage
    params: dict[str, Any]
    seed: int
    metrics: dict[str, dict[str, float]]  # split → metric → value
    held_out_over_seeds: SeedSpread
    promotion: PromotionDecision
    constraints: tuple[str, ...]
    violations: tuple[str, ...]
    flags: tuple[str, ...]
    cost: Cost
    fingerprints: Fingerprints
    exports: ExportSummary
    reproduce: str
    load: dict[str, str]
    # What happens to raw inputs before the network (the exports take them encoded), and what
    # the data source dropped or skipped; empty on cards from before these were recorded.
    preprocessing: str = ""
    data_notes: tuple[str, ...] = ()

    def to_markdown(self) -> str:
        """The card as people read it."""
        lin, held, fp, cost = self.lineage, self.held_out_over_seeds, self.fingerprints, self.cost
        spread = (
            f"{held.mean:.4f} ± {held.sd:.4f} over {len(held.values)} seeds"
            if held.mean is not None and held.sd is not None
            else "one measurement"
        )
        diffs = self.exports.max_abs_diff
        exports = ", ".join(f"{k} (max |Δ| {v:.1e})" for k, v in diffs.items()) or (
            self.exports.error or "none"
        )
        latency = f"{cost.latency_ms:.4f}" if cost.latency_ms is not None else "?"
        seconds = f"{cost.train_seconds:.1f}" if cost.train_seconds is not None else "?"
        lines = [
            f"# Model card: {self.objective} / {self.trial}",
            "",
            f"**Lineage.** Cycle {lin.cycle}, run `{lin.run}`, task `{lin.train_task}`,",
            f"proposed by `{lin.proposer}`: {lin.rationale or '(no rationale)'}.",
            f"Replaced: {lin.parent or 'nothing (first champion)'}.",
            "",
            f"**Promotion.** {self.promotion.status}: {self.promotion.reason}",
            "",
            "| metric | validation | held-out test |",
            "| --- | --- | --- |",
            *(
                f"| {m} | {self.metrics['val'][m]:.4f} | {self.metrics['test'][m]:.4f} |"
                for m in self.metrics["test"]
            ),
            "",
            f"Held-out {held.metric}: {spread}.",
            "",
            f"**Parameters.** `{json.dumps(self.params)}`, seed {self.seed}.",
            "",
            f"**Constraints.** {', '.join(self.constraints) or 'none'};",
            f"violations: {', '.join(self.violations) or 'none'};",
            f"flags: {', '.join(self.flags) or 'none'}.",
            "",
            f"**Cost.** {cost.params} parameters, {latency} ms per sample,",
            f"{seconds} s of training.",
            "",
            f"**Fingerprints.** data `{fp.data}`, evaluator `{fp.evaluator}`,",
            f"weights `{fp.weights}`, factory_lib {fp.factory_lib}.",
            "",
            f"**Data.** {self.preprocessing or 'as the data module yields it'}"
            + "".join(f"; {n}" for n in self.data_notes)
            + ".",
            "",
            f"**Exports.** {exports}.",
            "",
            f"**Reproduce.** `{self.reproduce}`",
            "",
            f"**Load.** `{self.load['python']}`",
            f"TorchScript: `{self.load['torchscript']}`",
            f"ONNX: `{self.load['onnx']}`",
            "",
        ]
        return "\n".join(lines)


def model_card(
    objective: Objective,
    champion: Champion,
    decision: PromotionDecision,
    data: DataSummary,
    run_pathspec: str,
    exports: ExportSummary,
    preprocessing: Preprocessing | None = None,
) -> ModelCard:
    """The card of a newly promoted champion (kept as an artifact; `to_markdown` for people)."""
    r = champion.record
    ev = r.result.evaluation
    assert ev is not None, "a champion always has an evaluation"
    spread = champion.seed_values
    return ModelCard(
        objective=objective.name,
        trial=r.trial_id,
        lineage=Lineage(
            cycle=r.proposal.cycle,
            run=run_pathspec,
            train_task=r.result.task_pathspec,
            proposer=r.proposal.source,
            rationale=r.proposal.rationale,
            parent=champion.parent,
        ),
        params=r.proposal.params,
        seed=r.proposal.seed,
        metrics={"val": dict(ev.val), "test": dict(ev.test)},
        held_out_over_seeds=SeedSpread(
            metric=champion.metric,
            values=spread,
            mean=statistics.fmean(spread) if spread else None,
            sd=statistics.stdev(spread) if len(spread) > 1 else None,
        ),
        promotion=decision,
        constraints=tuple(str(c) for c in objective.reward.constraints),
        violations=tuple(r.violations),
        flags=tuple(r.flags),
        cost=Cost(params=ev.params, latency_ms=ev.latency_ms, train_seconds=ev.train_seconds),
        fingerprints=Fingerprints(
            data=data.fingerprint,
            splits=data.split_fingerprints,
            evaluator=r.result.evaluator,
            weights=r.result.weights_sha,
            factory_lib=__version__,
        ),
        exports=exports,
        reproduce=(
            f"python flows/cycle.py --config objective objectives/{objective.name}.yaml run  "
            f"# or, this trial alone (params {json.dumps(r.proposal.params)}, seed "
            f"{r.proposal.seed}): {REPRODUCE_PYTHON}"
        ),
        load=_load_snippets(objective),
        preprocessing=preprocessing.describe() if preprocessing is not None else "",
        data_notes=data.notes,
    )


# What `predict` takes, per data source (docs/data.md).
RAW_INPUTS = {
    "dataset": "X",
    "arrays": "X",
    "table": "df",  # a DataFrame with the table's columns
    "images": "[path, ...]",  # image files (or PIL images, or pixel arrays)
    "module": "X",  # a batch of inputs as the data module's loaders yield them
}


def _load_snippets(objective: Objective) -> dict[str, str]:
    raw = RAW_INPUTS[objective.data.source]
    champion = f'load_champion("{objective.name}")'
    # The exports take the encoded inputs: for tables and images, what export_input makes.
    x = "X" if raw == "X" else f"{champion}.export_input({raw})"
    return {
        "python": f"from factory_lib.runs import load_champion; {champion}.predict({raw})",
        "torchscript": f"torch.jit.load(path)(torch.from_numpy(({x}).astype('float32')))",
        "onnx": (
            f"onnxruntime.InferenceSession(path).run(None, {{'x': ({x}).astype('float32')}})[0]"
        ),
    }
