"""Exporting history to Optuna's storage: curves as intermediate values, and again on update."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from factory_lib.explore.analysis import export_optuna
from factory_lib.objective import load_objective
from tests.conftest import ROOT
from tests.records import record

SMOKE = load_objective(ROOT / "objectives" / "smoke.yaml")


def test_export_optuna_again_adds_only_what_the_study_lacks(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'smoke.db'}"
    cycle1 = [record(SMOKE, n, val=0.5 + n / 10, test=0.1) for n in range(3)]
    cycle2 = [record(SMOKE, n, val=0.4 + n / 20, test=0.1, cycle=2) for n in range(3, 5)]
    study, added = export_optuna(SMOKE, cycle1, storage)
    assert added == 3
    with pytest.raises(optuna.exceptions.DuplicatedStudyError):
        export_optuna(SMOKE, cycle1, storage)
    study, added = export_optuna(SMOKE, [*cycle1, *cycle2], storage, update=True)
    assert added == 2
    _, added = export_optuna(SMOKE, [*cycle1, *cycle2], storage, update=True)
    assert added == 0
    study = optuna.load_study(study_name="smoke", storage=storage)
    history = [*cycle1, *cycle2]
    assert [t.user_attrs["trial_id"] for t in study.trials] == [r.trial_id for r in history]
    for trial, r in zip(study.trials, history, strict=True):
        assert trial.intermediate_values == dict(enumerate(r.result.curve))


def test_update_refuses_a_study_the_factory_did_not_write(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'other.db'}"
    other = optuna.create_study(study_name="smoke", storage=storage, direction="maximize")
    other.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)
    with pytest.raises(ValueError, match="holds trials this factory did not write"):
        export_optuna(SMOKE, [record(SMOKE, 0)], storage, update=True)


def test_export_mlflow_into_a_file_store_reads_back_with_mlflows_client(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow
    from mlflow import MlflowClient

    from factory_lib.explore.trackers import export_mlflow

    history = [
        record(SMOKE, 0, val=0.6, test=0.55),
        record(SMOKE, 1, status="failed"),
        record(SMOKE, 2, val=0.8, test=0.75),
    ]
    store = tmp_path / "mlruns"
    done = export_mlflow(SMOKE, history[:2], None, str(store))
    assert (done.added, done.kept) == (2, 0)
    done = export_mlflow(SMOKE, history, "c001-t02", str(store))  # again, one cycle on
    assert (done.added, done.kept) == (1, 2)

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    mlflow.set_tracking_uri(store.as_uri())
    runs = MlflowClient().search_runs(
        [mlflow.get_experiment_by_name("smoke").experiment_id], order_by=["tags.trial_id"]
    )
    assert [run.data.tags["trial_id"] for run in runs] == ["c001-t00", "c001-t01", "c001-t02"]
    ok, failed, best = runs
    assert ok.info.status == "FINISHED" and failed.info.status == "FAILED"
    assert failed.data.tags["cause"] == "planted" and failed.data.tags["status"] == "failed"
    assert ok.data.metrics["val_accuracy"] == pytest.approx(0.6)
    assert ok.data.metrics["test_accuracy"] == pytest.approx(0.55)
    assert ok.data.params == {"lr": "0.01", "width": "8", "depth": "1", "seed": "0", "epochs": "3"}
    assert [run.data.tags["champion"] for run in runs] == ["false", "false", "true"]
    curve = MlflowClient().get_metric_history(best.info.run_id, "val_accuracy_by_epoch")
    assert [(m.step, m.value) for m in curve] == list(enumerate(history[2].result.curve))
