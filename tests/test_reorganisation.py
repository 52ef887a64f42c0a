"""Defects found in the reorganisation, each pinned by a test that failed before its fix."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from factory_lib.cycle.propose import group_trials
from factory_lib.data.module import build_trial_data
from factory_lib.objective import load_objective
from factory_lib.records import Proposal
from factory_lib.registry.card import ExportSummary, model_card
from factory_lib.registry.gate import Champion, PromotionDecision
from factory_lib.reward import score
from factory_lib.train.prune import Curves, history_curves
from factory_lib.train.trial import run_trial
from tests.records import record

ROOT = Path(__file__).resolve().parents[1]
SMOKE = load_objective(ROOT / "objectives" / "smoke.yaml")


def test_the_model_cards_reproduce_line_runs_as_written() -> None:
    """It called run_trial(objective, proposal), which also needs the trial's data."""
    from factory_lib.data.describe import describe_data

    proposal = Proposal(
        trial_id="c001-t00",
        number=0,
        cycle=1,
        params={"lr": 0.05, "width": 8},
        seed=0,
        source="test",
    )
    trained = score(SMOKE, run_trial(SMOKE, proposal, build_trial_data(SMOKE)).result)
    assert trained.result.evaluation is not None
    champion = Champion(
        record=trained,
        promoted_in_cycle=1,
        metric="accuracy",
        test_value=trained.result.evaluation.test["accuracy"],
    )
    decision = PromotionDecision(status="promoted", reason="first", challenger=trained.trial_id)
    card = model_card(
        SMOKE, champion, decision, describe_data(SMOKE)[0], "CycleFlow/1", ExportSummary()
    )
    snippet = card.reproduce.rsplit("): ", 1)[1]
    *statements, last = snippet.split("; ")
    scope = {"objective": SMOKE, "proposal": proposal}
    exec("\n".join(statements), scope)  # our own card's text, run as a user would
    again = eval(last, scope)
    assert again.result.status == "ok"
    assert again.result.evaluation.val == trained.result.evaluation.val  # seeded: the same fit


def test_infeasible_trials_set_no_pruning_bar() -> None:
    """A feasible trial was pruned against a bar set partly by a trial that broke a constraint."""
    feasible = record(SMOKE, 1, val=0.7)
    infeasible = record(SMOKE, 2, val=0.99, params=50_000)  # smoke allows params <= 5000
    assert feasible.feasible and not infeasible.feasible
    assert history_curves([feasible, infeasible]) == [feasible.result.curve]

    curves = Curves(history_curves([feasible]))
    curves.finished("c001-t03", (0.5, 0.99), "ok", feasible=False)
    curves.finished("c001-t04", (0.5, 0.8), "ok", feasible=True)
    assert curves.others("c001-t05") == [feasible.result.curve, (0.5, 0.8)]


def test_no_train_task_gets_more_trials_than_its_timeout_allows() -> None:
    """The task timeout covers the YAML's trials_per_cycle; `--trials 20` put 10 in a task."""
    proposals = [
        Proposal(trial_id=f"c001-t{i:02d}", number=i, cycle=1, params={}, seed=i, source="test")
        for i in range(20)
    ]
    groups = group_trials(proposals, 20, most=SMOKE.budget.trials_per_cycle)
    assert max(len(g) for g in groups) == SMOKE.budget.trials_per_cycle
    assert [p for g in groups for p in g] == proposals


def test_the_light_steps_import_neither_torch_nor_lightning() -> None:
    """join, gate, decide, and a measure task with nothing to measure; nor the `anthropic` SDK,
    which only the start step's proposers need (it cost every later step about a second)."""
    code = (
        "import sys\n"
        "import factory_lib.cycle.plan, factory_lib.cycle.close, factory_lib.runs.client\n"
        "from factory_lib.cycle.close import MeasureJob\n"
        "from factory_lib.cycle.measure import run_job\n"
        "run_job(None, MeasureJob('none'), None)\n"
        "heavy = sorted(m for m in ('torch', 'lightning', 'anthropic') if m in sys.modules)\n"
        "print(','.join(heavy) or 'light')\n"
    )
    assert _printed_by(code) == "light"


def test_loading_splitting_and_scoring_the_bundled_data_import_no_scikit_learn() -> None:
    """The start step and every train task load and split the data and score trials; importing
    scikit-learn for that cost each about half a second (factory_lib.data.bundled, .shuffle)."""
    code = (
        "import sys\n"
        "from factory_lib.objective import load_objective\n"
        "from factory_lib.data.splits import load_splits\n"
        "import factory_lib.evaluate\n"
        "objective = load_objective('objectives/digits.yaml')\n"
        "splits = load_splits(objective.data, objective.task)\n"
        "print('sklearn' in sys.modules)\n"
    )
    assert _printed_by(code) == "False"


def _printed_by(code: str) -> str:
    """What `code` prints, run by a fresh interpreter (so only its own imports count)."""
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.strip()
