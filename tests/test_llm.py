"""The LLM proposer through the real anthropic SDK, against a fake HTTP transport."""

from __future__ import annotations

import json

import httpx2
import pytest

from factory_lib.cycle.plan import CyclePlan
from factory_lib.cycle.propose import propose_cycle
from factory_lib.data.describe import describe_data
from factory_lib.objective import LLMSpec, load_objective
from factory_lib.propose.base import seen_by_proposers
from factory_lib.propose.llm.client import LLMProposer
from factory_lib.propose.llm.schema import check_params, tool_schema
from factory_lib.propose.mix import llm_mix
from tests.conftest import ROOT
from tests.fake_anthropic import Script, error, message, tool_answer
from tests.records import record

BASE = load_objective(ROOT / "objectives" / "smoke.yaml")
SMOKE = BASE.model_copy(
    update={
        "proposers": BASE.proposers.model_copy(
            update={"llm": LLMSpec(model="claude-sonnet-4-6", max_retries=2)}
        )
    }
)
GOOD = [
    {"params": {"lr": 0.01, "width": 16, "depth": 1}, "rationale": "mid lr, small net"},
    {"params": {"lr": 0.05, "width": 32, "depth": 2}, "rationale": "more capacity"},
]


def _history() -> list:
    return [
        record(SMOKE, i, val=0.6 + i / 10, test=0.5, lr=0.002 * (i + 1), width=8, depth=1)
        for i in range(3)
    ]


def _propose(script: Script, n: int = 2, objective=SMOKE, history=None, max_retries: int = 2):
    proposer = LLMProposer(objective, (4,), 3, client=script.client(max_retries))
    seen = seen_by_proposers(objective, history if history is not None else _history())
    return proposer.propose(objective, seen, n, cycle=2, first_number=3), proposer.report


def test_valid_proposals_keep_their_rationale_and_source() -> None:
    script = Script(tool_answer(GOOD))
    proposals, report = _propose(script)
    assert [p.params for p in proposals] == [g["params"] for g in GOOD]
    assert [p.rationale for p in proposals] == ["mid lr, small net", "more capacity"]
    assert all(p.source == "llm:claude-sonnet-4-6" for p in proposals)
    assert report.accepted == 2 and report.rejected == () and len(report.calls) == 1
    # cost from the usage block: 1200 in, 300 out, 900 cache reads at Sonnet list prices
    assert report.usd == pytest.approx((1200 * 3 + 300 * 15 + 900 * 0.3) / 1e6)
    body = script.requests[0]
    assert body["tool_choice"] == {"type": "tool", "name": "propose_trials"}
    # how many is the request's to say, not the tool's: the tool is in the cached prefix
    assert "maxItems" not in body["tools"][0]["input_schema"]["properties"]["proposals"]
    assert "Call `propose_trials` with 2 proposals" in body["messages"][0]["content"]
    assert body["system"][-1]["cache_control"] == {"type": "ephemeral"}


def test_schema_is_generated_from_the_search_space() -> None:
    digits = load_objective(ROOT / "objectives" / "digits.yaml")
    params = tool_schema(digits)["input_schema"]["properties"]["proposals"]["items"]["properties"][
        "params"
    ]
    assert params["properties"]["lr"] == {
        "type": "number",
        "minimum": 1e-4,
        "maximum": 3e-2,
        "description": "log scale",
    }
    assert params["properties"]["kernel"]["enum"] == [3, 5]
    assert "only when family = 'cnn'" in params["properties"]["blocks"]["description"]
    assert set(params["required"]) == {"family", "lr", "weight_decay", "dropout"}


@pytest.mark.parametrize(
    ("params", "error"),
    [
        ({"lr": 5.0, "width": 8, "depth": 1}, "lr=5.0 is outside"),
        ({"lr": 0.01, "width": 8, "depth": 1, "momentum": 0.9}, "unknown parameter 'momentum'"),
        ({"lr": 0.01, "width": 8.5, "depth": 1}, "width=8.5 is not an integer"),
        ({"lr": "fast", "width": 8, "depth": 1}, "lr='fast' is not a number"),
        ({"lr": 0.01, "width": 8}, "missing parameter 'depth'"),
        ("lr=0.01", "params must be an object"),
    ],
)
def test_params_are_checked(params, error: str) -> None:
    _, errors = check_params(SMOKE, params)
    assert any(error in e for e in errors), errors


