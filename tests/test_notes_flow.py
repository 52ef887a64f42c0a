"""Lab notes and graded hypotheses in a real three-cycle search with Claude proposing.

One module-scoped search (three chained cycles of four trials, Claude against the fake
Messages endpoint on 127.0.0.1) feeds every test: the notes artifact, the ledger's grades
checked against the records' own validation numbers, the next request, the card and
`factory notes`.
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from factory_lib.propose.llm.prompt import CHARS_PER_TOKEN_ESTIMATE
from tests.conftest import factory_cli, run_cycle, write_objective
from tests.fake_anthropic import FakeMessagesServer, cached_prefix
from tests.test_explore import _card_html, _card_payload

pytestmark = pytest.mark.slow
NAME = "notes-flow"
LLM = {"model": "claude-sonnet-4-6", "share": 0.5, "min_share": 0.5}


@dataclass(frozen=True)
class Search:
    runs: list[Any]  # metaflow.Run, oldest first
    requests: list[dict[str, Any]]  # every request body the fake endpoint received

    def data(self, i: int) -> Any:
        return self.runs[i]["end"].task.data


@pytest.fixture(scope="module")
def search(tmp_path_factory: pytest.TempPathFactory) -> Search:
    objective = write_objective(
        tmp_path_factory.mktemp("notes"),
        NAME,
        proposers={"llm": LLM},
        budget={"trials_per_cycle": 4},
    )
    with FakeMessagesServer(seed=3) as fake:
        env = {"ANTHROPIC_BASE_URL": fake.url, "ANTHROPIC_API_KEY": "sk-ant-fake"}
        runs = [run_cycle(objective, env=env, fresh=True)]
        runs += [run_cycle(objective, env=env) for _ in range(2)]
    return Search(runs, fake.requests)


def _expected_verdict(record: Any, by_id: dict[str, Any]) -> str:
    """The verdict recomputed here from the records' validation numbers."""
    p = record.proposal.prediction
    if record.status != "ok" or record.result.evaluation is None:
        return "inconclusive"
    if p.beats is not None:
        other = by_id[p.beats]
        if not record.feasible:
            return "refuted"
        return "confirmed" if record.val_reward > other.val_reward else "refuted"
    value = (
        record.val_reward
        if p.metric == "val_reward"
        else record.result.evaluation.metrics("val")[p.metric]
    )
    holds = {">=": value >= p.value, "<=": value <= p.value, ">": value > p.value}.get(
        p.op, value < p.value
    )
    return "confirmed" if holds else "refuted"


def test_the_notes_of_a_three_cycle_search(search: Search) -> None:
    data = search.data(2)
    notes = data.notes
    assert notes.cycle == 3 and notes.trials == len(data.history) == 12
    assert [p.cycle for p in notes.trend] == [1, 2, 3]
    so_far = [p.best_so_far for p in notes.trend]
    assert so_far == sorted(so_far)  # the best so far never falls
    assert so_far[-1] == max(r.val_reward for r in data.history if r.eligible)
    assert {imp.evaluator for imp in notes.importances} == {"fanova", "mean_decrease_impurity"}
    for imp in notes.importances:
        assert {p for p, _ in imp.shares} <= {"lr", "width", "depth"}
        assert sum(v for _, v in imp.shares) == pytest.approx(1.0)
    assert notes.changes  # a new best or not, always said
    # the notes of each cycle are the join's, kept at the end step
    assert [search.data(i).notes.cycle for i in range(3)] == [1, 2, 3]


def test_each_llm_prediction_is_graded_on_the_validation_numbers(search: Search) -> None:
    history = search.data(2).history
    by_id = {r.trial_id: r for r in history}
    predicted = [r for r in history if r.proposal.prediction is not None]
    assert predicted and all(r.proposal.source.startswith("llm:") for r in predicted)
    assert all(r.proposal.hypothesis.startswith("fake hypothesis") for r in predicted)
    assert any(r.proposal.prediction.beats for r in predicted)  # both forms were made
    assert [r.grade.verdict for r in predicted] == [_expected_verdict(r, by_id) for r in predicted]
    ledger = search.data(2).notes.ledger
    assert [(e.trial_id, e.verdict) for e in ledger] == [
        (r.trial_id, r.grade.verdict) for r in predicted
    ]
    # history keeps the grades: cycle 3's history holds cycle 1's records unchanged
    first = search.data(0).history
    assert list(history[: len(first)]) == list(first)


def test_cycle_2_request_shows_the_graded_ledger_and_importances(search: Search) -> None:
    first = search.data(0)
    body = search.requests[1]  # one call per cycle: every answer is valid
    text = body["messages"][0]["content"]
    shown = json.loads(text.split("only):\n\n")[1].split("\n\nCall")[0])
    notes = shown["lab_notes"]
    assert notes["after_cycle"] == 1
    assert notes["parameter_importance"]["fanova"]
    assert sum(notes["parameter_importance"]["fanova"].values()) == pytest.approx(1.0, abs=0.01)
    entries = notes["hypotheses_ledger"]["newest"]
    assert [(e["trial_id"], e["verdict"]) for e in entries] == [
        (e.trial_id, e.verdict) for e in first.notes.ledger
    ]
    assert entries and all(
        e["verdict"] in ("confirmed", "refuted", "inconclusive") for e in entries
    )
    # the earlier LLM proposals come back with their hypothesis and verdict
    assert all("verdict" in t for t in shown["earlier_llm_proposals"])

    def numbers(split: str) -> set[float]:
        return {
            round(v, 5)
            for r in search.data(2).history
            if r.result.evaluation
            for v in getattr(r.result.evaluation, split).values()
        }

    test_only = numbers("test") - numbers("val")
    for request in search.requests:
        dumped = json.dumps(request)
        assert '"test' not in dumped
        found = [
            v
            for v in test_only
            for form in {str(v), f"{v:.4g}", f"{v:.6g}"}
            if re.search(rf"(?<![\d.]){re.escape(form)}(?!\d)", dumped)
        ]
        assert found == []


