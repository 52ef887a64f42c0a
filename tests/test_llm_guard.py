"""The LLM proposer's guards: an answer cut at max_tokens, prices per exact model id."""

from __future__ import annotations

import json

import pytest

from factory_lib.objective import LLMSpec, PriceSpec, load_objective
from factory_lib.propose.base import seen_by_proposers
from factory_lib.propose.llm.client import LLMProposer, cache_ttl
from factory_lib.propose.llm.report import price_of
from tests.conftest import ROOT
from tests.fake_anthropic import Script, tool_answer
from tests.records import record

BASE = load_objective(ROOT / "objectives" / "smoke.yaml")
GOOD = [{"params": {"lr": 0.02, "width": 16, "depth": 1}, "rationale": "mid lr, small net"}]


def _objective(**llm: object):
    spec = LLMSpec(**{"model": "claude-sonnet-4-6", "max_retries": 0, **llm})
    return BASE.model_copy(update={"proposers": BASE.proposers.model_copy(update={"llm": spec})})


def _propose(objective, script: Script, n: int = 1):
    proposer = LLMProposer(objective, (4,), 3, client=script.client(0))
    seen = seen_by_proposers(objective, [record(objective, 0, val=0.6, test=0.5)])
    return proposer.propose(objective, seen, n, cycle=2, first_number=1), proposer.report


def test_an_answer_cut_at_max_tokens_is_dropped_and_asked_again() -> None:
    cut = tool_answer(GOOD)
    cut["stop_reason"] = "max_tokens"
    script = Script(cut, tool_answer([{**GOOD[0], "params": {**GOOD[0]["params"], "width": 8}}]))
    proposals, report = _propose(_objective(), script)
    assert [p.params["width"] for p in proposals] == [8]  # only the repaired answer's
    assert [c.stop_reason for c in report.calls] == ["max_tokens", "tool_use"]
    assert "cut off at max_tokens (4096)" in report.rejected[0].reason
    repair = script.requests[1]["messages"][-1]["content"][0]["content"]
    assert "cut off at max_tokens" in repair


def test_prices_are_per_exact_model_id_and_an_unknown_model_is_refused() -> None:
    assert price_of(_objective().proposers.llm) == PriceSpec(input=3.0, output=15.0)
    # a name that only starts like a known family is not guessed
    unknown = _objective(model="claude-sonnet-9-experimental")
    assert price_of(unknown.proposers.llm) is None
    script = Script()  # any request would fail: there is no reply queued
    proposals, report = _propose(unknown, script)
    assert proposals == [] and script.requests == [] and report.calls == ()
    assert any("no list price is known for model" in n for n in report.notices)
    # given a price, it is called
    priced = _objective(model="claude-sonnet-9-experimental", price={"input": 1, "output": 2})
    proposals, report = _propose(priced, Script(tool_answer(GOOD)))
    assert len(proposals) == 1 and report.usd == pytest.approx((1200 + 600 + 90) / 1e6)


def test_the_repair_call_repeats_the_propose_calls_cached_prefix() -> None:
    bad = {"params": {"lr": 5.0, "width": 16, "depth": 1}, "rationale": "out of bounds"}
    script = Script(
        tool_answer([GOOD[0], bad]),
        tool_answer([{**bad, "params": GOOD[0]["params"] | {"width": 9}}]),
    )
    proposals, report = _propose(_objective(), script, n=2)
    assert len(proposals) == 2 and [c.purpose for c in report.calls] == ["propose", "repair"]
    first, repair = script.requests
    assert json.dumps(first["tools"]) == json.dumps(repair["tools"])
    assert json.dumps(first["system"]) == json.dumps(repair["system"])
    assert first["system"][-1]["cache_control"] == {"type": "ephemeral"}
    assert "again with 1 corrected proposals" in repair["messages"][-1]["content"][0]["content"]


def test_the_cached_prefix_does_not_depend_on_how_many_trials_are_asked() -> None:
    # cycles whose LLM share differs ask for 1 and for 3: the tools and system are the same
    widths = [{**GOOD[0], "params": GOOD[0]["params"] | {"width": w}} for w in (8, 12, 16)]
    one, three = Script(tool_answer(GOOD)), Script(tool_answer(widths))
    _propose(_objective(), one, n=1)
    proposals, report = _propose(_objective(), three, n=1)
    (small,), (large,) = one.requests, three.requests
    assert json.dumps([small["tools"], small["system"]]) == json.dumps(
        [large["tools"], large["system"]]
    )
    # an answer longer than asked: the first valid ones asked for are kept, and it is said
    assert [p.params["width"] for p in proposals] == [8] and report.rejected == ()
    assert len(report.calls) == 1
    assert "3 proposals answered where 1 were asked" in " ".join(report.notices)


@pytest.mark.parametrize(
    ("setting", "gap", "ttl"),
    [
        ("auto", None, "5m"),
        ("auto", 120.0, "5m"),
        ("auto", 3600.0, "1h"),
        ("1h", None, "1h"),
        ("5m", 3600.0, "5m"),
    ],
)
def test_the_cache_lasts_an_hour_where_cycles_are_far_apart(setting, gap, ttl) -> None:
    assert cache_ttl(setting, gap) == ttl


def test_an_hour_long_cache_is_asked_for_and_its_writes_priced_at_twice_the_input() -> None:
    objective = _objective()
    script = Script(
        tool_answer(
            GOOD,
            usage={
                "input_tokens": 100,
                "output_tokens": 10,
                "cache_creation_input_tokens": 1000,
                "cache_read_input_tokens": 0,
            },
        )
    )
    proposer = LLMProposer(objective, (4,), 3, client=script.client(0), cycle_gap_s=7200.0)
    seen = seen_by_proposers(objective, [record(objective, 0, val=0.6, test=0.5)])
    proposer.propose(objective, seen, 1, cycle=2, first_number=1)
    assert script.requests[0]["system"][-1]["cache_control"] == {"type": "ephemeral", "ttl": "1h"}
    assert proposer.report.cache_ttl == "1h"
    assert proposer.report.usd == pytest.approx((100 * 3 + 10 * 15 + 1000 * 6) / 1e6)
