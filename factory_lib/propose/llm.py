"""Claude as a proposer: a tool call whose input schema is the search space.

The answer is untrusted data. Every proposal is validated (types, bounds, choices, conditions,
unknown keys, repeats of tried trials); the invalid ones get one repair round with the errors,
and what is still invalid is dropped with its reason recorded. Nothing in the answer is ever
executed. The API key is read by the SDK from the environment and never stored.

Any API failure (no key, 401/403, 429/529/5xx after the SDK's bounded retries honouring
retry-after, timeouts) ends the LLM's part of the cycle with a notice; Optuna fills its slots.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Sequence
from importlib import resources
from string import Template
from typing import Any

import anthropic
from anthropic.types import MessageParam, TextBlockParam, ToolChoiceToolParam, ToolParam
from pydantic import BaseModel, ConfigDict

from factory_lib.architecture import canonical, check
from factory_lib.objective import (
    METRIC_DIRECTIONS,
    CategoricalParam,
    FloatParam,
    GrammarSpec,
    IntParam,
    LLMSpec,
    Objective,
    PriceSpec,
)
from factory_lib.propose.base import SeenTrial, make_proposal
from factory_lib.propose.optuna_proposer import uses_arch
from factory_lib.records import Proposal, params_key
from factory_lib.reward import pareto_indices

TOOL_NAME = "propose_trials"
FORCED_TOOL: ToolChoiceToolParam = {"type": "tool", "name": TOOL_NAME}
KEY_VARIABLE = "ANTHROPIC_API_KEY"
# List prices in US dollars per million tokens, by model family; `proposers.llm.price` overrides.
PRICES: dict[str, PriceSpec] = {
    "claude-opus": PriceSpec(input=5.0, output=25.0),
    "claude-sonnet": PriceSpec(input=3.0, output=15.0),
    "claude-haiku": PriceSpec(input=1.0, output=5.0),
}
REJECTED_PARAMS_MAX_CHARS = 300
CHARS_PER_TOKEN_ESTIMATE = 3.0


def _prompt(name: str) -> str:
    return resources.files("factory_lib.propose").joinpath(f"prompts/{name}.md").read_text()


def prompt_fingerprint() -> str:
    """Prompts are versioned like code: every LLM report names the prompt text it used."""
    text = "".join(_prompt(n) for n in ("system", "request", "repair"))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


class LLMCall(BaseModel):
    """One Messages API call: its purpose, tokens, cost and how it ended."""

    model_config = ConfigDict(frozen=True)

    purpose: str
    input_tokens: int = 0
    output_tokens: int = 0
    cache_write_tokens: int = 0
    cache_read_tokens: int = 0
    usd: float = 0.0
    seconds: float = 0.0
    error: str = ""


class Rejected(BaseModel):
    model_config = ConfigDict(frozen=True)

    params: str
    reason: str


class LLMReport(BaseModel):
    """What the LLM proposer did this cycle; no key, no prompt text, no test metric."""

    model_config = ConfigDict(frozen=True)

    model: str
    prompt_fingerprint: str
    asked: int
    accepted: int = 0
    calls: tuple[LLMCall, ...] = ()
    rejected: tuple[Rejected, ...] = ()
    notices: tuple[str, ...] = ()

    @property
    def usd(self) -> float:
        return sum(c.usd for c in self.calls)


def price_of(spec: LLMSpec) -> PriceSpec:
    if spec.price is not None:
        return spec.price
    for prefix, price in PRICES.items():
        if spec.model.startswith(prefix):
            return price
    return PRICES["claude-opus"]  # unknown model: assume the dearest family, never undercount


def cost_usd(price: PriceSpec, usage: Any) -> LLMCall:
    """Tokens and dollars of one response's `usage`."""
    tokens = {
        "input_tokens": usage.input_tokens or 0,
        "output_tokens": usage.output_tokens or 0,
        "cache_write_tokens": getattr(usage, "cache_creation_input_tokens", None) or 0,
        "cache_read_tokens": getattr(usage, "cache_read_input_tokens", None) or 0,
    }
    write = price.cache_write if price.cache_write is not None else 1.25 * price.input
    read = price.cache_read if price.cache_read is not None else 0.1 * price.input
    usd = (
        tokens["input_tokens"] * price.input
        + tokens["output_tokens"] * price.output
        + tokens["cache_write_tokens"] * write
        + tokens["cache_read_tokens"] * read
    ) / 1e6
    return LLMCall(purpose="", usd=usd, **tokens)


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


