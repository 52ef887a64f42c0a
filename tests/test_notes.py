"""Lab notes and graded hypotheses on planted records: importances, plateau, the ledger."""

from __future__ import annotations

import json
from typing import Any

import pytest

from factory_lib.objective import LLMSpec, load_objective
from factory_lib.propose.base import seen_by_proposers
from factory_lib.propose.hypotheses import graded
from factory_lib.propose.llm.client import LLMProposer
from factory_lib.propose.llm.schema import check_prediction
from factory_lib.propose.notes import lab_notes
from factory_lib.records import Prediction, TrialRecord
from tests.conftest import ROOT
from tests.fake_anthropic import Script, tool_answer
from tests.records import record

SMOKE = load_objective(ROOT / "objectives" / "smoke.yaml")


def predicting(r: TrialRecord, hypothesis: str = "planted", **prediction: Any) -> TrialRecord:
    """`r` as if its proposal had carried this prediction."""
    proposal = r.proposal.model_copy(
        update={"hypothesis": hypothesis, "prediction": Prediction(**prediction)}
    )
    return r.model_copy(update={"result": r.result.model_copy(update={"proposal": proposal})})


def search(rewards_by_cycle: list[list[float]]) -> list[TrialRecord]:
    """Records of a planted search: lr drives the validation accuracy, width does not."""
    records, n = [], 0
    for cycle, rewards in enumerate(rewards_by_cycle, start=1):
        for val in rewards:
            lr = 0.001 + 0.09 * val  # monotone in the reward: lr explains it all
            width = 4 + (n * 7) % 29
            records.append(
                record(SMOKE, n, val=val, test=0.1, cycle=cycle, lr=lr, width=width, depth=1)
            )
            n += 1
    return records


def test_predictions_are_graded_on_validation_numbers_by_rule() -> None:
    history = search([[0.6, 0.7]])  # c001-t00 at 0.6, c001-t01 at 0.7
    new = [
        predicting(
            record(SMOKE, 2, val=0.8, test=0.1, cycle=2), metric="accuracy", op=">=", value=0.75
        ),
        predicting(
            record(SMOKE, 3, val=0.65, test=0.99, cycle=2), metric="val_reward", op=">", value=0.9
        ),
        predicting(record(SMOKE, 4, val=0.65, test=0.99, cycle=2), beats="c001-t00"),
        predicting(record(SMOKE, 5, val=0.65, test=0.99, cycle=2), beats="c001-t01"),
        predicting(
            record(SMOKE, 6, status="failed", cycle=2), metric="accuracy", op=">=", value=0.1
        ),
        predicting(record(SMOKE, 7, val=0.9, test=0.9, cycle=2, params=10_000), beats="c001-t00"),
        predicting(record(SMOKE, 8, val=0.9, test=0.1, cycle=2), beats="c009-t09"),
    ]
    grades = [r.grade for r in graded(SMOKE, history, new)]
    assert [g.verdict for g in grades if g] == [
        "confirmed",
        "refuted",
        "confirmed",
        "refuted",
        "inconclusive",  # a failed trial has no numbers to compare
        "refuted",  # infeasible (params <= 5000 broken): it cannot beat anyone
        "inconclusive",  # the trial named is not in the history
    ]
    assert grades[0] and grades[0].observed == "val accuracy = 0.8"
    assert grades[2] and grades[2].observed == "val_reward = 0.65; c001-t00 val_reward = 0.6"
    # the test split (0.99, 0.1) is never what a verdict rests on
    assert not any("0.99" in g.observed for g in grades if g)


def test_importances_sum_to_one_and_find_the_parameter_that_matters() -> None:
    history = search([[0.3, 0.5, 0.7, 0.9], [0.4, 0.6, 0.8, 0.35]])
    notes = lab_notes(SMOKE, seen_by_proposers(SMOKE, history))
    assert {imp.evaluator for imp in notes.importances} == {"fanova", "mean_decrease_impurity"}
    for imp in notes.importances:
        assert sum(v for _, v in imp.shares) == pytest.approx(1.0)
        assert imp.top == "lr"
    assert "over 8 completed trials" in notes.importance_note


def test_too_few_trials_give_no_importances_and_say_why() -> None:
    notes = lab_notes(SMOKE, seen_by_proposers(SMOKE, search([[0.5, 0.6]])))
    assert notes.importances == ()
    assert "need 4 completed feasible trials; the search has 2" in notes.importance_note


def test_a_flat_history_is_a_plateau_and_a_rising_one_is_not() -> None:
    patience = SMOKE.budget.patience  # the window: 3 cycles
    flat = search([[0.5, 0.9], *[[0.6, 0.9 + 0.0001 * i] for i in range(patience)]])
    notes = lab_notes(SMOKE, seen_by_proposers(SMOKE, flat))
    assert notes.plateau, notes.plateau_reason
    assert notes.trend[0].best_so_far == pytest.approx(0.9)
    assert len(notes.trend) == patience + 1

    rising = search([[0.5], *[[0.6 + 0.1 * i] for i in range(patience)]])
    notes = lab_notes(SMOKE, seen_by_proposers(SMOKE, rising))
    assert not notes.plateau and "rose by 0.3" in notes.plateau_reason

    short = lab_notes(SMOKE, seen_by_proposers(SMOKE, search([[0.5], [0.5]])))
    assert not short.plateau and "too few cycles" in short.plateau_reason


