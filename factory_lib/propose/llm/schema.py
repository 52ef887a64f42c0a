"""The tool Claude answers through: its input schema is the search space; answers are checked.

The answer is untrusted data. Every proposal is validated (types, bounds, choices, conditions,
unknown keys, repeats of tried trials); nothing in it is ever executed.
"""

from __future__ import annotations

import json
import math
from collections.abc import Collection, Sequence
from typing import Any

from anthropic.types import ToolChoiceToolParam, ToolParam
from pydantic import ValidationError

from factory_lib.models.grammar import canonical, check
from factory_lib.objective import (
    CategoricalParam,
    FloatParam,
    GrammarSpec,
    IntParam,
    Objective,
)
from factory_lib.propose.optuna_proposer import uses_arch
from factory_lib.records import COMPARISONS, SPLIT_FREE_METRICS, Prediction

TOOL_NAME = "propose_trials"
FORCED_TOOL: ToolChoiceToolParam = {"type": "tool", "name": TOOL_NAME}
# A proposal deeper than this (lists and objects inside each other) is refused before any
# other check: no search space or architecture grammar nests nearly as deep.
MAX_NESTING = 8
# Rationales are shown in logs, cards and prompts: longer ones are cut.
RATIONALE_MAX_CHARS = 600


REJECTED_PARAMS_MAX_CHARS = 300
TRIAL_ID_PATTERN = r"^c\d{3}-t\d{2}$"
ITEM_KEYS = ("params", "rationale", "hypothesis", "prediction")


def _param_schema(p: FloatParam | IntParam | CategoricalParam) -> dict[str, Any]:
    if isinstance(p, FloatParam):
        schema: dict[str, Any] = {"type": "number", "minimum": p.low, "maximum": p.high}
        if p.log:
            schema["description"] = "log scale"
    elif isinstance(p, IntParam):
        schema = {"type": "integer", "minimum": p.low, "maximum": p.high}
        if p.step != 1:
            schema["multipleOf"] = p.step
    else:
        schema = {"enum": list(p.choices)}
    if p.when:
        conditions = " and ".join(f"{k} = {v!r}" for k, v in p.when.items())
        schema["description"] = (schema.get("description", "") + f"; only when {conditions}").strip(
            "; "
        )
    return schema


def _architecture_schema(grammar: GrammarSpec, families: tuple[str, ...]) -> dict[str, Any]:
    block = {
        "type": {"enum": list(grammar.blocks)},
        "units": {"type": "integer", "minimum": grammar.units[0], "maximum": grammar.units[1]},
        "channels": {
            "type": "integer",
            "minimum": grammar.channels[0],
            "maximum": grammar.channels[1],
        },
        "kernel": {"enum": list(grammar.kernels)},
        "fn": {"enum": list(grammar.activations)},
        "p": {"type": "number", "minimum": 0, "maximum": grammar.max_dropout},
    }
    when = "" if families == ("arch",) else "only when family = 'arch'; "
    return {
        "type": "array",
        "minItems": 1,
        "maxItems": grammar.max_depth,
        "items": {
            "type": "object",
            "properties": block,
            "required": ["type"],
            "additionalProperties": False,
        },
        "description": (
            f"{when}the network as blocks in order: linear{{units}}, conv{{channels, kernel}}, "
            "norm, activation{fn}, dropout{p}, residual (same-width skip), pool (2x2 max); "
            f"a linear head to the outputs is appended; at most {grammar.max_params} parameters"
        ),
    }


def tool_schema(objective: Objective) -> ToolParam:
    """The tool the model must call: its input schema is generated from the search space. It
    says nothing of how many trials are wanted (the request does): the tool is part of the
    cached prompt prefix, the same for every call of the search."""
    params = {name: _param_schema(p) for name, p in objective.search_space.items()}
    always = [name for name, p in objective.search_space.items() if not p.when]
    if objective.model.grammar is not None:
        if objective.model.families == ("arch",):
            always.append("architecture")
        params["architecture"] = _architecture_schema(
            objective.model.grammar, objective.model.families
        )
    return {
        "name": TOOL_NAME,
        "description": "Submit the next trials of the search, each with a rationale.",
        "input_schema": {
            "type": "object",
            "properties": {
                "proposals": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "properties": {
                            "params": {
                                "type": "object",
                                "properties": params,
                                "required": always,
                                "additionalProperties": False,
                            },
                            "rationale": {"type": "string", "minLength": 1},
                            "hypothesis": {
                                "type": "string",
                                "minLength": 1,
                                "description": "what this trial tests, in one sentence",
                            },
                            "prediction": _prediction_schema(objective),
                        },
                        "required": list(ITEM_KEYS),
                        "additionalProperties": False,
                    },
                }
            },
            "required": ["proposals"],
        },
    }


def prediction_metrics(objective: Objective) -> list[str]:
    """What a prediction may compare: the validation reward, the quality metrics on the
    validation split, and the model's cost."""
    return ["val_reward", *objective.metric_names, *SPLIT_FREE_METRICS]


def _prediction_schema(objective: Objective) -> dict[str, Any]:
    return {
        "type": "object",
        "description": "checked on this trial's validation numbers after the cycle: either "
        "{metric, op, value} or {beats: the id of a trial already in the history}, meaning "
        "this trial's val_reward will be larger than that trial's",
        "properties": {
            "metric": {"enum": prediction_metrics(objective)},
            "op": {"enum": list(COMPARISONS)},
            "value": {"type": "number"},
            "beats": {"type": "string", "pattern": TRIAL_ID_PATTERN},
        },
        "additionalProperties": False,
    }