def test_invalid_answers_get_one_repair_round_then_are_dropped() -> None:
    tried = _history()[0].proposal.params
    first = [
        {"params": {"lr": 9.0, "width": 8, "depth": 1}, "rationale": "too hot"},
        {"params": tried, "rationale": "a repeat"},
        {"params": {"lr": 0.01, "width": 16, "depth": 1}, "rationale": "fine"},
    ]
    second = [{"params": {"lr": 0.02, "width": 12, "depth": 2}, "rationale": "fixed", "extra": 1}]
    script = Script(tool_answer(first, "toolu_1"), tool_answer(second, "toolu_2"))
    proposals, report = _propose(script, n=3)
    assert [p.params["lr"] for p in proposals] == [0.01]
    reasons = [r.reason for r in report.rejected]
    assert any("lr=9.0 is outside" in r for r in reasons)
    assert any("repeats a configuration already tried (c001-t00)" in r for r in reasons)
    assert any("unknown key 'extra'" in r for r in reasons)
    repair = script.requests[1]["messages"][-1]["content"][0]
    assert (
        repair["type"] == "tool_result"
        and repair["tool_use_id"] == "toolu_1"
        and repair["is_error"]
    )
    assert "lr=9.0 is outside" in repair["content"]
    assert len(script.requests) == 2  # one repair round, no more


def test_garbled_json_is_rejected_with_a_reason() -> None:
    script = Script(tool_answer('[{"params": {"lr": 0.01,'), tool_answer(GOOD[:1]))
    proposals, _report = _propose(script, n=1)
    assert len(proposals) == 1
    repair = script.requests[1]["messages"][-1]["content"][0]["content"]
    assert "proposals is not valid JSON" in repair


def deep_answer(depth: int) -> bytes:
    """A tool call whose proposal's `width` is a list nested `depth` levels deep, as raw JSON."""
    start = json.dumps(tool_answer([{"params": {"width": "HOLE"}, "rationale": "deep"}]))
    return start.replace('"HOLE"', "[" * depth + "]" * depth).encode()


@pytest.mark.parametrize("depth", [50, 100_000])
def test_deeply_nested_answers_are_rejected_with_a_reason(depth: int) -> None:
    """100k levels raised RecursionError out of the start step; 50 are still refused."""
    proposals, report = _propose(Script(deep_answer(depth), deep_answer(depth)), n=1)
    assert proposals == []
    reasons = [*(r.reason for r in report.rejected), *(c.error or "" for c in report.calls)]
    assert any("nested" in r for r in reasons), reasons


def test_an_answer_without_the_tool_call_is_repaired() -> None:
    script = Script(
        message([{"type": "text", "text": "Here are my ideas..."}]), tool_answer(GOOD[:1])
    )
    proposals, _ = _propose(script, n=1)
    assert len(proposals) == 1
    assert "did not call propose_trials" in script.requests[1]["messages"][-1]["content"]


def test_overloaded_then_success_is_retried_by_the_sdk() -> None:
    script = Script(error(529, "overloaded_error", "Overloaded"), tool_answer(GOOD))
    proposals, report = _propose(script)
    assert len(proposals) == 2 and len(script.requests) == 2
    assert report.notices == ()


def test_unauthorised_names_the_variable_and_falls_back() -> None:
    script = Script(error(401, "authentication_error", "invalid x-api-key"))
    proposals, report = _propose(script)
    assert proposals == []
    assert "HTTP 401" in report.notices[0] and "ANTHROPIC_API_KEY" in report.notices[0]
    assert "Optuna fills its slots" in report.notices[0]


def test_timeouts_after_retries_fall_back() -> None:
    timeout = httpx2.ReadTimeout("read timed out")
    script = Script(timeout, timeout)
    proposals, report = _propose(script, max_retries=1)
    assert proposals == [] and len(script.requests) == 2
    assert "timed out" in report.notices[0]