def tool_schema(objective: Objective, n: int) -> ToolParam:
    """The tool the model must call: its input schema is generated from the search space."""
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
                    "maxItems": n,
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
                        },
                        "required": ["params", "rationale"],
                        "additionalProperties": False,
                    },
                }
            },
            "required": ["proposals"],
        },
    }


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


def history_view(objective: Objective, spec: LLMSpec, seen: Sequence[SeenTrial]) -> dict[str, Any]:
    """What the model is shown: best trials, the Pareto front, failures, earlier LLM ideas."""
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
            {**_trial_view(t), "rationale": t.rationale} for t in llm_earlier
        ],
    }


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


def _tool_input(response: Any) -> tuple[Any, str | None]:
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


class LLMProposer:
    """Proposes through Claude; keeps a report of calls, costs and rejections in `report`."""

    def __init__(
        self,
        objective: Objective,
        input_shape: Sequence[int],
        n_outputs: int,
        spent_usd: float = 0.0,
        client: anthropic.Anthropic | None = None,
    ) -> None:
        assert objective.proposers.llm is not None, "LLMProposer needs proposers.llm"
        self.spec = objective.proposers.llm
        self.name = f"llm:{self.spec.model}"
        self.objective = objective
        self.described = describe_objective(objective, input_shape, n_outputs)
        self.spent_before = spent_usd
        self._client = client
        self.report = LLMReport(
            model=self.spec.model, prompt_fingerprint=prompt_fingerprint(), asked=0
        )

    def _client_or_none(self) -> anthropic.Anthropic | None:
        if self._client is None and os.environ.get(KEY_VARIABLE):
            self._client = anthropic.Anthropic(
                max_retries=self.spec.max_retries, timeout=self.spec.timeout_s
            )
        return self._client

    def _system(self) -> list[TextBlockParam]:
        return [
            {"type": "text", "text": _prompt("system")},
            # The objective is the same every cycle: cache everything up to here.
            {
                "type": "text",
                "text": json.dumps(self.described, indent=1),
                "cache_control": {"type": "ephemeral"},
            },
        ]

    def _affordable(self, messages: list[MessageParam], calls: list[LLMCall]) -> str | None:
        """Why a call would break the LLM budget, or None when it fits."""
        price = price_of(self.spec)
        size = len(
            json.dumps([self._system(), messages, tool_schema(self.objective, 1)], default=str)
        )
        worst = (
            size / CHARS_PER_TOKEN_ESTIMATE * price.input + self.spec.max_tokens * price.output
        ) / 1e6
        cycle = sum(c.usd for c in calls)
        if cycle + worst > self.spec.max_usd_per_cycle:
            return (
                f"a call could cost ${worst:.3f} and this cycle's LLM budget is "
                f"${self.spec.max_usd_per_cycle:.2f} (spent ${cycle:.3f})"
            )
        if self.spent_before + cycle + worst > self.spec.max_usd_total:
            spent = self.spent_before + cycle
            total = self.spec.max_usd_total
            return f"the search's LLM budget of ${total:.2f} is nearly spent (${spent:.3f})"
        return None

    def _call(
        self, client: anthropic.Anthropic, messages: list[MessageParam], n: int, purpose: str
    ) -> tuple[Any, LLMCall]:
        started = time.monotonic()
        try:
            response = client.messages.create(
                model=self.spec.model,
                max_tokens=self.spec.max_tokens,
                system=self._system(),
                tools=[tool_schema(self.objective, n)],
                tool_choice=FORCED_TOOL,
                messages=messages,
            )
        except anthropic.APIError as exc:
            return None, LLMCall(
                purpose=purpose, seconds=time.monotonic() - started, error=_api_error(exc)
            )
        call = cost_usd(price_of(self.spec), response.usage).model_copy(
            update={"purpose": purpose, "seconds": time.monotonic() - started}
        )
        return response, call

    def propose(
        self, objective: Objective, seen: Sequence[SeenTrial], n: int, cycle: int, first_number: int
    ) -> list[Proposal]:
        """Up to `n` validated proposals; `self.report` says what happened."""
        notices: list[str] = []
        calls: list[LLMCall] = []
        rejected: list[Rejected] = []
        accepted: list[tuple[dict[str, Any], str]] = []
        client = self._client_or_none()
        tried = {t.key: t.trial_id for t in seen}
        if client is None:
            notices.append(
                f"LLM proposer off: {KEY_VARIABLE} is not set; Optuna proposes every trial"
            )
        history = json.dumps(history_view(objective, self.spec, seen), indent=1, default=str)
        messages: list[MessageParam] = [
            {
                "role": "user",
                "content": Template(_prompt("request")).substitute(
                    cycle=cycle, n=n, history=history
                ),
            }
        ]
        for purpose in ("propose", "repair"):
            if client is None or len(accepted) >= n:
                break
            too_dear = self._affordable(messages, calls)
            if too_dear:
                notices.append(f"LLM proposer stopped: {too_dear}")
                break
            response, call = self._call(client, messages, n - len(accepted), purpose)
            calls.append(call)
            if response is None:
                notices.append(
                    f"LLM proposer failed ({call.error}); Optuna fills its slots this cycle"
                )
                break
            items, problem = _tool_input(response)
            errors: list[str] = [problem] if problem else []
            for i, item in enumerate(items or []):
                item_errors, clean, rationale = self._check_item(objective, item, tried)
                if item_errors:
                    errors += [f"proposal {i + 1}: {e}" for e in item_errors]
                    rejected.append(
                        Rejected(
                            params=json.dumps(item, default=str)[:REJECTED_PARAMS_MAX_CHARS],
                            reason="; ".join(item_errors),
                        )
                    )
                elif len(accepted) < n:
                    tried[params_key({**clean, **objective.fixed})] = "this answer"
                    accepted.append((clean, rationale))
            if not errors:
                break
            tool_use = next(
                (b for b in response.content if getattr(b, "type", "") == "tool_use"), None
            )
            repair = Template(_prompt("repair")).substitute(
                errors="\n".join(f"- {e}" for e in errors), n=n - len(accepted)
            )
            messages = [
                *messages,
                {"role": "assistant", "content": response.content},
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "tool_result",
                            "tool_use_id": tool_use.id,
                            "content": repair,
                            "is_error": True,
                        }
                    ]
                    if tool_use is not None
                    else repair,
                },
            ]
        if rejected:
            notices.append(
                f"LLM proposer: {len(rejected)} invalid proposal(s) dropped (reasons in the report)"
            )
        self.report = self.report.model_copy(
            update={
                "asked": n,
                "accepted": len(accepted),
                "calls": tuple(calls),
                "rejected": tuple(rejected),
                "notices": tuple(notices),
            }
        )
        return [
            make_proposal(objective, cycle, first_number + i, i, params, self.name, rationale)
            for i, (params, rationale) in enumerate(accepted)
        ]

    def _check_item(
        self, objective: Objective, item: Any, tried: dict[str, str]
    ) -> tuple[list[str], dict[str, Any], str]:
        if not isinstance(item, dict):
            return [f"a proposal must be an object, got {type(item).__name__}"], {}, ""
        unknown = sorted(set(item) - {"params", "rationale"})
        errors = [f"unknown key {k!r}" for k in unknown]
        rationale = item.get("rationale")
        if not isinstance(rationale, str) or not rationale.strip():
            errors.append("a rationale is required")
        clean, param_errors = check_params(
            objective,
            item.get("params"),
            self.described["data"]["input_shape"],
            self.described["data"]["n_outputs"],
        )
        errors += param_errors
        if not errors:
            earlier = tried.get(params_key({**clean, **objective.fixed}))
            if earlier is not None:
                errors.append(f"repeats a configuration already tried ({earlier})")
        return errors, clean, rationale.strip() if isinstance(rationale, str) else ""


def _api_error(exc: anthropic.APIError) -> str:
    """A short, key-free description of an API failure."""
    if isinstance(exc, anthropic.AuthenticationError | anthropic.PermissionDeniedError):
        return f"HTTP {exc.status_code}: the API refused the key; check {KEY_VARIABLE}"
    if isinstance(exc, anthropic.APITimeoutError):
        return "timed out after the SDK's retries"
    if isinstance(exc, anthropic.APIStatusError):
        return f"HTTP {exc.status_code} after the SDK's retries: {type(exc).__name__}"
    return f"{type(exc).__name__}: could not reach the API"
