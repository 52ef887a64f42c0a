"""Trial logs for the trackers people use: Lightning's CSV and TensorBoard loggers, real files."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from factory_lib.objective import load_objective
from factory_lib.runs.logs import write_logs
from factory_lib.train.tracking import trial_logs
from tests.conftest import ROOT, factory_cli, run_cycle, write_objective
from tests.records import result

SMOKE = load_objective(ROOT / "objectives" / "smoke.yaml")


def _with_logger(kind: str):
    return SMOKE.model_copy(update={"tracking": SMOKE.tracking.model_copy(update={"logger": kind})})


def _scalars(folder: Path, tag: str) -> list[tuple[int, float]]:
    events = EventAccumulator(str(folder))
    events.Reload()
    return [(e.step, e.value) for e in events.Scalars(tag)]


def test_csv_logs_hold_the_curve_the_params_and_the_final_metrics() -> None:
    ok, failed = result(0, val=0.8, test=0.7), result(1, status="failed")
    logs = trial_logs(SMOKE, [ok, failed])  # csv is the default
    assert sorted(logs) == ["c001-t00", "c001-t01"]
    assert sorted(logs["c001-t00"]) == ["hparams.yaml", "metrics.csv"]
    rows = list(csv.DictReader(io.StringIO(logs["c001-t00"]["metrics.csv"].decode())))
    curve = [float(r["val/accuracy"]) for r in rows if r["val/accuracy"]]
    assert curve == pytest.approx(list(ok.curve))
    assert float(rows[-1]["final/test_accuracy"]) == pytest.approx(0.7)
    hparams = logs["c001-t00"]["hparams.yaml"].decode()
    assert "trial_id: c001-t00" in hparams and "lr: 0.01" in hparams
    assert "status: failed" in logs["c001-t01"]["hparams.yaml"].decode()
    assert trial_logs(_with_logger("none"), [ok]) == {}


def test_tensorboard_logs_read_back_with_tensorboards_own_reader(tmp_path: Path) -> None:
    ok = result(0, val=0.8, test=0.7)
    write_logs(trial_logs(_with_logger("tensorboard"), [ok]), tmp_path)
    assert _scalars(tmp_path / "c001-t00", "val/accuracy") == [
        (i, pytest.approx(v)) for i, v in enumerate(ok.curve)
    ]


@pytest.mark.slow
def test_a_real_cycles_trials_log_to_tensorboard(tmp_path: Path) -> None:
    objective = write_objective(
        tmp_path, "tracking-tb", budget={"trials_per_cycle": 2}, tracking={"logger": "tensorboard"}
    )
    run = run_cycle(objective, fresh=True)
    records = run["end"].task.data.records
    done = factory_cli("logs", "--objective", "tracking-tb", str(tmp_path / "logs"))
    assert done.returncode == 0, done.stderr
    assert "(tensorboard logs)" in done.stdout and "tensorboard --logdir" in done.stdout
    for r in records:
        steps = _scalars(tmp_path / "logs" / r.trial_id, "val/accuracy")
        assert [v for _, v in steps] == pytest.approx(list(r.result.curve))
