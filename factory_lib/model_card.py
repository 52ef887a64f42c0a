"""Model cards: what every promoted model is, where it came from, and how to use it again."""

from __future__ import annotations

import json
import statistics
from typing import Any

from factory_lib import __version__
from factory_lib.data import DataSummary
from factory_lib.objective import Objective
from factory_lib.registry import Champion, PromotionDecision


def model_card(
    objective: Objective,
    champion: Champion,
    decision: PromotionDecision,
    data: DataSummary,
    run_pathspec: str,
    exports: dict[str, Any] | None,
) -> dict[str, Any]:
    """The card as plain data (kept as JSON); `to_markdown` renders it for people."""
    r = champion.record
    ev = r.result.evaluation
    assert ev is not None, "a champion always has an evaluation"
    spread = champion.seed_values
    return {
        "objective": objective.name,
        "trial": r.trial_id,
        "lineage": {
            "cycle": r.proposal.cycle,
            "run": run_pathspec,
            "train_task": r.result.task_pathspec,
            "proposer": r.proposal.source,
            "rationale": r.proposal.rationale,
            "parent": champion.parent,
        },
        "params": r.proposal.params,
        "seed": r.proposal.seed,
        "metrics": {"val": ev.val, "test": ev.test},
        "held_out_over_seeds": {
            "metric": champion.metric,
            "values": list(spread),
            "mean": statistics.fmean(spread) if spread else None,
            "sd": statistics.stdev(spread) if len(spread) > 1 else None,
        },
        "promotion": decision.model_dump(mode="json"),
        "constraints": [str(c) for c in objective.reward.constraints],
        "violations": list(r.violations),
        "flags": list(r.flags),
        "cost": {
            "params": ev.params,
            "latency_ms": ev.latency_ms,
            "train_seconds": ev.train_seconds,
        },
        "fingerprints": {
            "data": data.fingerprint,
            "splits": data.split_fingerprints,
            "evaluator": r.result.evaluator,
            "weights": r.result.weights_sha,
            "factory_lib": __version__,
        },
        "exports": exports or {},
        "reproduce": (
            f"python flows/cycle.py --config objective objectives/{objective.name}.yaml run  "
            f"# or, one trial: factory_lib.train.run_trial(objective, proposal) with params "
            f"{json.dumps(r.proposal.params)} and seed {r.proposal.seed}"
        ),
        "load": {
            "python": (
                "from factory_lib.registry import load_champion; "
                f'load_champion("{objective.name}").predict(X)'
            ),
            "torchscript": "torch.jit.load(path)(torch.from_numpy(X.astype('float32')))",
            "onnx": "onnxruntime.InferenceSession(path).run(None, {'x': X.astype('float32')})[0]",
        },
    }


def to_markdown(card: dict[str, Any]) -> str:
    """A model card people read: lineage, metrics with spread, cost, fingerprints, usage."""
    lin, held, fp = card["lineage"], card["held_out_over_seeds"], card["fingerprints"]
    spread = (
        f"{held['mean']:.4f} ± {held['sd']:.4f} over {len(held['values'])} seeds"
        if held["sd"] is not None
        else "one measurement"
    )
    diffs = card["exports"].get("max_abs_diff", {})
    exports = ", ".join(f"{k} (max |Δ| {v:.1e})" for k, v in diffs.items()) or "none"
    lines = [
        f"# Model card: {card['objective']} / {card['trial']}",
        "",
        f"**Lineage.** Cycle {lin['cycle']}, run `{lin['run']}`, task `{lin['train_task']}`,",
        f"proposed by `{lin['proposer']}`: {lin['rationale'] or '(no rationale)'}.",
        f"Replaced: {lin['parent'] or 'nothing (first champion)'}.",
        "",
        f"**Promotion.** {card['promotion']['status']}: {card['promotion']['reason']}",
        "",
        "| metric | validation | held-out test |",
        "| --- | --- | --- |",
        *(
            f"| {m} | {card['metrics']['val'][m]:.4f} | {card['metrics']['test'][m]:.4f} |"
            for m in card["metrics"]["test"]
        ),
        "",
        f"Held-out {held['metric']}: {spread}.",
        "",
        f"**Parameters.** `{json.dumps(card['params'])}`, seed {card['seed']}.",
        "",
        f"**Constraints.** {', '.join(card['constraints']) or 'none'};",
        f"violations: {', '.join(card['violations']) or 'none'};",
        f"flags: {', '.join(card['flags']) or 'none'}.",
        "",
        f"**Cost.** {card['cost']['params']} parameters, {card['cost']['latency_ms']:.4f} ms per",
        f"sample, {card['cost']['train_seconds']:.1f} s of training.",
        "",
        f"**Fingerprints.** data `{fp['data']}`, evaluator `{fp['evaluator']}`,",
        f"weights `{fp['weights']}`, factory_lib {fp['factory_lib']}.",
        "",
        f"**Exports.** {exports}.",
        "",
        f"**Reproduce.** `{card['reproduce']}`",
        "",
        f"**Load.** `{card['load']['python']}`",
        f"TorchScript: `{card['load']['torchscript']}`",
        f"ONNX: `{card['load']['onnx']}`",
        "",
    ]
    return "\n".join(lines)