def check_prediction(
    objective: Objective, raw: Any, known_trials: Collection[str]
) -> tuple[Prediction | None, list[str]]:
    """Validate one proposal's prediction against its fixed form; returns (it, errors)."""
    if not isinstance(raw, dict):
        return None, [f"prediction must be an object, got {type(raw).__name__}"]
    unknown = sorted(set(raw) - {"metric", "op", "value", "beats"})
    if unknown:
        return None, [f"prediction: unknown key {k!r}" for k in unknown]
    errors = []
    metric, op, value, beats = (raw.get(k) for k in ("metric", "op", "value", "beats"))
    if metric is not None and metric not in prediction_metrics(objective):
        errors.append(
            f"prediction: metric {metric!r} is not one of {prediction_metrics(objective)}"
        )
    if op is not None and op not in COMPARISONS:
        errors.append(f"prediction: op {str(op)[:10]!r} is not one of {list(COMPARISONS)}")
    if value is not None and (
        isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value)
    ):
        errors.append(f"prediction: value {str(value)[:40]!r} is not a finite number")
    if beats is not None and beats not in known_trials:
        errors.append(f"prediction: beats {str(beats)[:40]!r}, which is not a trial of the history")
    if errors:
        return None, errors
    try:
        return Prediction(metric=metric, op=op, value=value, beats=beats), []
    except ValidationError as exc:  # neither of the two forms
        return None, [f"prediction: {e['msg'].removeprefix('Value error, ')}" for e in exc.errors()]


def _as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def check_params(
    objective: Objective, params: Any, input_shape: Sequence[int] = (), n_outputs: int = 1
) -> tuple[dict[str, Any], list[str]]:
    """Validate one proposal's params against the search space; returns (clean, errors).

    An `architecture` (family `arch`) is checked against the grammar and the data's shape,
    parameter cap included, and kept in its canonical string form.
    """
    if not isinstance(params, dict):
        return {}, [f"params must be an object, got {type(params).__name__}"]
    allowed = {*objective.search_space, *objective.fixed, "architecture"}
    errors = [f"unknown parameter {k!r}" for k in params if k not in allowed]
    errors += [
        f"{k!r} is fixed by the objective and cannot be proposed"
        for k in params
        if k in objective.fixed
    ]
    clean: dict[str, Any] = {}
    for name, p in objective.search_space.items():
        applies = all(clean.get(dep) == value for dep, value in (p.when or {}).items())
        if not applies:
            if name in params:
                errors.append(f"{name!r} does not apply unless {p.when}")
            continue
        if name not in params:
            errors.append(f"missing parameter {name!r}")
            continue
        value = params[name]
        if isinstance(p, FloatParam):
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not math.isfinite(value)
            ):
                errors.append(f"{name}={value!r} is not a number")
            elif not p.low <= value <= p.high:
                errors.append(f"{name}={value} is outside [{p.low}, {p.high}]")
            else:
                clean[name] = float(value)
        elif isinstance(p, IntParam):
            as_int = _as_int(value)
            if as_int is None:
                errors.append(f"{name}={value!r} is not an integer")
            elif not p.low <= as_int <= p.high or (as_int - p.low) % p.step:
                errors.append(f"{name}={as_int} is outside [{p.low}, {p.high}] (step {p.step})")
            else:
                clean[name] = as_int
        else:
            match = [
                c
                for c in p.choices
                if c == value and isinstance(c, bool) == isinstance(value, bool)
            ]
            if not match:
                errors.append(f"{name}={value!r} is not one of {list(p.choices)}")
            else:
                clean[name] = match[0]
    grammar = objective.model.grammar
    if grammar is not None and uses_arch(objective, clean):
        blocks, arch_errors = check(
            params.get("architecture"), grammar, tuple(input_shape), n_outputs
        )
        errors += [f"architecture: {e}" for e in arch_errors]
        if not arch_errors:
            clean["architecture"] = canonical(blocks)
    elif "architecture" in params:
        errors.append("'architecture' applies only to the 'arch' family")
    return clean, errors


def tool_input(response: Any) -> tuple[Any, str | None]:
    """The tool call's proposals, or why the answer has none."""
    calls = [
        b for b in response.content if getattr(b, "type", "") == "tool_use" and b.name == TOOL_NAME
    ]
    if not calls:
        return None, f"the answer did not call {TOOL_NAME}"
    raw = calls[0].input.get("proposals") if isinstance(calls[0].input, dict) else None
    if isinstance(raw, str):  # a model may put JSON text where the array belongs
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError as exc:
            return None, f"proposals is not valid JSON: {exc.msg} at character {exc.pos}"
    if not isinstance(raw, list):
        return None, "proposals must be an array"
    return raw, None


def nesting(value: Any, limit: int = MAX_NESTING) -> int:
    """How deep lists and objects nest in `value`, counted without recursion and only up to
    `limit + 1` (an answer may be deeper than Python's own recursion limit)."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        item, depth = stack.pop()
        deepest = max(deepest, depth)
        if deepest > limit:
            break
        children = list(item.values()) if isinstance(item, dict) else item
        if isinstance(children, list):
            stack.extend((child, depth + 1) for child in children)
    return deepest


def short_rationale(text: str) -> str:
    """A rationale as kept: stripped, and cut to RATIONALE_MAX_CHARS."""
    text = text.strip()
    return text if len(text) <= RATIONALE_MAX_CHARS else text[: RATIONALE_MAX_CHARS - 1] + "…"
