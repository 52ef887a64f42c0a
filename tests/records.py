"""Hand-made records for unit tests of the pure stages."""

from __future__ import annotations

from typing import Any

from factory_lib.objective import Objective
from factory_lib.records import Evaluation, Proposal, TrialRecord, TrialResult
from factory_lib.reward import score


def result(
    n: int,
    val: float | None = 0.9,
    test: float | None = 0.9,
    params: int = 1000,
    status: str = "ok",
    cycle: int = 1,
    source: str = "optuna:tpe",
    **proposal_params: Any,
) -> TrialResult:
    proposal = Proposal(
        trial_id=f"c{cycle:03d}-t{n:02d}",
        number=n,
        cycle=cycle,
        params=proposal_params or {"lr": 0.01 * (n + 1), "width": 8, "depth": 1},
        source=source,
        seed=n,
    )
    evaluation = None
    if status == "ok" and val is not None and test is not None:
        evaluation = Evaluation(
            val={"accuracy": val, "macro_f1": val},
            test={"accuracy": test, "macro_f1": test},
            params=params,
            latency_ms=0.01,
            train_seconds=1.0,
        )
    return TrialResult(
        proposal=proposal,
        status=status,  # type: ignore[arg-type]
        cause="" if status == "ok" else "planted",
        evaluation=evaluation,
        curve=(0.5, val or 0.0),
        epochs=2,
        weights_sha=f"sha{n}" if evaluation else None,
    )


def record(objective: Objective, n: int, **kw: Any) -> TrialRecord:
    return score(objective, result(n, **kw))