def test_the_card_shows_the_notes(search: Search) -> None:
    data = search.data(2)
    text = json.dumps(_card_payload(_card_html(search.runs[2]["end"].task)))
    assert "## Lab notes" in text and "Hypotheses ledger" in text
    assert "Parameter importance" in text and "fanova" in text
    for entry in data.notes.ledger:
        assert f'"{entry.trial_id}", "{entry.verdict}"' in text


def test_factory_notes_prints_what_the_search_learned(search: Search) -> None:
    notes = search.data(2).notes
    done = factory_cli("notes", "--objective", NAME)
    assert done.returncode == 0, done.stderr
    assert f"lab notes after cycle 3 ({notes.trials} trials)" in done.stdout
    assert f"plateau: {'yes' if notes.plateau else 'no'}" in done.stdout
    for entry in notes.ledger:
        assert f"{entry.trial_id} [{entry.verdict}] {entry.prediction}" in done.stdout

    as_json = factory_cli("notes", "--objective", NAME, "--json")
    assert as_json.returncode == 0, as_json.stderr
    report = json.loads(as_json.stdout)
    assert report["notes"] == notes.model_dump(mode="json")

    status = factory_cli("status", "--objective", NAME, "--notes")
    assert status.returncode == 0, status.stderr
    assert "lab notes after cycle 3" in status.stdout


def test_the_cached_prefix_is_the_same_in_every_call_and_read_after_the_first(
    search: Search,
) -> None:
    # one prefix in every call: the tool says nothing of how many trials a call asks for
    prefixes = {cached_prefix(body) for body in search.requests}
    assert len(prefixes) == 1 and "" not in prefixes
    # long enough to be cached (1024 tokens for Sonnet), at the proposer's own estimate
    assert len(prefixes.pop()) / CHARS_PER_TOKEN_ESTIMATE >= 1024
    calls = [c for i in range(3) for c in search.data(i).llm_report.calls]
    assert len(calls) == len(search.requests) == 3
    assert calls[0].cache_write_tokens > 0 and calls[0].cache_read_tokens == 0
    assert all(c.cache_read_tokens > 0 and c.cache_write_tokens == 0 for c in calls[1:])
    assert search.data(1).llm_report.cache_read_tokens == calls[1].cache_read_tokens
    # the cost report: in the start step's log and on the card
    log = search.runs[1]["start"].task.stdout
    assert f"propose: {calls[1].input_tokens} input, {calls[1].cache_read_tokens} read" in log
    card = json.dumps(_card_payload(_card_html(search.runs[2]["end"].task)))
    assert f"{calls[2].cache_read_tokens} read from the cache" in card


def test_every_trial_logs_its_curve_as_csv_by_default(search: Search, tmp_path: Path) -> None:
    done = factory_cli("logs", "--objective", NAME, str(tmp_path))
    assert done.returncode == 0, done.stderr
    history = search.data(2).history
    assert f"of {len(history)} trials (csv logs)" in done.stdout
    for r in history:
        with (tmp_path / r.trial_id / "metrics.csv").open() as f:
            rows = [row for row in csv.DictReader(f) if row["val/accuracy"]]
        assert [float(row["val/accuracy"]) for row in rows] == pytest.approx(list(r.result.curve))


def test_export_mlflow_writes_the_search_as_runs_mlflow_reads_back(
    search: Search, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow
    from mlflow import MlflowClient

    store = tmp_path / "mlruns"
    for added in (12, 0):  # the second export adds nothing
        done = factory_cli("export-mlflow", "--objective", NAME, str(store))
        assert done.returncode == 0, done.stderr
        assert f"wrote {added} runs to experiment {NAME!r}" in done.stdout
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    mlflow.set_tracking_uri(store.as_uri())
    experiment = mlflow.get_experiment_by_name(NAME).experiment_id
    runs = {r.data.tags["trial_id"]: r for r in MlflowClient().search_runs([experiment])}
    data = search.data(2)
    champion = data.champion.trial_id if data.champion else None
    assert sorted(runs) == sorted(r.trial_id for r in data.history)
    for r in data.history:
        run = runs[r.trial_id]
        assert run.data.tags["source"] == r.proposal.source
        assert run.data.tags["champion"] == str(r.trial_id == champion).lower()
        if r.val_reward is not None:
            assert run.data.metrics["val_reward"] == pytest.approx(r.val_reward)
        history = MlflowClient().get_metric_history(run.info.run_id, "val_accuracy_by_epoch")
        assert [m.value for m in sorted(history, key=lambda m: m.step)] == pytest.approx(
            list(r.result.curve)
        )
