"""Claude as a proposer: the Messages API calls and the repair round (costs and the report it
fills are in `report`).

The invalid proposals of an answer get one repair round with the errors, and what is still
invalid is dropped with its reason recorded. The API key is read by the SDK from the
environment and never stored. Any API failure (no key, 401/403, 429/529/5xx after the SDK's
bounded retries honouring retry-after, timeouts) ends the LLM's part of the cycle with a
notice; Optuna fills its slots.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from string import Template
from typing import Any

import anthropic
from anthropic.types import MessageParam, TextBlockParam

from factory_lib.objective import Objective
from factory_lib.propose.base import SeenTrial, make_proposal
from factory_lib.propose.llm.prompt import (
    CHARS_PER_TOKEN_ESTIMATE,
    describe_objective,
    history_view,
    prompt_fingerprint,
    prompt_text,
)
from factory_lib.propose.llm.report import (
    KEY_VARIABLE,
    SHORT_CACHE_S,
    CacheTTL,
    LLMCall,
    LLMReport,
    Rejected,
    cost_usd,
    price_of,
)
from factory_lib.propose.llm.schema import (
    FORCED_TOOL,
    ITEM_KEYS,
    MAX_NESTING,
    REJECTED_PARAMS_MAX_CHARS,
    check_params,
    check_prediction,
    nesting,
    short_rationale,
    tool_input,
    tool_schema,
)
from factory_lib.propose.notes import LabNotes
from factory_lib.records import Prediction, Proposal, params_key


class LLMProposer:
    """Proposes through Claude; keeps a report of calls, costs and rejections in `report`."""

    def __init__(
        self,
        objective: Objective,
        input_shape: Sequence[int],
        n_outputs: int,
        spent_usd: float = 0.0,
        client: anthropic.Anthropic | None = None,
        notes: LabNotes | None = None,
        cycle_gap_s: float | None = None,
    ) -> None:
        assert objective.proposers.llm is not None, "LLMProposer needs proposers.llm"
        self.spec = objective.proposers.llm
        self.name = f"llm:{self.spec.model}"
        self.objective = objective
        self.described = describe_objective(objective, input_shape, n_outputs)
        self.spent_before = spent_usd
        self._client = client
        self.notes = notes  # the previous cycle's lab notes, shown with the history
        self.cache_ttl = cache_ttl(self.spec.cache_ttl, cycle_gap_s)
        self.report = LLMReport(
            model=self.spec.model,
            prompt_fingerprint=prompt_fingerprint(),
            asked=0,
            cache_ttl=self.cache_ttl,
        )

    def _client_or_none(self) -> anthropic.Anthropic | None:
        if self._client is None and os.environ.get(KEY_VARIABLE):
            self._client = anthropic.Anthropic(
                max_retries=self.spec.max_retries, timeout=self.spec.timeout_s
            )
        return self._client

    def _system(self) -> list[TextBlockParam]:
        return [
            {"type": "text", "text": prompt_text("system")},
            # The objective is the same every cycle: cache everything up to here (the tools,
            # which come first, and the system prompt), for an hour where cycles are far apart.
            {
                "type": "text",
                "text": json.dumps(self.described, indent=1),
                "cache_control": {"type": "ephemeral"}
                if self.cache_ttl == "5m"
                else {"type": "ephemeral", "ttl": "1h"},
            },
        ]

    def _affordable(self, messages: list[MessageParam], calls: list[LLMCall]) -> str | None:
        """Why a call would break the LLM budget, or None when it fits."""
        price = price_of(self.spec)
        if price is None:
            return (
                f"no list price is known for model {self.spec.model!r}: give it one in "
                "proposers.llm.price"
            )
        size = len(json.dumps([self._system(), messages, tool_schema(self.objective)], default=str))
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
                tools=[tool_schema(self.objective)],
                tool_choice=FORCED_TOOL,
                messages=messages,
            )
        except anthropic.APIError as exc:
            return None, LLMCall(
                purpose=purpose, seconds=time.monotonic() - started, error=_api_error(exc)
            )
        except RecursionError:  # the SDK parses the body: an answer nested past Python's limit
            return None, LLMCall(
                purpose=purpose,
                seconds=time.monotonic() - started,
                error="the answer is nested too deeply to read (past Python's recursion limit)",
            )
        price = price_of(self.spec)
        assert price is not None, "_affordable refuses a model without a price"
        call = cost_usd(price, response.usage, self.cache_ttl).model_copy(
            update={
                "purpose": purpose,
                "seconds": time.monotonic() - started,
                "stop_reason": str(getattr(response, "stop_reason", "") or ""),
            }
        )
        return response, call

    def propose(
        self, objective: Objective, seen: Sequence[SeenTrial], n: int, cycle: int, first_number: int
    ) -> list[Proposal]:
        """Up to `n` validated proposals; `self.report` says what happened."""
        notices: list[str] = []
        calls: list[LLMCall] = []
        rejected: list[Rejected] = []
        accepted: list[Checked] = []
        client = self._client_or_none()
        tried = {t.key: t.trial_id for t in seen}
        if client is None:
            notices.append(
                f"LLM proposer off: {KEY_VARIABLE} is not set; Optuna proposes every trial"
            )
        known = {t.trial_id for t in seen}
        history = json.dumps(
            history_view(objective, self.spec, seen, self.notes), indent=1, default=str
        )
        messages: list[MessageParam] = [
            {
                "role": "user",
                "content": Template(prompt_text("request")).substitute(
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
            # The tool and the system blocks are the same in every call of the search: the
            # cached prefix stays byte-identical; the prompt says how many trials are wanted.
            response, call = self._call(client, messages, n, purpose)
            calls.append(call)
            if response is None:
                notices.append(
                    f"LLM proposer failed ({call.error}); Optuna fills its slots this cycle"
                )
                break
            items, problem = tool_input(response)
            if call.stop_reason == "max_tokens":  # the tool call may be cut: keep none of it
                items = None
                problem = (
                    f"the answer was cut off at max_tokens ({self.spec.max_tokens}); "
                    "answer with fewer or shorter proposals"
                )
                rejected.append(Rejected(params="(the whole answer)", reason=problem))
            errors: list[str] = [problem] if problem else []
            wanted = n - len(accepted)
            if items and len(items) > wanted:  # the tool allows any number; the prompt asked
                notices.append(
                    f"LLM proposer: {len(items)} proposals answered where {wanted} were asked; "
                    f"the first {wanted} valid ones are kept"
                )
            for i, item in enumerate(items or []):
                item_errors, checked = self._check_item(objective, item, tried, known)
                if item_errors:
                    errors += [f"proposal {i + 1}: {e}" for e in item_errors]
                    rejected.append(
                        Rejected(
                            params=json.dumps(item, default=str)[:REJECTED_PARAMS_MAX_CHARS],
                            reason="; ".join(item_errors),
                        )
                    )
                elif len(accepted) < n:
                    tried[params_key({**checked.params, **objective.fixed})] = "this answer"
                    accepted.append(checked)
            if not errors:
                break
            tool_use = next(
                (b for b in response.content if getattr(b, "type", "") == "tool_use"), None
            )
            repair = Template(prompt_text("repair")).substitute(
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
            make_proposal(
                objective,
                cycle,
                first_number + i,
                i,
                c.params,
                self.name,
                c.rationale,
                c.hypothesis,
                c.prediction,
            )
            for i, c in enumerate(accepted)
        ]

    def _check_item(
        self, objective: Objective, item: Any, tried: dict[str, str], known: set[str]
    ) -> tuple[list[str], Checked]:
        """What is wrong with one proposal of an answer, and what of it is kept. A proposal
        without a hypothesis and prediction is run, with no entry in the ledger."""
        if not isinstance(item, dict):
            return [f"a proposal must be an object, got {type(item).__name__}"], NOTHING
        if nesting(item) > MAX_NESTING:
            return [f"the proposal is nested deeper than {MAX_NESTING} levels"], NOTHING
        unknown = sorted(set(item) - set(ITEM_KEYS))
        errors = [f"unknown key {k!r}" for k in unknown]
        rationale = item.get("rationale")
        if not isinstance(rationale, str) or not rationale.strip():
            errors.append("a rationale is required")
        hypothesis = item.get("hypothesis", "")
        if not isinstance(hypothesis, str):
            errors.append(f"hypothesis must be a string, got {type(hypothesis).__name__}")
            hypothesis = ""
        prediction = None
        if item.get("prediction") is not None:
            prediction, prediction_errors = check_prediction(objective, item["prediction"], known)
            errors += prediction_errors
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
        return errors, Checked(
            clean,
            short_rationale(rationale) if isinstance(rationale, str) else "",
            short_rationale(hypothesis),
            prediction,
        )


@dataclass(frozen=True)
class Checked:
    """What is kept of a valid proposal of an answer."""

    params: dict[str, Any]
    rationale: str
    hypothesis: str = ""
    prediction: Prediction | None = None


NOTHING = Checked({}, "")


def cache_ttl(setting: str, cycle_gap_s: float | None) -> CacheTTL:
    """The prompt cache's lifetime: as set, or with `auto` an hour where the previous cycle
    started more than the default five minutes before this one (the next is likely as far)."""
    if setting == "1h" or (setting == "auto" and (cycle_gap_s or 0.0) > SHORT_CACHE_S):
        return "1h"
    return "5m"


def _api_error(exc: anthropic.APIError) -> str:
    """A short, key-free description of an API failure."""
    if isinstance(exc, anthropic.AuthenticationError | anthropic.PermissionDeniedError):
        return f"HTTP {exc.status_code}: the API refused the key; check {KEY_VARIABLE}"
    if isinstance(exc, anthropic.APITimeoutError):
        return "timed out after the SDK's retries"
    if isinstance(exc, anthropic.APIStatusError):
        return f"HTTP {exc.status_code} after the SDK's retries: {type(exc).__name__}"
    return f"{type(exc).__name__}: could not reach the API"
