"""The search benchmarks run as documented, on a shrunk budget; they assert no timing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_benchmark(script: str, *args: str) -> Any:
    """A benchmark's JSON report (the first thing it prints)."""
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return json.JSONDecoder().raw_decode(out)[0]


@pytest.mark.parametrize("tasks", ["synthetic", pytest.param("digits-mlp", marks=pytest.mark.slow)])
def test_every_method_starts_from_the_same_initial_design(tasks: str, tmp_path: Path) -> None:
    # With a budget of exactly the initial design, every method has tried the same 8 points.
    report = run_benchmark(
        "search.py", "--tasks", tasks, "--seeds", "2", "--trials", "8", "--plots", str(tmp_path)
    )
    for task, r in report.items():
        rows = r["methods"].values()
        assert len({json.dumps([row["median_best"], row["epochs"]]) for row in rows}) == 1, task
        assert (tmp_path / f"search-{task}.png").stat().st_size > 0


@pytest.mark.slow
def test_pruning_benchmark_compares_arms_and_cycles() -> None:
    report = run_benchmark(
        "pruning.py", "--seeds", "1", "--cycles", "2", "--max-epochs", "8", "--rungs", "2", "8"
    )
    off, on = report["arms"]["off"], report["arms"]["percentile"]
    halving = report["arms"]["halving"]
    assert off["pruned_trials"] == 0
    assert on["per_seed_epochs"][0] <= off["per_seed_epochs"][0]
    # Every trial trains its first rung (2 epochs); about a third continue from there to 8.
    assert 16 * 2 < halving["per_seed_epochs"][0] < 0.6 * off["per_seed_epochs"][0]
    assert len(report["cycle_2_vs_1"]["per_seed_difference_points"]) == 1


@pytest.mark.slow
def test_isolation_benchmark_times_every_arm() -> None:
    report = run_benchmark("isolation.py", "--trials", "1", "--repeats", "1")
    assert set(report["median_group_s"]["1"]) == {"in-process", "fork", "spawn"}


@pytest.mark.slow
def test_data_benchmark_trains_one_epoch_over_every_streamed_row() -> None:
    report = run_benchmark("data.py", "--quick")
    assert report["status"] == "ok" and report["epochs"] == 1
    # The check pass and the epoch each read the whole training file, once.
    assert report["check_rows"] == report["epoch_rows"] == report["train_rows"]
    # float32 x and int64 y, after two 128-byte .npy headers: the file holds every row.
    assert report["train_bytes"] == report["train_rows"] * (report["features"] * 4 + 8) + 2 * 128
    # The task and its trial worker were both measured, and the largest is one of them.
    assert report["most_processes"] >= 2
    assert 0 < report["peak_largest_process_rss_mib"] < report["peak_rss_mib"]
    assert report["val_accuracy"] > 1 / 10  # the rule is learnable: better than chance


@pytest.mark.slow
def test_history_benchmark_measures_each_chained_cycle_outside_training() -> None:
    report = run_benchmark("history.py", "--cycles", "2", "--trials", "1", "--epochs", "1")
    cycles = report["cycles"]
    assert [c["cycle"] for c in cycles] == [1, 2]  # chained: the second continued the first
    assert [c["history"] for c in cycles] == [1, 2]
    for c in cycles:
        assert 0 < c["training_s"] < c["wall_s"]
        assert c["outside_training_s"] == pytest.approx(c["wall_s"] - c["training_s"], abs=0.02)
        assert {"start", "train", "join", "end"} <= set(c["step_seconds"])
    assert report["late_over_early"] is not None


@pytest.mark.slow
def test_overhead_runs_the_cycle_and_the_baseline_side_by_side() -> None:
    report = run_benchmark(
        "overhead.py",
        "--vs-baseline",
        "--pairs",
        "1",
        "--trials",
        "2",
        "--epochs",
        "2",
        "--objective",
        str(ROOT / "objectives" / "smoke.yaml"),
    )
    factory, baseline = report["factory"], report["baseline"]
    [cycle], [script] = factory["cycles"], baseline["cycles"]
    assert script["trials"] == 2 and len(script["train_seconds"]) == 2
    assert report["factory_over_baseline"] == round(cycle["wall_s"] / script["wall_s"], 2)
    assert report["pair_ratios"] == [report["factory_over_baseline"]]
    assert report["seeds"] == [0]  # pair i samples with proposers.seed i on both arms
    # the fixed cost is the wall less the training of the longest train task
    assert 0 < cycle["longest_task_train_s"] < cycle["wall_s"]
    assert report["factory_median_fixed_s"] == round(
        cycle["wall_s"] - cycle["longest_task_train_s"], 1
    )
    assert set(factory["median_step_seconds"]) >= {"start", "train", "join", "end"}


@pytest.mark.slow
def test_serve_benchmark_measures_http_beside_in_process_and_a_hot_swap() -> None:
    report = run_benchmark("serve.py", "--requests", "40", "--clients", "1", "2")
    for label in ("batching", "no batching"):
        for clients in ("1", "2"):
            run = report["http"][label][clients]
            assert run["requests"] == 40 and run["statuses"] == {"200": 40}
            assert run["p50_ms"] <= run["p99_ms"]
    assert [r["rows_per_call"] for r in report["in_process"]] == [1, 64]
    swap = report["hot_swap"]
    assert swap["swapped"] and swap["failed"] == 0 and swap["models"] == ["c001-t00", "c002-t00"]
    malformed = report["malformed"]
    assert malformed["requests"] == 1000 and malformed["all_4xx"] and malformed["healthy_after"]
