"""Architectures as data: the grammar check, the compiler, and both proposers using them."""

from __future__ import annotations

import json

import pytest

from factory_lib.cycle.propose import propose_cycle
from factory_lib.models.builders import build_model, compile_blocks, count_params
from factory_lib.models.grammar import canonical, check
from factory_lib.objective import load_objective
from factory_lib.propose.base import seen_by_proposers
from factory_lib.propose.optuna_proposer import OptunaProposer
from tests.conftest import ROOT
from tests.fake_anthropic import Script, tool_answer
from tests.records import record
from tests.test_llm import _plan

DIGITS = load_objective(ROOT / "objectives" / "digits.yaml")
GRAMMAR = DIGITS.model.grammar
CONVNET = [
    {"type": "conv", "channels": 8, "kernel": 3},
    {"type": "norm"},
    {"type": "activation", "fn": "relu"},
    {"type": "residual"},
    {"type": "pool"},
    {"type": "linear", "units": 32},
    {"type": "dropout", "p": 0.1},
]


def test_a_valid_architecture_compiles_to_the_counted_size() -> None:
    blocks, errors = check(CONVNET, GRAMMAR, (1, 8, 8), 10)
    assert errors == []
    expected = (
        (1 * 8 * 9 + 8) + 2 * 8 + 2 * (8 * 8 * 9 + 8) + (8 * 4 * 4 * 32 + 32) + (32 * 10 + 10)
    )
    net = compile_blocks(blocks, (1, 8, 8), 10)
    assert count_params(net) == expected
    model = build_model(
        DIGITS, {"family": "arch", "architecture": canonical(blocks)}, (1, 8, 8), 10
    )
    assert count_params(model) == expected


@pytest.mark.parametrize(
    ("blocks", "error"),
    [
        (
            [{"type": "linear", "units": 32}, {"type": "conv", "channels": 8, "kernel": 3}],
            "conv needs image-shaped input",
        ),
        ([{"type": "pool"}] * 4, "pool needs an image of at least 2x2"),
        ([{"type": "linear", "units": 256}] * 3, "parameters; the grammar allows 100000"),
        ([{"type": "attention"}], "type 'attention' is not one of"),
        ([{"type": "linear", "units": 8}], "units=8 must be an integer in [16, 256]"),
        ([{"type": "linear", "units": 32, "bias": False}], "unknown fields ['bias']"),
        ([{"type": "activation", "fn": "relu"}] * 13, "the grammar allows 12"),
        ("not json [", "not valid JSON"),
    ],
)
def test_bad_architectures_are_named(blocks, error: str) -> None:
    _, errors = check(blocks, GRAMMAR, (1, 8, 8), 10)
    assert any(error in e for e in errors), errors


def test_llm_architecture_breaking_the_shape_is_repaired_then_dropped_then_optuna() -> None:
    objective = DIGITS.with_overrides(trials=2)
    bad = {
        "params": {
            "family": "arch",
            "lr": 0.001,
            "weight_decay": 1e-4,
            "dropout": 0.1,
            "architecture": [
                {"type": "linear", "units": 64},
                {"type": "conv", "channels": 8, "kernel": 3},
            ],
        },
        "rationale": "conv after flatten",
    }
    huge = {
        **bad,
        "params": {**bad["params"], "architecture": [{"type": "linear", "units": 256}] * 4},
    }
    script = Script(tool_answer([bad]), tool_answer([huge]))
    batch = propose_cycle(_plan([], objective), llm_client=script.client())
    report = batch.llm_report
    assert report is not None and report.accepted == 0 and len(script.requests) == 2
    assert "conv needs image-shaped input" in report.rejected[0].reason
    assert "parameters; the grammar allows" in report.rejected[1].reason
    assert len(batch.proposals) == 2 and {p.source for p in batch.proposals} == {"optuna:tpe"}


def test_a_good_llm_architecture_becomes_an_optuna_choice() -> None:
    arch = canonical(check(CONVNET, GRAMMAR, (1, 8, 8), 10)[0])
    good = record(
        DIGITS,
        0,
        val=0.99,
        params=5000,
        source="llm:x",
        family="arch",
        lr=0.001,
        weight_decay=1e-4,
        dropout=0.1,
        architecture=arch,
        optimizer="adamw",
    )
    seen = seen_by_proposers(DIGITS, [good])
    proposals = OptunaProposer(DIGITS).propose(DIGITS, seen, 16, cycle=2, first_number=1)
    archs = [p for p in proposals if p.params["family"] == "arch"]
    assert archs and all(p.params["architecture"] == arch for p in archs)
    assert json.loads(archs[0].params["architecture"])[0]["type"] == "conv"
