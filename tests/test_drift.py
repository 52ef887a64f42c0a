"""Drift: a shifted copy of a bundled data set warrants a new cycle; the same data does not."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from factory_lib.data import load_splits
from factory_lib.drift import check_drift, load_labelled
from factory_lib.objective import load_objective
from tests.conftest import factory_cli, run_cycle, write_objective


def test_labelled_files_load(tmp_path: Path) -> None:
    x, y = np.arange(6, dtype=np.float32).reshape(3, 2), np.array([0, 1, 0])
    np.savez(tmp_path / "d.npz", x=x, y=y)
    (tmp_path / "d.csv").write_text("a,b,label\n0,1,0\n2,3,1\n4,5,0\n")
    for name in ("d.npz", "d.csv"):
        lx, ly = load_labelled(tmp_path / name)
        assert lx.tolist() == x.tolist() and ly.tolist() == y.tolist()
    np.savez(tmp_path / "bad.npz", features=x)
    with pytest.raises(ValueError, match="needs arrays 'x' and 'y'"):
        load_labelled(tmp_path / "bad.npz")


@pytest.mark.slow
def test_shifted_data_warrants_a_cycle_and_unshifted_does_not(tmp_path: Path) -> None:
    objective_path = write_objective(
        tmp_path, "drift", budget={"trials_per_cycle": 2, "max_epochs": 10}
    )
    run_cycle(objective_path, fresh=True)
    objective = load_objective(objective_path)
    splits = load_splits(objective.data, objective.task)
    x, y = splits.raw_x["test"], splits.raw_y["test"]

    same = check_drift("drift", x, y)
    assert not same.warranted, same.reasons
    assert same.now == pytest.approx(same.held_out)  # the held-out split itself: no change

    shifted = x + 3 * splits.raw_x["train"].std(axis=0)
    report = check_drift("drift", shifted, y)
    assert report.warranted
    assert len(report.drifted) == 4 and report.features_tested == 4
    assert any("features drifted" in r for r in report.reasons)

    np.savez(tmp_path / "shifted.npz", x=shifted, y=y)
    proc = factory_cli(
        "drift", "--objective", "drift", "--data", str(tmp_path / "shifted.npz"), "--json"
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
