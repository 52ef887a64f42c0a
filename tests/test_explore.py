"""Seeing a real search: the cycle card, its screenshot, the notebook and the `factory` views.

One module-scoped search of two real cycles (each with a planted failure) feeds every test.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nbformat
import numpy as np
import optuna
import pytest
from matplotlib import image as mpimg
from nbclient import NotebookClient

from factory_lib.data.splits import load_splits
from factory_lib.explore import analysis
from factory_lib.objective import load_objective
from factory_lib.ops.drift import check_drift
from factory_lib.runs.client import branch_name
from tests.conftest import ROOT, factory_cli, run_cycle, write_objective

pytestmark = pytest.mark.slow
NAME = "explore-test"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@dataclass(frozen=True)
class Search:
    runs: list[Any]  # metaflow.Run, oldest first
    objective: Path

    def end(self, i: int) -> Any:
        return self.runs[i]["end"].task


@pytest.fixture(scope="module")
def search(tmp_path_factory: pytest.TempPathFactory) -> Search:
    """Two chained cycles of 3 trials each: one planted failure and two real fits per cycle."""
    objective = write_objective(
        tmp_path_factory.mktemp("explore"),
        NAME,
        model={"builder": "tests.builders:planted"},
        search_space={
            "width": {"type": "int", "low": 4, "high": 32, "log": True},
            "lr": {"type": "float", "low": 0.003, "high": 0.1, "log": True},
            "behaviour": {"type": "categorical", "choices": ["ok", "raise"]},
        },
        proposers={"enqueue": [{"behaviour": b} for b in ("raise", "ok", "ok")]},
    )
    return Search([run_cycle(objective, fresh=True), run_cycle(objective)], objective)


def _card_payload(html: str) -> dict[str, Any]:
    """The components a blank card embeds (base64 JSON) in its HTML."""
    found = re.search(r'window\.__MF_DATA__\["[^"]+"\] = "([^"]+)"', html)
    assert found, "no card data in the HTML"
    payload: dict[str, Any] = json.loads(base64.b64decode(found[1]))
    return payload


def _card_html(task: Any) -> str:
    from metaflow.cards import get_cards

    cards = get_cards(task, id="cycle")
    assert len(cards) == 1
    html: str = cards[0].get()
    return html


def test_the_card_shows_leaderboard_plots_failures_and_decision(search: Search) -> None:
    data = search.end(1).data
    text = json.dumps(_card_payload(_card_html(search.end(1))))

    assert f"# {NAME}: cycle 2" in text
    assert "Leaderboard (this cycle)" in text
    for record in data.records:
        assert f'"{record.trial_id}"' in text  # every trial of the cycle is a row
    assert text.count('"type": "image"') == 3 and text.count("data:image/png;base64") == 3
    assert f"Promotion decision: {data.decision.status}" in text
    assert json.dumps(data.decision.reason)[1:-1] in text
    assert "Trials that did not complete" in text and "planted failure (behaviour=raise)" in text
    assert "2 of 50 cycles spent, 48 left" in text
    assert '"type": "progressBar"' in text
    assert "Pareto front of accuracy (maximize) and params (minimize)" in text
    # best so far across both cycles: one row per cycle in its table
    assert re.search(r'\["1", "3", "[0-9.]+", "[0-9.]+"\], \["2", "3"', text)


@pytest.mark.skipif(CHROMIUM is None, reason="needs Chromium (Debian package `chromium`)")
def test_a_headless_browser_renders_the_card(search: Search, tmp_path: Path) -> None:
    page = tmp_path / "card.html"
    page.write_text(_card_html(search.end(1)))
    shot = tmp_path / "card.png"
    subprocess.run(
        [
            str(CHROMIUM),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--hide-scrollbars",
            "--virtual-time-budget=5000",
            "--window-size=1200,2400",
            f"--screenshot={shot}",
            page.as_uri(),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    pixels = mpimg.imread(shot)
    assert pixels.shape[:2] == (2400, 1200)
    # A page the card's JavaScript rendered has text, tables and plots: many distinct colours,
    # where an empty or failed page is a few flat colours.
    colours = {tuple(p) for p in (pixels[::4, ::4, :3] * 255).astype(int).reshape(-1, 3)}
    assert len(colours) > 200


def test_status_shows_each_cycle(search: Search) -> None:
    proc = _factory("status", "--objective", NAME)
    assert proc.returncode == 0, proc.stderr
    rows = {
        int(cells[0]): cells
        for line in proc.stdout.splitlines()
        if (cells := [c.strip() for c in line.split("│")[1:-1]]) and cells[0].isdigit()
    }
    assert sorted(rows) == [1, 2]
    for i, run in enumerate(search.runs):
        data = run["end"].task.data
        run_id, trials, ok, pruned, failed = rows[i + 1][1:6]
        assert (run_id, trials, ok, pruned, failed) == (run.id, "3", "2", "0", "1")
        assert rows[i + 1][10] == data.decision.status
        assert rows[i + 1][11] == data.champion.trial_id
    best = max(r.val_reward for r in search.end(1).data.history if r.eligible)
    assert rows[2][9] == f"{best:.4f}"
    assert "budget: 2 of 50 cycles, 48 left" in proc.stdout


def test_status_of_an_objective_without_cycles_says_what_to_do(datastore: str) -> None:
    proc = _factory("status", "--objective", "never-run")
    assert proc.returncode == 1
    said = proc.stderr
    assert f"objective 'never-run' has no successful cycle on branch {branch_name()} yet" in said
    assert f"Looked in the local datastore {datastore}/.metaflow" in said
    assert "Run `python flows/cycle.py run`" in said


def test_show_prints_one_trial(search: Search) -> None:
    failed = next(r for r in search.end(1).data.records if r.status == "failed")
    proc = _factory("show", failed.trial_id, "--objective", NAME)
    assert proc.returncode == 0, proc.stderr
    assert f"trial {failed.trial_id}" in proc.stdout
    assert f"looked in objective '{NAME}', the search of cycles 1 to 2" in proc.stdout
    assert "planted failure (behaviour=raise)" in proc.stdout
    assert re.search(r"status\s+│ failed", proc.stdout)
    missing = _factory("show", "c099-t00", "--objective", NAME)
    assert missing.returncode == 1 and f"no trial 'c099-t00' in objective '{NAME}'" in (
        missing.stderr
    )
    record = json.loads(_factory("show", failed.trial_id, "--objective", NAME, "--json").stdout)
    assert record["record"]["result"]["status"] == "failed"


def test_export_optuna_matches_the_history(search: Search, tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'search.db'}"
    proc = _factory("export-optuna", "--objective", NAME, storage)
    assert proc.returncode == 0, proc.stderr
    study = optuna.load_study(study_name=NAME, storage=storage)
    history = search.end(1).data.history
    assert [t.user_attrs["trial_id"] for t in study.trials] == [r.trial_id for r in history]
    for trial, record in zip(study.trials, history, strict=True):
        ok = record.status == "ok"
        assert trial.state.name == ("COMPLETE" if ok else "FAIL")
        assert trial.value == (record.val_reward if ok else None)
        assert trial.params == record.proposal.params  # every parameter is searched here
    # again on the same storage: the study holds every trial already, nothing is added
    again = _factory("export-optuna", "--objective", NAME, storage)
    assert again.returncode == 0, again.stderr
    assert again.stdout.startswith(f"wrote 0 trials to study {NAME!r}")
    assert len(optuna.load_study(study_name=NAME, storage=storage).trials) == len(history)


def test_analysis_reads_the_cycles_through_the_client_api(search: Search) -> None:
    cycles = analysis.load_cycles(NAME)
    assert [c.run_id for c in cycles] == [r.id for r in search.runs]
    assert cycles[-1].history == tuple(search.end(1).data.history)
    lineage = analysis.champion_lineage(cycles)
    assert lineage["trial_id"].iloc[0] == search.end(0).data.champion.trial_id
    assert lineage["trial_id"].iloc[-1] == search.end(1).data.champion.trial_id


def test_the_notebook_runs_top_to_bottom(
    search: Search, datastore: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # run from the notebooks folder of a project whose datastore is the tests' own, found from
    # there as a person's notebook finds it: the nearest .metaflow above it
    (tmp_path / "notebooks").mkdir()
    (tmp_path / ".metaflow").symlink_to(Path(datastore) / ".metaflow")
    notebook = nbformat.read(ROOT / "notebooks" / "explore.ipynb", as_version=4)
    # the kernel inherits this process's environment
    monkeypatch.setenv("FACTORY_OBJECTIVE", NAME)
    monkeypatch.delenv("METAFLOW_DATASTORE_SYSROOT_LOCAL")
    where = {"metadata": {"path": str(tmp_path / "notebooks")}}
    NotebookClient(notebook, timeout=300, resources=where).execute()
    outputs = "\n".join(
        str(o.get("text", "")) + str(o.get("data", {}).get("text/plain", ""))
        for cell in notebook.cells
        if cell.cell_type == "code"
        for o in cell.outputs
    )
    champion = search.end(1).data.champion
    assert f"reading the local datastore {tmp_path / '.metaflow'} (the nearest .metaflow" in outputs
    assert f"{NAME}: 2 cycles, 6 trials" in outputs
    assert f"champion {champion.trial_id}: test accuracy (one run) {champion.test_value:.4f}" in (
        outputs
    )
    # the loaded model agrees
    assert f"loaded champion, test accuracy (one run) {champion.test_value:.4f}" in outputs
    images = [
        o for c in notebook.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})
    ]
    assert len(images) == 3


def _factory(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "factory_lib.ops.cli", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "COLUMNS": "200"},
        timeout=300,
    )


def test_shifted_data_warrants_a_cycle_and_unshifted_does_not(
    search: Search, tmp_path: Path
) -> None:
    objective_path = search.objective
    objective = load_objective(objective_path)
    splits = load_splits(objective.data, objective.task)
    x, y = splits.raw_x["test"], splits.raw_y["test"]

    same = check_drift(NAME, x, y)
    assert not same.warranted, same.reasons
    assert same.now == pytest.approx(same.held_out)  # the held-out split itself: no change

    shifted = x + 3 * splits.raw_x["train"].std(axis=0)
    report = check_drift(NAME, shifted, y)
    assert report.warranted
    assert len(report.drifted) == 4 and report.features_tested == 4
    assert any("features drifted" in r for r in report.reasons)

    np.savez(tmp_path / "shifted.npz", x=shifted, y=y)
    proc = factory_cli(
        "drift", "--objective", NAME, "--data", str(tmp_path / "shifted.npz"), "--json"
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout)["warranted"] is True
    np.savez(tmp_path / "same.npz", x=x, y=y)
    proc = factory_cli(
        "loop",
        "--cycles",
        "1",
        "--config",
        str(objective_path),
        "--drift-data",
        str(tmp_path / "same.npz"),
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.splitlines()[-1] == "stop: no drift, no cycle started"
