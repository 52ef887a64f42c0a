"""Two chained smoke cycles must reproduce a golden summary: the proof that a refactor changed
no behaviour.

The test runs two real cycles of a copy of objectives/smoke.yaml (seeds fixed, trial groups
pinned, the champion re-measured over two seeds) and compares what their end steps hold, read
through the Client API, with tests/fixtures/smoke_two_cycles.json: floats to 1e-6 (absolute),
everything else (ids, parameters, statuses, reasons) exactly.

Left out because they legitimately vary from run to run: timings (`latency_ms`,
`train_seconds`, `started_at`, registry event times), task and run pathspecs, and the
evaluator's fingerprint (a hash of its source file, which a refactor may move or edit), and
the weights' hash: the same training on another x86 CPU model (AMD EPYC vs Intel Xeon) gives
weights that differ in their last bits, so the hash differs while every metric agrees to 1e-6.
The numbers belong to the CPU and to the installed torch, Optuna and scikit-learn: record the
fixture again after upgrading them, and compare on the CPU (smoke asks for no GPU).

To record the fixture anew (only after a change that is meant to change behaviour):

    FACTORY_RECORD_FIXTURE=1 pytest tests/test_equivalence.py

which writes the fixture and skips the comparison; commit the new file with the reason.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, run_cycle, write_objective

pytestmark = pytest.mark.slow

FIXTURE = ROOT / "tests" / "fixtures" / "smoke_two_cycles.json"
RECORD_VARIABLE = "FACTORY_RECORD_FIXTURE"
FLOAT_TOLERANCE = 1e-6
# Keys whose values must match exactly even where they hold floats (a proposal's parameters).
EXACT_KEYS = frozenset({"params"})
# Fixed seeds, and groups of two trials per train task whatever the machine's core count
# (`group_size: auto` follows os.cpu_count(), and which trials share a task decides which
# are fused into one model, whose numbers differ from training alone). Two enqueued trials
# of one shape open cycle 1 and share its first task, so fused training is compared too.
# `promotion.seeds: 2` retrains the first champion once more, so the seed re-measurement
# and the Welch gate of cycle 2 are part of what is compared.
OVERRIDES: dict[str, Any] = {
    "data": {"seed": 0},
    "proposers": {
        "sampler": "tpe",
        "seed": 0,
        "enqueue": [{"lr": 0.01, "width": 8, "depth": 1}, {"lr": 0.03, "width": 8, "depth": 1}],
    },
    "budget": {"group_size": 2},
    "promotion": {"seeds": 2},
}


def _metrics(values: dict[str, float]) -> dict[str, float]:
    return {k: float(v) for k, v in sorted(values.items())}


def record_summary(record: Any) -> dict[str, Any]:
    """What a TrialRecord must reproduce, from its public attributes only."""
    proposal, result = record.proposal, record.result
    evaluation = result.evaluation
    return {
        "trial_id": record.trial_id,
        "number": proposal.number,
        "cycle": proposal.cycle,
        "params": dict(sorted(proposal.params.items())),
        "source": proposal.source,
        "rationale": proposal.rationale,
        "seed": proposal.seed,
        "epoch_budget": proposal.epochs,
        "continues": proposal.continues,
        "status": record.status,
        "cause_class": result.cause.split(":", 1)[0] if result.cause else "",
        "curve": [float(v) for v in result.curve],
        "epochs": result.epochs,
        "start_epoch": result.start_epoch,
        "resumable": result.resumable,
        "data_fingerprint": result.data_fingerprint,
        "evaluation": evaluation
        and {
            "val": _metrics(evaluation.val),
            "test": _metrics(evaluation.test),
            "model_params": evaluation.params,
        },
        "feasible": record.feasible,
        "violations": list(record.violations),
        "val_reward": record.val_reward,
        "test_reward": record.test_reward,
        "flags": list(record.flags),
    }


def decision_summary(decision: Any) -> dict[str, Any]:
    """The promotion decision and the held-out evidence behind it."""
    evidence = decision.evidence
    return {
        "status": decision.status,
        "reason": decision.reason,
        "challenger": decision.challenger,
        "champion": decision.champion,
        "delta": decision.delta,
        "evidence": evidence
        and {
            "metric": evidence.metric,
            "direction": evidence.direction,
            "challenger_values": list(evidence.challenger_values),
            "champion_values": list(evidence.champion_values),
            "difference": evidence.difference,
            "lower_bound": evidence.lower_bound,
            "confidence": evidence.confidence,
            "method": evidence.method,
        },
    }


def champion_summary(champion: Any) -> dict[str, Any] | None:
    if champion is None:
        return None
    return {
        "trial_id": champion.trial_id,
        "promoted_in_cycle": champion.promoted_in_cycle,
        "metric": champion.metric,
        "test_value": champion.test_value,
        "seed_values": list(champion.seed_values),
        "parent": champion.parent,
    }


def cycle_summary(data: Any) -> dict[str, Any]:
    """A cycle's end-step artifacts as plain JSON values, without what varies between runs."""
    return {
        "cycle": data.cycle,
        "records": [record_summary(r) for r in data.records],
        "history_trial_ids": [r.trial_id for r in data.history],
        "decision": decision_summary(data.decision),
        "champion": champion_summary(data.champion),
        "stale_cycles": data.stale_cycles,
        "pareto": {
            "axes": list(data.pareto.axes),
            "trial_ids": list(data.pareto.trial_ids),
            "points": [list(p) for p in data.pareto.points],
            "hypervolume": data.pareto.hypervolume,
        },
        "promotions": [
            {"kind": e.kind, "trial_id": e.trial_id, "actor": e.actor, "reason": e.reason}
            for e in data.promotions
        ],
    }