def test_propose_cycle_fills_failed_llm_slots_with_optuna(tmp_path) -> None:
    plan = _plan(_history())
    script = Script(
        error(500, "api_error", "boom"),
        error(500, "api_error", "boom"),
        error(500, "api_error", "boom"),
    )
    batch = propose_cycle(plan, llm_client=script.client())
    assert len(batch.proposals) == SMOKE.budget.trials_per_cycle
    assert {p.source for p in batch.proposals} == {"optuna:tpe"}
    assert [p.number for p in batch.proposals] == [3, 4, 5]
    assert batch.llm_report is not None and "HTTP 500" in batch.llm_report.notices[0]


def test_propose_cycle_mixes_both_sources_without_repeats() -> None:
    plan = _plan(_history())
    batch = propose_cycle(plan, llm_client=Script(tool_answer(GOOD[:2])).client())
    assert batch.mix is not None and batch.mix.split(3) == (2, 1)
    assert [p.source for p in batch.proposals] == ["llm:claude-sonnet-4-6"] * 2 + ["optuna:tpe"]
    assert [p.trial_id for p in batch.proposals] == ["c002-t00", "c002-t01", "c002-t02"]
    assert len({p.key for p in batch.proposals}) == 3


def test_no_key_means_optuna_alone(monkeypatch) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    batch = propose_cycle(_plan(_history()))
    assert batch.mix is None and batch.llm_report is None
    assert {p.source for p in batch.proposals} == {"optuna:tpe"}


def test_budget_is_checked_before_calling() -> None:
    spec = SMOKE.proposers.llm.model_copy(update={"max_usd_per_cycle": 0.001})
    cheap = SMOKE.model_copy(update={"proposers": SMOKE.proposers.model_copy(update={"llm": spec})})
    script = Script()
    proposals, report = _propose(script, objective=cheap)
    assert proposals == [] and script.requests == []
    assert "LLM budget" in report.notices[0]


def test_requests_never_carry_test_metrics() -> None:
    history = [record(SMOKE, i, val=0.61, test=0.123456, lr=0.01 * (i + 1)) for i in range(3)]
    script = Script(tool_answer(GOOD))
    _propose(script, history=history)
    body = json.dumps(script.requests[0])
    assert "0.61" in body  # validation numbers are shown
    assert "0.123456" not in body and "0.12346" not in body  # test numbers never are
    assert '"test' not in body


def test_mix_moves_toward_the_proposer_that_works_and_keeps_a_floor() -> None:
    spec = SMOKE.proposers.llm

    def cycle(c: int, llm_val: float, optuna_val: float = 0.5) -> list:
        return [
            record(
                SMOKE, 10 * c, val=llm_val, cycle=c, source="llm:x", lr=0.001 * c, width=8, depth=1
            ),
            record(SMOKE, 10 * c + 1, val=optuna_val, cycle=c, lr=0.002 * c, width=8, depth=1),
        ]

    up = llm_mix(spec, cycle(1, 0.9) + cycle(2, 0.95))
    assert up.share > spec.share
    assert up.credits[0].llm > up.credits[0].optuna
    flat = llm_mix(spec, cycle(1, 0.4) + cycle(2, 0.4))  # nobody improves in cycle 2
    assert (
        flat.credits[1].llm == flat.credits[1].optuna and flat.share == flat.credits[0].share_after
    )
    down = llm_mix(spec, [r for c in range(1, 8) for r in cycle(c, 0.1, 0.5 + c / 100)])
    assert down.share == pytest.approx(spec.min_share)  # the floor holds
    assert llm_mix(spec, []).share == spec.share


def _plan(history: list, objective=SMOKE) -> CyclePlan:
    from factory_lib.history import CycleState

    if objective.proposers.llm is None:
        objective = objective.model_copy(
            update={
                "proposers": objective.proposers.model_copy(update={"llm": SMOKE.proposers.llm})
            }
        )
    data, prep = describe_data(objective)
    state = CycleState(
        run_pathspec="CycleFlow/1",
        cycle=1,
        history=tuple(history),
        bundle=None,
        stale_cycles=0,
        llm_usd_total=0.0,
    )
    return CyclePlan(objective=objective, cycle=2, data=data, preprocessing=prep, previous=state)
