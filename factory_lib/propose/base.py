"""The interface every proposer shares, and the view of history it is allowed to see."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict

from factory_lib.fidelity import first_rung
from factory_lib.objective import Objective
from factory_lib.records import Grade, Prediction, Proposal, TrialRecord, TrialStatus, params_key

CAUSE_MAX_CHARS = 200


class SeenTrial(BaseModel):
    """A trial as proposers see it: validation numbers only, never the held-out test split."""

    model_config = ConfigDict(frozen=True)

    trial_id: str
    cycle: int
    params: dict[str, Any]
    source: str
    rationale: str
    status: TrialStatus
    cause: str
    val: dict[str, float]
    val_reward: float | None
    feasible: bool
    violations: tuple[str, ...]
    constraint_excess: tuple[float, ...]
    curve: tuple[float, ...]
    hypothesis: str = ""
    prediction: Prediction | None = None
    grade: Grade | None = None  # graded on these validation numbers only

    @property
    def key(self) -> str:
        return params_key(self.params)


def seen_by_proposers(objective: Objective, records: Sequence[TrialRecord]) -> list[SeenTrial]:
    """Strip everything a proposer must not see (test metrics, weights, task paths)."""
    seen = []
    for r in records:
        ev = r.result.evaluation
        val = ev.metrics("val") if ev is not None else {}
        excess = (
            tuple(
                (val[c.metric] - c.bound) * (1.0 if c.op in ("<=", "<") else -1.0)
                for c in objective.reward.constraints
            )
            if val
            else ()
        )
        seen.append(
            SeenTrial(
                trial_id=r.trial_id,
                cycle=r.proposal.cycle,
                params=r.proposal.params,
                source=r.proposal.source,
                rationale=r.proposal.rationale,
                status=r.status,
                cause=r.result.cause[:CAUSE_MAX_CHARS],
                val=val,
                val_reward=r.val_reward,
                feasible=r.feasible,
                violations=r.violations,
                constraint_excess=excess,
                curve=r.result.curve,
                hypothesis=r.proposal.hypothesis,
                prediction=r.proposal.prediction,
                grade=r.grade,
            )
        )
    return seen


def trial_seed(objective: Objective, number: int) -> int:
    """The training seed of the search's `number`-th trial: fixed, so a rerun trains the same."""
    return (objective.data.seed * 1_000_003 + number) % 2**31


def make_proposal(
    objective: Objective,
    cycle: int,
    number: int,
    index: int,
    params: dict[str, Any],
    source: str,
    rationale: str,
    hypothesis: str = "",
    prediction: Prediction | None = None,
) -> Proposal:
    return Proposal(
        trial_id=f"c{cycle:03d}-t{index:02d}",
        number=number,
        cycle=cycle,
        params={**params, **objective.fixed},
        source=source,
        rationale=rationale,
        seed=trial_seed(objective, number),
        epochs=first_rung(objective),
        hypothesis=hypothesis,
        prediction=prediction,
    )


def renumber(
    objective: Objective, proposals: Sequence[Proposal], first_number: int
) -> list[Proposal]:
    """Give proposals from several proposers consecutive ids, numbers and seeds."""
    return [
        make_proposal(
            objective,
            p.cycle,
            first_number + i,
            i,
            p.params,
            p.source,
            p.rationale,
            p.hypothesis,
            p.prediction,
        )
        for i, p in enumerate(proposals)
    ]


class Proposer(Protocol):
    """Given the objective and what it may see of history, return up to `n` new proposals."""

    name: str

    def propose(
        self, objective: Objective, seen: Sequence[SeenTrial], n: int, cycle: int, first_number: int
    ) -> list[Proposal]: ...
