"""Retiring a cycle (`factory retire`), and a search-space change shown in the next cycle.

The flow test runs three real cycles of one search: cycle 2 has a typo in its search space (the
start step and the card say what changed), is retired, and cycle 3 continues from cycle 1 as if
cycle 2 had not run, while cycle 2 keeps its cycle and trial numbers and its records.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from factory_lib.cycle.plan import BudgetSpent, plan_cycle
from factory_lib.explore import analysis
from factory_lib.objective import load_objective, parse_objective, search_space_changes
from factory_lib.ops.cli import main
from tests.conftest import ROOT, run_cycle, write_objective
from tests.test_explore import _card_html, _card_payload

NAME = "retire-test"
SMOKE = (ROOT / "objectives" / "smoke.yaml").read_text()
SPACE = {
    "lr": {"type": "float", "low": 1.0e-3, "high": 1.0e-1, "log": True},
    "width": {"type": "int", "low": 4, "high": 16},
}
# The typo: lr's range a hundred times too high, and a parameter left out.
TYPO = {"lr": {"type": "float", "low": 1.0e-1, "high": 10.0, "log": True}}


def test_search_space_changes_name_what_was_added_removed_and_changed() -> None:
    before = parse_objective(SMOKE)
    after = parse_objective(
        SMOKE.replace("high: 2}", "high: 3}").replace(
            "  lr: {type: float, low: 1.0e-3, high: 1.0e-1, log: true}\n",
            "  lr: {type: float, low: 1.0e-3, high: 1.0e-1, log: true}\n"
            "  act: {type: categorical, choices: [relu, tanh]}\n",
        )
        + "fixed:\n  dropout: 0.1\n"
    )
    assert search_space_changes(before, after) == (
        "added search_space.act (categorical ('relu', 'tanh'))",
        "changed search_space.depth from int 1..2 to int 1..3",
        "added fixed.dropout (0.1)",
    )
    assert search_space_changes(after, before)[:2] == (
        "removed search_space.act (was categorical ('relu', 'tanh'))",
        "changed search_space.depth from int 1..3 to int 1..2",
    )
    assert search_space_changes(before, before) == ()


@dataclass(frozen=True)
class Search:
    objective: Path
    runs: list[Any]  # metaflow.Run: cycles 1, 2 (the typo, retired) and 3
    retired: str  # what `factory retire` printed

    def end(self, i: int) -> Any:
        return self.runs[i]["end"].task


def _factory(*argv: str) -> tuple[int, str, str]:
    """`factory ARGV` in this process: exit code, stdout, stderr."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def search(tmp_path_factory: pytest.TempPathFactory) -> Search:
    """Cycle 1; cycle 2 with the typo, retired (and unretired and retired again: tags only);
    cycle 3 with the objective as it was."""
    folder = tmp_path_factory.mktemp("retire")
    budget = {"trials_per_cycle": 2, "max_epochs": 1, "max_cycles": 3}
    objective = write_objective(folder, NAME, search_space=SPACE, budget=budget)
    (folder / "typo").mkdir()
    typo = write_objective(folder / "typo", NAME, search_space=SPACE | TYPO, budget=budget)
    first = run_cycle(objective, fresh=True)
    second = run_cycle(typo)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("METAFLOW_USER", "ops-person")
        code, _, err = _factory("retire", second.id, "--objective", NAME, "--reason", "a typo")
        assert code == 0, err
        code, out, err = _factory("unretire", second.id, "--objective", NAME)
        assert code == 0, err
        assert out.startswith(f"{second.pathspec} is no longer retired (it was retired ")
        assert "by ops-person: a typo)" in out
        code, retired, err = _factory(
            "retire", second.id, "--objective", NAME, "--reason", "typo in  lr's\nrange"
        )
        assert code == 0, err
    third = run_cycle(objective)
    return Search(objective, [first, second, third], retired)


@pytest.mark.slow
def test_a_retired_cycle_is_skipped_by_the_chain_and_keeps_its_numbers(search: Search) -> None:
    first, second, third = (search.end(i).data for i in range(3))
    assert search.retired.splitlines() == [
        f"{search.runs[1].pathspec} retired {search.retired.split()[2]} by ops-person: "
        "typo in lr's range",
        f"the next cycle of {NAME!r} continues from {search.runs[0].pathspec}; "
        "`factory unretire` undoes this",
    ]
    # cycle 3 continues from cycle 1: its history is 1's and its own, numbered after 2's
    assert (first.cycle, second.cycle, third.cycle) == (1, 2, 3)
    assert list(third.history) == [*first.history, *third.records]
    assert [r.proposal.number for r in third.history] == [0, 1, 4, 5]
    assert [r.proposal.number for r in second.records] == [2, 3]
    assert third.plan.previous.run_pathspec == search.runs[0].pathspec
    assert third.plan.retired_cycles == (2,)
    # the champion is cycle 1's or cycle 3's, never cycle 2's
    assert third.champion is not None and third.champion.record.proposal.cycle != 2
    start = search.runs[2]["start"].task.stdout
    assert f"skipping {search.runs[1].pathspec} (cycle 2), retired " in start
    assert "by ops-person: typo in lr's range; continuing from" in start
    assert f"continuing from {search.runs[0].pathspec} (cycle 1); this is cycle 3, trial " in start
    # the records stay: cycle 2's run reads back as it was
    assert [r.trial_id for r in second.history] == ["c001-t00", "c001-t01", "c002-t00", "c002-t01"]


