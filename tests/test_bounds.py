"""Proposals and records are bounded, and their free text cannot add markup to a card."""

from __future__ import annotations

import json
from pathlib import Path

from factory_lib.explore.analysis import CycleView
from factory_lib.explore.cards import cycle_card
from factory_lib.objective import load_objective
from factory_lib.propose.llm.schema import RATIONALE_MAX_CHARS, nesting, short_rationale
from factory_lib.registry import PromotionDecision
from factory_lib.reward import score
from tests.records import result

ROOT = Path(__file__).resolve().parents[1]
SMOKE = load_objective(ROOT / "objectives" / "smoke.yaml")
SCRIPT = "<script>alert('card')</script>"


def test_nesting_is_counted_without_recursion() -> None:
    deep: list[object] = []
    for _ in range(100_000):
        deep = [deep]
    assert nesting(deep) == 9  # counted only past the limit, never 100k frames deep
    assert nesting({"a": [1, {"b": 2}]}) == 3
    assert nesting(5) == 0


def test_rationales_are_cut_to_their_cap() -> None:
    assert short_rationale("  fine  ") == "fine"
    cut = short_rationale("x" * 5000)
    assert len(cut) == RATIONALE_MAX_CHARS and cut.endswith("…")


def test_free_text_on_the_card_is_escaped() -> None:
    ok = result(1, lr=0.01, width=8, depth=1)
    ok = ok.model_copy(update={"proposal": ok.proposal.model_copy(update={"rationale": SCRIPT})})
    failed = result(2, status="failed").model_copy(update={"cause": f"ValueError: {SCRIPT}"})
    records = (score(SMOKE, ok), score(SMOKE, failed))
    view = CycleView(
        objective=SMOKE,
        cycle=1,
        records=records,
        history=records,
        decision=PromotionDecision(status="infeasible", reason=f"planted {SCRIPT}"),
        champion=None,
        stale_cycles=0,
    )
    rendered = json.dumps([c.render() for c in cycle_card(view)], default=str)
    assert "<script>" not in rendered
    assert "&lt;script&gt;" in rendered
