"""The analysis layer on hand-made records: leaderboard, progress, Pareto, proposers, export."""

from __future__ import annotations

import math
from pathlib import Path

import optuna
import pytest

from factory_lib.explore import analysis
from factory_lib.explore.analysis import CycleView, ParetoAxis
from factory_lib.objective import Objective, load_objective
from factory_lib.records import TrialRecord
from factory_lib.registry.gate import Champion, PromotionDecision
from tests.conftest import ROOT
from tests.records import record


@pytest.fixture(scope="module")
def smoke() -> Objective:
    return load_objective(ROOT / "objectives" / "smoke.yaml")


def _from(rec: TrialRecord, source: str) -> TrialRecord:
    proposal = rec.proposal.model_copy(update={"source": source, "rationale": f"by {source}"})
    return rec.model_copy(update={"result": rec.result.model_copy(update={"proposal": proposal})})


@pytest.fixture(scope="module")
def history(smoke: Objective) -> tuple[TrialRecord, ...]:
    """Two cycles: an LLM-made trial among Optuna's, one failure, one over the size limit."""
    return (
        record(smoke, 0, val=0.80, test=0.78, params=900),
        record(smoke, 1, val=0.90, test=0.88, params=3000),
        record(smoke, 2, status="failed"),
        _from(record(smoke, 3, cycle=2, val=0.85, test=0.86, params=400), "llm:claude"),
        record(smoke, 4, cycle=2, val=0.95, test=0.97, params=9000),  # params > 5000
        record(smoke, 5, cycle=2, val=0.92, test=0.90, params=2000),
    )


def test_leaderboard_ranks_eligible_trials_by_validation_reward(history) -> None:
    board = analysis.leaderboard(history)
    assert list(board["trial_id"]) == [
        "c002-t05",
        "c001-t01",
        "c002-t03",
        "c001-t00",
        "c001-t02",  # failed and infeasible trials come last, unranked, in trial order
        "c002-t04",
    ]
    assert list(board["rank"].iloc[:4]) == [1, 2, 3, 4]
    assert board["rank"].iloc[4:].isna().all()
    top = board.iloc[0]
    assert (top["source"], top["status"], top["val_accuracy"], top["test_accuracy"]) == (
        "optuna:tpe",
        "ok",
        0.92,
        0.90,
    )
    assert top["n_params"] == 2000 and top["param_lr"] == pytest.approx(0.06)
    failed = board.set_index("trial_id").loc["c001-t02"]
    assert failed["cause"] == "planted" and math.isnan(failed["val_reward"])
    assert "params <= 5000" in board.set_index("trial_id").loc["c002-t04", "violations"]


def test_best_so_far_by_trial_and_by_cycle(history) -> None:
    by_trial = analysis.best_so_far(history)
    assert list(by_trial["best_val_reward"].fillna(-1)) == [0.80, 0.90, 0.90, 0.90, 0.90, 0.92]
    by_cycle = analysis.best_by_cycle(history)
    assert by_cycle.to_dict("list") == {
        "cycle": [1, 2],
        "trials": [3, 3],
        "best_val_reward_this_cycle": [0.90, 0.92],
        "best_val_reward_so_far": [0.90, 0.92],
    }
    assert [r.trial_id for r in analysis.improvements(history)] == [
        "c001-t00",
        "c001-t01",
        "c002-t05",
    ]


def test_pareto_front_keeps_only_undominated_feasible_trials(history, smoke) -> None:
    axes = analysis.default_pareto_axes(smoke)
    assert axes == (ParetoAxis("accuracy", "maximize"), ParetoAxis("params", "minimize"))
    front = analysis.pareto_front(history, axes)
    # c001-t00 (0.80, 900) is dominated by c002-t03 (0.85, 400); c001-t01 (0.90, 3000) by
    # c002-t05 (0.92, 2000); c002-t04 breaks a constraint and may not be on the front at all.
    assert sorted(front["trial_id"]) == ["c002-t03", "c002-t05"]
    by_latency = analysis.pareto_front(history, [axes[0], analysis.axis("latency_ms")])
    assert list(by_latency["trial_id"]) == ["c002-t05"]  # equal latencies: accuracy decides
    with pytest.raises(ValueError, match="two axes"):
        analysis.pareto_front(history, axes[:1])
    with pytest.raises(ValueError, match="unknown metric"):
        analysis.axis("speed")


def test_proposer_stats_group_by_source(history) -> None:
    stats = analysis.proposer_stats(history).set_index("source")
    assert list(stats.index) == ["optuna:tpe", "llm:claude"]
    tpe, llm = stats.loc["optuna:tpe"], stats.loc["llm:claude"]
    assert (tpe["trials"], tpe["ok"], tpe["failed"], tpe["pruned"], tpe["feasible"]) == (
        5,
        4,
        1,
        0,
        3,
    )
    assert tpe["best_val_reward"] == 0.92 and tpe["improvements"] == 3
    assert (llm["trials"], llm["ok"], llm["best_val_reward"], llm["improvements"]) == (
        1,
        1,
        0.85,
        0,
    )
    assert tpe["train_seconds"] == 4.0  # tests.records gives each completed trial 1 s