def differences(expected: Any, actual: Any, path: str = "$", exact: bool = False) -> list[str]:
    """Where `actual` departs from `expected`: floats beyond the tolerance, the rest unequal."""
    if isinstance(expected, dict) and isinstance(actual, dict):
        found = (
            [f"{path}: keys {sorted(expected)} != {sorted(actual)}"]
            if expected.keys() != actual.keys()
            else []
        )
        for key in sorted(expected.keys() & actual.keys()):
            found += differences(
                expected[key], actual[key], f"{path}.{key}", exact or key in EXACT_KEYS
            )
        return found
    if isinstance(expected, list) and isinstance(actual, list):
        if len(expected) != len(actual):
            return [f"{path}: length {len(expected)} != {len(actual)}"]
        return [
            d
            for i, (e, a) in enumerate(zip(expected, actual, strict=True))
            for d in differences(e, a, f"{path}[{i}]", exact)
        ]
    floats = isinstance(expected, float) or isinstance(actual, float)
    numbers = all(
        isinstance(v, int | float) and not isinstance(v, bool) for v in (expected, actual)
    )
    if floats and numbers and not exact:
        if math.isclose(expected, actual, rel_tol=0.0, abs_tol=FLOAT_TOLERANCE):
            return []
    elif expected == actual and type(expected) is type(actual):
        return []
    return [f"{path}: expected {expected!r}, got {actual!r}"]


def test_two_smoke_cycles_match_the_golden_fixture(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    objective = write_objective(tmp_path, "equivalence-smoke", **OVERRIDES)
    first_run = run_cycle(objective, fresh=True)
    first, second = first_run["end"].task.data, run_cycle(objective)["end"].task.data
    # The comparison covers fused training and a re-measured champion only if they happened.
    assert any("fused 2 trials" in task.stdout for task in first_run["train"])
    assert first.champion is not None and len(first.champion.seed_values) == 2
    assert second.decision.evidence is not None

    # Through JSON, so tuples and lists (and the fixture read back) compare alike.
    summary = json.loads(json.dumps([cycle_summary(first), cycle_summary(second)]))
    if os.environ.get(RECORD_VARIABLE) == "1":
        FIXTURE.parent.mkdir(exist_ok=True)
        FIXTURE.write_text(json.dumps(summary, indent=2) + "\n")
        pytest.skip(f"{RECORD_VARIABLE}=1: recorded {FIXTURE.relative_to(ROOT)}, compared nothing")

    found = differences(json.loads(FIXTURE.read_text()), summary)
    assert not found, f"{len(found)} differences from the golden fixture:\n" + "\n".join(found[:40])
