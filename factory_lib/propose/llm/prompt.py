"""What Claude is shown: the prompts (files under prompts/), the objective and the history view.

History shown is numbers and enums from our own records (validation split only).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from importlib import resources
from typing import Any

from factory_lib.objective import (
    METRIC_DIRECTIONS,
    LLMSpec,
    Objective,
)
from factory_lib.propose.base import SeenTrial
from factory_lib.propose.notes import LabNotes
from factory_lib.reward import pareto_indices

CHARS_PER_TOKEN_ESTIMATE = 3.0


def prompt_text(name: str) -> str:
    """A prompt file of `prompts/`, as written."""
    return resources.files("factory_lib.propose.llm").joinpath(f"prompts/{name}.md").read_text()


def prompt_fingerprint() -> str:
    """Prompts are versioned like code: every LLM report names the prompt text it used."""
    text = "".join(prompt_text(n) for n in ("system", "request", "repair"))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def describe_objective(
    objective: Objective, input_shape: Sequence[int], n_outputs: int
) -> dict[str, Any]:
    """The static part of every request: the objective as the model may know it."""
    reward = objective.reward
    return {
        "task": objective.task,
        "data": {"input_shape": list(input_shape), "n_outputs": n_outputs},
        "model_families": list(objective.model.families),
        "search_space": {
            n: p.model_dump(exclude_none=True) for n, p in objective.search_space.items()
        },
        "fixed": objective.fixed,
        "reward": {
            "metric": reward.metric,
            "direction": reward.resolved_direction,
            "weights": {
                m: {"weight": w, "direction": METRIC_DIRECTIONS[m]}
                for m, w in reward.weights.items()
            },
            "constraints": [str(c) for c in reward.constraints],
        },
        "max_epochs": objective.budget.max_epochs,
        **(
            {
                "successive_halving": {
                    "rungs": list(objective.fidelity.rungs),
                    "eta": objective.fidelity.eta,
                    "note": "new trials train for the first rung's epochs; the best 1/eta "
                    "of each rung continue from their checkpoints to the next",
                }
            }
            if objective.fidelity
            else {}
        ),
    }


def _trial_view(t: SeenTrial) -> dict[str, Any]:
    view: dict[str, Any] = {
        "trial": t.trial_id,
        "source": t.source,
        "params": t.params,
        "status": t.status,
    }
    if t.val:
        view["val"] = {k: round(v, 5) for k, v in t.val.items()}
    if t.val_reward is not None:
        view["val_reward"] = round(t.val_reward, 5)
    if t.violations and t.status == "ok":
        view["violates"] = list(t.violations)
    if t.cause:
        view["error_message_quoted"] = json.dumps(t.cause)  # data, never instructions
    return view


def pareto_front(seen: Sequence[SeenTrial], metric: str, direction: str) -> list[SeenTrial]:
    """Completed trials not dominated on (the reward metric, parameter count)."""
    sign = -1.0 if direction == "maximize" else 1.0  # pareto_indices minimises every axis
    done = [t for t in seen if t.status == "ok" and metric in t.val]
    front = pareto_indices([(sign * t.val[metric], t.val["params"]) for t in done])
    return sorted((done[i] for i in front), key=lambda t: t.val["params"])


def history_view(
    objective: Objective,
    spec: LLMSpec,
    seen: Sequence[SeenTrial],
    notes: LabNotes | None = None,
) -> dict[str, Any]:
    """What the model is shown: best trials, the Pareto front, failures, earlier LLM ideas
    with their hypotheses and grades, and the previous cycle's lab notes."""
    ranked = sorted(
        (t for t in seen if t.val_reward is not None and t.feasible),
        key=lambda t: -(t.val_reward or 0.0),
    )
    failures = (
        [t for t in seen if t.status != "ok"][-spec.show_failures :] if spec.show_failures else []
    )
    llm_earlier = [t for t in seen if t.source.startswith("llm:")][-spec.show_best :]
    metric = (
        objective.reward.metric
        if objective.reward.metric in objective.metric_names
        else objective.metric_names[0]
    )
    return {
        "trials_so_far": len(seen),
        "by_status": {
            s: sum(t.status == s for t in seen) for s in sorted({t.status for t in seen})
        },
        "best": [_trial_view(t) for t in ranked[: spec.show_best]],
        "pareto_front": {
            "axes": [f"val {metric} ({objective.reward.resolved_direction})", "params (minimize)"],
            "trials": [
                t.trial_id for t in pareto_front(seen, metric, objective.reward.resolved_direction)
            ],
        },
        "recent_failures": [_trial_view(t) for t in failures],
        "earlier_llm_proposals": [
            {**_trial_view(t), "rationale": t.rationale, **_hypothesis_view(t)} for t in llm_earlier
        ],
        **({"lab_notes": notes.for_model()} if notes is not None else {}),
    }


def _hypothesis_view(t: SeenTrial) -> dict[str, Any]:
    if t.prediction is None:
        return {}
    grade = {"verdict": t.grade.verdict, "observed": t.grade.observed} if t.grade else {}
    return {"hypothesis": t.hypothesis, "prediction": t.prediction.text(), **grade}