def _view(smoke, cycle, history, decision, champion) -> CycleView:
    records = tuple(r for r in history if r.proposal.cycle == cycle)
    return CycleView(smoke, cycle, records, history, decision, champion, stale_cycles=0)


def test_cycle_table_lineage_and_budget(history, smoke) -> None:
    first = Champion(record=history[1], promoted_in_cycle=1, metric="accuracy", test_value=0.88)
    second = Champion(record=history[5], promoted_in_cycle=2, metric="accuracy", test_value=0.90)
    cycles = [
        _view(
            smoke,
            1,
            history[:3],
            PromotionDecision(status="promoted", reason="first", challenger="c001-t01"),
            first,
        ),
        _view(
            smoke,
            2,
            history,
            PromotionDecision(
                status="promoted",
                reason="better",
                challenger="c002-t05",
                champion="c001-t01",
                delta=0.02,
            ),
            second,
        ),
    ]
    table = analysis.cycle_table(cycles)
    assert table[["cycle", "trials", "ok", "failed", "decision", "champion"]].to_dict("list") == {
        "cycle": [1, 2],
        "trials": [3, 3],
        "ok": [2, 3],
        "failed": [1, 0],
        "decision": ["promoted", "promoted"],
        "champion": ["c001-t01", "c002-t05"],
    }
    assert list(table["best_val_reward_so_far"]) == [0.90, 0.92]
    lineage = analysis.champion_lineage(cycles)
    assert list(lineage["trial_id"]) == ["c001-t01", "c002-t05"]
    assert list(lineage["parent"].fillna("-")) == ["-", "c001-t01"]
    budget = analysis.budget_status(cycles[1])
    assert (budget.cycles_used, budget.cycles_left, budget.trials_total) == (2, 48, 6)
    assert budget.train_seconds_cycle == 3.0 and budget.train_seconds_total == 5.0


def test_find_trial(history) -> None:
    assert analysis.find_trial(history, "c002-t03").proposal.source == "llm:claude"
    with pytest.raises(LookupError, match="no trial 'c009-t00'"):
        analysis.find_trial(history, "c009-t00")


def test_export_optuna_round_trip(history, smoke, tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'smoke.db'}"
    analysis.export_optuna(smoke, history, storage)
    study = optuna.load_study(study_name="smoke", storage=storage)
    trials = {t.user_attrs["trial_id"]: t for t in study.trials}
    assert sorted(trials) == sorted(r.trial_id for r in history)
    for r in history:
        t = trials[r.trial_id]
        expected = optuna.trial.TrialState.COMPLETE if r.status == "ok" else "FAIL"
        assert t.state == expected or t.state.name == expected
        assert t.params == {k: v for k, v in r.proposal.params.items() if k in smoke.search_space}
        assert t.value == (r.val_reward if r.status == "ok" else None)
    assert study.best_trial.user_attrs["trial_id"] == "c002-t05"  # the infeasible one cannot win
    with pytest.raises(optuna.exceptions.DuplicatedStudyError):
        analysis.export_optuna(smoke, history, storage)


def test_a_summary_counts_each_status_apart_and_labels_each_number(history, smoke) -> None:
    """Pruned is not failed; this cycle's best is not the best so far; one run is not a mean."""
    pruned = record(smoke, 6, cycle=3, status="pruned")
    late = record(smoke, 7, cycle=3, val=0.91, test=0.93, params=1000)
    everything = (*history, pruned, late)
    champion = Champion(
        record=history[5],
        promoted_in_cycle=2,
        metric="accuracy",
        test_value=0.90,
        seed_values=(0.90, 0.86, 0.89),
    )
    decision = PromotionDecision(status="regressed", reason="worse", challenger="c003-t07")
    summary = _view(smoke, 3, everything, decision, champion).summary
    assert summary.counts.model_dump() == {
        "ok": 1,
        "pruned": 1,
        "failed": 0,
        "diverged": 0,
        "timeout": 0,
    }
    assert (summary.best_val_reward_this_cycle, summary.best_val_reward_so_far) == (0.91, 0.92)
    assert summary.champion is not None
    assert (summary.champion.test_one_run, summary.champion.seeds) == (0.90, 3)
    assert summary.champion.test_mean == pytest.approx(0.8833333)
    assert summary.line() == (
        "cycle 3: 2 trials (1 ok, 1 pruned); best val reward this cycle 0.9100; "
        "best val reward so far 0.9200; decision regressed; champion c002-t05: "
        "test accuracy (one run) 0.9000; test accuracy (mean over 3 seeds) 0.8833"
    )
    row = analysis.cycle_table([_view(smoke, 3, everything, decision, champion)]).iloc[0]
    assert (row["ok"], row["pruned"], row["failed"], row["champion_seeds"]) == (1, 1, 0, 3)
    one_seed = champion.model_copy(update={"seed_values": (0.90,)})
    alone = _view(smoke, 3, everything, decision, one_seed).summary
    assert alone.champion_text() == "champion c002-t05: test accuracy (one run) 0.9000"
