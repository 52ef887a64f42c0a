"""One vocabulary: the flow's lines, `factory status`, the cycle card and the notebook report the
same counts per status and the same labelled numbers.

One module-scoped search of two real cycles feeds every test: cycle 1 trains three good
configurations; cycle 2 trains a deliberately bad one, which is pruned against cycle 1's curves,
and one more. The champion is re-measured over two seeds, so its held-out metric exists both as
one run and as a mean over seeds. The expected strings are written out here, from the records
read through the Client API, not from the code that prints them.
"""

from __future__ import annotations

import base64
import json
import os
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nbformat
import pytest
from nbclient import NotebookClient

from tests.conftest import ROOT, factory_cli, run_cycle, write_objective

pytestmark = pytest.mark.slow
NAME = "vocabulary-test"
STATUSES = ("ok", "pruned", "failed", "diverged", "timeout")
SEEDS = 2


@dataclass(frozen=True)
class Search:
    runs: list[Any]  # metaflow.Run, oldest first

    def end(self, i: int) -> Any:
        return self.runs[i]["end"].task.data


@pytest.fixture(scope="module")
def search(tmp_path_factory: pytest.TempPathFactory) -> Search:
    good = [{"lr": 0.05, "width": 16 + i, "depth": 1} for i in range(3)]
    bad = {"lr": 0.001, "width": 4, "depth": 1}  # far below cycle 1's curves after 2 epochs
    objective = write_objective(
        tmp_path_factory.mktemp("vocabulary"),
        NAME,
        budget={
            "trials_per_cycle": 3,
            "max_epochs": 4,
            "early_stopping_patience": 4,
            "group_size": 1,
            "fuse": False,
        },
        pruning={"rule": "percentile", "percentile": 50, "warmup_epochs": 2, "min_trials": 3},
        promotion={"seeds": SEEDS},
        proposers={"enqueue": [*good, bad, {"lr": 0.05, "width": 24, "depth": 2}]},
    )
    return Search([run_cycle(objective, fresh=True), run_cycle(objective, trials=2)])


@pytest.fixture(scope="module")
def status(search: Search) -> dict[str, Any]:
    proc = factory_cli("status", "--objective", NAME, "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    report: dict[str, Any] = json.loads(proc.stdout)
    return report


def _number(value: float | None) -> str:
    return "none" if value is None else f"{value:.4f}"


def _expected(data: Any) -> list[str]:
    """What every screen must say of a cycle, from its end step's records and champion."""
    counts = Counter(r.status for r in data.records)
    status_text = ", ".join(f"{counts[s]} {s}" for s in STATUSES if counts[s])
    best = [r.val_reward for r in data.records if r.eligible]
    so_far = [r.val_reward for r in data.history if r.eligible]
    champion = data.champion
    mean = sum(champion.seed_values) / len(champion.seed_values)
    return [
        f"{len(data.records)} trials ({status_text})",
        f"best val reward this cycle {_number(max(best) if best else None)}",
        f"best val reward so far {_number(max(so_far))}",
        f"decision {data.decision.status}",
        f"champion {champion.trial_id}: test accuracy (one run) {champion.test_value:.4f}; "
        f"test accuracy (mean over {SEEDS} seeds) {mean:.4f}",
    ]


def test_a_pruned_trial_is_pruned_not_failed(search: Search, status: dict[str, Any]) -> None:
    second = search.end(1)
    assert any(r.status == "pruned" for r in second.records), [r.status for r in second.records]
    for i, summary in enumerate(status["cycles"]):
        counts = Counter(r.status for r in search.end(i).records)
        assert summary["counts"] == {s: counts[s] for s in STATUSES}
    assert status["cycles"][1]["counts"]["failed"] == 0


def test_status_json_holds_each_number_with_what_it_is(
    search: Search, status: dict[str, Any]
) -> None:
    assert [c["run_id"] for c in status["cycles"]] == [r.id for r in search.runs]
    assert "the search of cycles 1 to 2" in status["search"]
    for i, summary in enumerate(status["cycles"]):
        data = search.end(i)
        best = [r.val_reward for r in data.records if r.eligible]
        assert summary["best_val_reward_this_cycle"] == (max(best) if best else None)
        assert summary["best_val_reward_so_far"] == max(
            r.val_reward for r in data.history if r.eligible
        )
        champion = summary["champion"]
        assert champion["trial_id"] == data.champion.trial_id
        assert champion["test_one_run"] == data.champion.test_value
        assert champion["seeds"] == SEEDS == len(data.champion.seed_values)
        assert champion["test_mean"] == pytest.approx(sum(data.champion.seed_values) / SEEDS)
        assert summary["decision"] == data.decision.status
    assert status["budget"]["cycles_used"] == 2


def test_the_flow_prints_the_same_counts_and_numbers(search: Search) -> None:
    for i, run in enumerate(search.runs):
        stdout = run["decide"].task.stdout
        for expected in _expected(search.end(i)):
            assert expected in stdout, (expected, stdout[-2000:])


def test_the_card_shows_the_same_counts_and_numbers(search: Search) -> None:
    from metaflow.cards import get_cards

    for i, run in enumerate(search.runs):
        [card] = get_cards(run["end"].task, id="cycle")
        found = re.search(r'window\.__MF_DATA__\["[^"]+"\] = "([^"]+)"', card.get())
        assert found, "no card data in the HTML"
        text = json.dumps(json.loads(base64.b64decode(found[1])))
        for expected in _expected(search.end(i)):
            assert expected in text, expected
        assert "Failed trials" not in text
    pruned = sum(r.status == "pruned" for r in search.end(1).records)
    assert (
        f"## Trials that did not complete (pruned, failed, diverged, timeout)\\n\\n{pruned} pruned"
        in (text)
    )


def test_status_table_shows_the_same_numbers(search: Search, status: dict[str, Any]) -> None:
    proc = factory_cli("status", "--objective", NAME, env={"COLUMNS": "250"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [
        cells
        for line in proc.stdout.splitlines()
        if (cells := [c.strip() for c in line.split("│")[1:-1]]) and cells[0].isdigit()
    ]
    for cells, summary in zip(rows, status["cycles"], strict=True):
        champion = summary["champion"]
        assert cells[3:8] == [str(summary["counts"][s]) for s in STATUSES]
        assert cells[8:10] == [
            _number(summary["best_val_reward_this_cycle"]),
            _number(summary["best_val_reward_so_far"]),
        ]
        assert cells[12:15] == [
            _number(champion["test_one_run"]),
            _number(champion["test_mean"]),
            str(SEEDS),
        ]


def test_the_notebook_shows_the_same_counts_and_numbers(search: Search, tmp_path: Path) -> None:
    notebook = nbformat.read(ROOT / "notebooks" / "explore.ipynb", as_version=4)
    os.environ["FACTORY_OBJECTIVE"] = NAME  # the kernel inherits this process's environment
    try:
        NotebookClient(notebook, timeout=300, resources={"metadata": {"path": str(ROOT)}}).execute()
    finally:
        del os.environ["FACTORY_OBJECTIVE"]
    outputs = "\n".join(
        str(o.get("text", ""))
        for cell in notebook.cells
        if cell.cell_type == "code"
        for o in cell.outputs
    )
    for i in range(len(search.runs)):
        for expected in _expected(search.end(i)):
            assert expected in outputs, expected