@pytest.mark.slow
def test_the_budget_does_not_count_a_retired_cycle(search: Search) -> None:
    spec = load_objective(search.objective)
    plan = plan_cycle(spec, "CycleFlow", run_id=None)
    assert (plan.cycle, plan.retired_cycles) == (4, (2,))  # 2 of max_cycles=3 counted
    tight = spec.model_copy(update={"budget": spec.budget.model_copy(update={"max_cycles": 2})})
    with pytest.raises(BudgetSpent, match=r"has run 2 cycles \(not counting 1 retired\) of its"):
        plan_cycle(tight, "CycleFlow", run_id=None)
    assert analysis.budget_status(analysis.latest(analysis.load_cycles(NAME))).cycles_used == 2
    card = json.dumps(_card_payload(_card_html(search.end(2))))
    assert "2 of 3 cycles spent, 1 left" in card


@pytest.mark.slow
def test_status_shows_the_retired_cycle_and_its_reason(
    search: Search, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "400")  # rich: one line per row
    code, out, err = _factory("status", "--objective", NAME)
    assert code == 0, err
    rows = {m[1]: line for line in out.splitlines() if (m := re.match(r"│\s*(\d+)\s*│", line))}
    assert set(rows) == {"1", "2", "3"}
    assert "by ops-person: typo in lr's range" in rows["2"]
    assert "retired" not in rows["1"] + rows["3"]
    assert f"{NAME}: 3 cycles (1 retired)" in out
    assert "budget: 2 of 3 cycles, 1 left" in out
    cycles = analysis.load_cycles(NAME)
    assert [c.retired is not None for c in cycles] == [False, True, False]
    assert analysis.latest(cycles).run_id == search.runs[2].id
    # `show` reads the search the next cycle continues: a retired cycle's trial is not in it
    code, _, err = _factory("show", "c002-t00", "--objective", NAME)
    assert code == 1 and f"no trial 'c002-t00' in objective '{NAME}'" in err
    assert _factory("show", "c003-t00", "--objective", NAME)[0] == 0


@pytest.mark.slow
def test_retire_refuses_what_it_cannot_retire(search: Search) -> None:
    second, third = search.runs[1], search.runs[2]
    code, _, err = _factory("retire", second.id, "--objective", NAME, "--reason", "again")
    assert code == 1
    assert f"{second.pathspec} is already retired " in err and "factory unretire" in err
    code, _, err = _factory("retire", search.runs[0].id, "--objective", NAME, "--reason", "x")
    assert code == 1
    assert f"{third.pathspec} continued from it and holds its trials; retire {third.id}" in err
    code, _, err = _factory("retire", third.id, "--objective", "smoke", "--reason", "x")
    assert code == 1
    assert f"{third.pathspec} is not a cycle of objective 'smoke' (not tagged " in err
    assert f"its tags: objective:{NAME})" in err
    code, _, err = _factory("retire", "123", "--objective", NAME, "--reason", "x")
    assert code == 1 and "CycleFlow/123: no such run" in err
    code, _, err = _factory("unretire", second.id, "--objective", NAME)
    assert code == 1
    assert f"{third.pathspec} has run since without its trials" in err
    code, _, err = _factory("retire", third.id, "--objective", NAME, "--reason", " ")
    assert code == 1 and "give a --reason" in err


@pytest.mark.slow
def test_a_search_space_change_is_shown_in_the_log_and_on_the_card(search: Search) -> None:
    change = "changed search_space.lr from float 0.001..0.1 log to float 0.1..10 log"
    start = search.runs[1]["start"].task.stdout
    assert f"search space changed since {search.runs[0].pathspec} (cycle 1): {change}" in start
    assert search.end(1).data.plan.space_changes == (change,)
    card = json.dumps(_card_payload(_card_html(search.end(1))))
    assert "Search space changed" in card and change in card
    # cycle 3 runs the space of cycle 1, which it continues: nothing changed for it
    assert "search space changed" not in search.runs[2]["start"].task.stdout
    assert "Search space changed" not in json.dumps(_card_payload(_card_html(search.end(2))))