def test_changes_name_a_new_best_and_where_it_moved() -> None:
    notes = lab_notes(SMOKE, seen_by_proposers(SMOKE, search([[0.5, 0.6], [0.8, 0.2]])))
    assert notes.changes[0].startswith("new best c002-t02: val reward 0.8, +0.2 over c001-t01")
    assert "moved lr" in notes.changes[0]
    notes = lab_notes(SMOKE, seen_by_proposers(SMOKE, search([[0.5, 0.6], [0.55]])))
    assert notes.changes[0].startswith("no new best: this cycle's best c002-t02 at 0.55")


def test_the_ledger_keeps_every_graded_prediction_in_order() -> None:
    history = search([[0.6, 0.7]])
    cycle2 = graded(
        SMOKE,
        history,
        [
            predicting(record(SMOKE, 2, val=0.8, test=0.0123, cycle=2), "more", beats="c001-t01"),
            record(SMOKE, 3, val=0.5, test=0.0123, cycle=2),  # no prediction: no entry
        ],
    )
    notes = lab_notes(SMOKE, seen_by_proposers(SMOKE, [*history, *cycle2]))
    assert [(e.trial_id, e.verdict, e.prediction, e.hypothesis) for e in notes.ledger] == [
        ("c002-t02", "confirmed", "beats c001-t01", "more")
    ]
    assert notes.verdicts() == {"confirmed": 1, "refuted": 0, "inconclusive": 0}
    shown = json.dumps(notes.for_model())
    assert "c002-t02" in shown and "0.0123" not in shown  # no test-split number


@pytest.mark.parametrize(
    ("raw", "error"),
    [
        ({"metric": "test_accuracy", "op": ">=", "value": 0.9}, "metric 'test_accuracy' is not"),
        ({"metric": "accuracy", "op": "~", "value": 0.9}, "op '~' is not one of"),
        ({"metric": "accuracy", "op": ">=", "value": "high"}, "value 'high' is not a finite"),
        ({"beats": "c009-t09"}, "not a trial of the history"),
        ({"metric": "accuracy", "op": ">="}, "needs metric, op and value"),
        ({"beats": "c001-t00", "metric": "accuracy", "op": ">=", "value": 1}, "not both"),
        ({"metric": "accuracy", "op": ">=", "value": 0.9, "why": "x"}, "unknown key 'why'"),
        ("val accuracy >= 0.9", "prediction must be an object"),
    ],
)
def test_a_prediction_outside_its_fixed_form_is_refused(raw: Any, error: str) -> None:
    prediction, errors = check_prediction(SMOKE, raw, {"c001-t00"})
    assert prediction is None and any(error in e for e in errors), errors


def test_llm_proposals_carry_their_hypothesis_and_the_request_the_notes() -> None:
    objective = SMOKE.model_copy(
        update={
            "proposers": SMOKE.proposers.model_copy(
                update={"llm": LLMSpec(model="claude-sonnet-4-6", max_retries=0)}
            )
        }
    )
    history = search([[0.3, 0.5, 0.7, 0.9]])
    notes = lab_notes(objective, seen_by_proposers(objective, history))
    answer = [
        {
            "params": {"lr": 0.05, "width": 16, "depth": 2},
            "rationale": "near the best",
            "hypothesis": "a deeper net keeps the best lr's gain",
            "prediction": {"beats": "c001-t03"},
        },
        {
            "params": {"lr": 0.002, "width": 8, "depth": 1},
            "rationale": "a refuted idea, revisited",
            "hypothesis": "tiny lr",
            "prediction": {"beats": "c007-t01"},  # not in history: refused, repaired away
        },
    ]
    script = Script(tool_answer(answer))
    proposer = LLMProposer(objective, (4,), 3, client=script.client(0), notes=notes)
    proposals = proposer.propose(objective, seen_by_proposers(objective, history), 2, 2, 4)
    assert [p.hypothesis for p in proposals] == ["a deeper net keeps the best lr's gain"]
    assert proposals[0].prediction == Prediction(beats="c001-t03")
    assert "not a trial of the history" in proposer.report.rejected[0].reason
    shown = json.loads(
        script.requests[0]["messages"][0]["content"].split("only):\n\n")[1].split("\n\nCall")[0]
    )
    assert shown["lab_notes"]["parameter_importance"]["fanova"]["lr"] > 0.5
    item = script.requests[0]["tools"][0]["input_schema"]["properties"]["proposals"]["items"]
    assert item["required"] == ["params", "rationale", "hypothesis", "prediction"]
