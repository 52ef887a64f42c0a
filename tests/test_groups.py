"""Trial groups and fused trials, on the CPU: every trial keeps its own outcome."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from factory_lib.cycle.close import MeasureJob
from factory_lib.cycle.propose import group_trials
from factory_lib.data.module import build_trial_data
from factory_lib.objective import load_objective
from factory_lib.propose.base import make_proposal
from factory_lib.train.fused import fuse_key, train_fused
from factory_lib.train.group import train_group
from factory_lib.train.trial import run_trial
from tests.conftest import ROOT

SMOKE = load_objective(ROOT / "objectives" / "smoke.yaml").with_overrides(epochs=6)


def _proposals(objective, *params: dict) -> list:
    return [make_proposal(objective, 1, i, i, p, "test", "") for i, p in enumerate(params)]


def test_fused_trials_equal_the_same_trials_trained_alone() -> None:
    proposals = _proposals(
        SMOKE,
        {"lr": 0.01, "width": 16, "depth": 1},
        {"lr": 0.05, "width": 16, "depth": 1, "weight_decay": 0.01},
        {"lr": 0.003, "width": 16, "depth": 1},
    )
    assert len({fuse_key(SMOKE, p.params, SMOKE.budget.max_epochs) for p in proposals}) == 1
    data = build_trial_data(SMOKE)
    fused = train_fused(SMOKE, proposals, data)
    alone = [run_trial(SMOKE, p, data) for p in proposals]
    for f, a in zip(fused, alone, strict=True):
        assert f.result.status == a.result.status == "ok", (f.result.cause, a.result.cause)
        assert f.result.epochs == a.result.epochs
        np.testing.assert_allclose(f.result.curve, a.result.curve, atol=1e-4)
        assert f.result.evaluation.test == pytest.approx(a.result.evaluation.test, abs=1e-4)
        assert f.result.evaluation.params == a.result.evaluation.params


def test_one_diverging_trial_does_not_touch_its_fused_siblings() -> None:
    proposals = _proposals(
        SMOKE, {"lr": 0.01, "width": 8, "depth": 1}, {"lr": float("inf"), "width": 8, "depth": 1}
    )
    fused = train_fused(SMOKE, proposals, build_trial_data(SMOKE))
    assert [o.result.status for o in fused] == ["ok", "diverged"]
    assert fused[0].weights is not None and fused[1].weights is None


def test_a_group_records_every_outcome() -> None:
    planted = SMOKE.model_copy(
        update={
            "model": SMOKE.model.model_copy(update={"builder": "tests.builders:planted"}),
            "budget": SMOKE.budget.model_copy(update={"trial_timeout_s": 5.0}),
        }
    )
    behaviours = ["ok", "raise", "nan", "hang", "ok"]
    proposals = _proposals(
        planted, *({"behaviour": b, "width": 8 + i} for i, b in enumerate(behaviours))
    )
    outputs = train_group(planted, proposals, task_pathspec="CycleFlow/1/train/2")
    assert [o.result.status for o in outputs] == ["ok", "failed", "diverged", "timeout", "ok"]
    assert all(o.result.task_pathspec == "CycleFlow/1/train/2" for o in outputs)


def test_group_mixes_fused_and_alone_trials_in_order() -> None:
    proposals = _proposals(
        SMOKE,
        {"lr": 0.01, "width": 8, "depth": 1},
        {"lr": 0.02, "width": 12, "depth": 2},  # a shape of its own: trains alone
        {"lr": 0.03, "width": 8, "depth": 1},
    )
    outputs = train_group(SMOKE, proposals)
    assert [o.result.proposal.trial_id for o in outputs] == [p.trial_id for p in proposals]
    assert all(o.result.status == "ok" for o in outputs)


def test_auto_groups_give_each_core_one_task(monkeypatch) -> None:
    proposals = _proposals(SMOKE, *({"lr": 0.01 * (i + 1)} for i in range(8)))
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    assert [len(g) for g in group_trials(proposals, "auto")] == [4, 4]
    assert [len(g) for g in group_trials(proposals, 3)] == [3, 3, 2]
    assert group_trials([], "auto") == []


def test_a_group_best_that_another_group_beat_is_left_unmeasured(tmp_path) -> None:
    from factory_lib.cycle.measure import GroupBests
    from tests.records import record

    objective = load_objective(ROOT / "objectives" / "smoke.yaml")
    first, second, third = (GroupBests(tmp_path / "run", own) for own in (0, 1, 2))
    good, poor = record(objective, 3, val=0.95), record(objective, 1, val=0.80)
    assert first.beaten(good) is None  # nothing posted yet: re-measure as if alone
    first.post(good)
    assert first.beaten(good) is None  # its own post does not count
    second.post(poor)
    assert second.beaten(poor) == good.trial_id and first.beaten(good) is None
    # a tie goes to the earlier trial, as challenger_of breaks it
    tie = record(objective, 0, val=0.95)
    third.post(tie)
    assert first.beaten(good) == tie.trial_id and third.beaten(tie) is None
    first.clear()
    assert not (tmp_path / "run").exists() and third.beaten(poor) is None


@pytest.mark.slow
def test_only_the_best_groups_champion_candidate_is_re_measured(tmp_path) -> None:
    from tests.conftest import run_cycle, trained_in, write_objective

    # Two train tasks one after the other: the second finds the first's best posted, ranking
    # above its own, and leaves its own unmeasured; the gate has nothing left to list.
    good, poor = {"lr": 0.05, "width": 32, "depth": 1}, {"lr": 0.0001, "width": 2, "depth": 1}
    objective = write_objective(
        tmp_path,
        "groups-best",
        budget={"trials_per_cycle": 2, "group_size": 1},
        promotion={"seeds": 3},
        proposers={"enqueue": [good, poor]},
    )
    run = run_cycle(objective, fresh=True, max_workers=1)
    end = run["end"].task.data
    first, second = sorted(run["train"], key=lambda t: t.index)
    assert end.champion.trial_id == "c001-t00"
    assert sorted(trained_in(first)) == ["c001-t00", "c001-t00-s1", "c001-t00-s2"]
    assert trained_in(second) == ["c001-t01"]
    assert "c001-t01, this group's best, is not re-measured: c001-t00" in second.stdout
    assert run["gate"].task.data.measure_jobs == [MeasureJob("none")]
    assert len(end.champion.seed_values) == 3


def _sleep_in_a_worker(pid_file) -> int:
    """A stand-in for a re-training: it starts a process of its own, as train_group does."""
    import multiprocessing
    import time

    worker = multiprocessing.get_context("fork").Process(target=time.sleep, args=(60,))
    worker.start()
    pid_file.write_text(str(worker.pid))
    worker.join()
    return 1


def test_a_re_measurement_stops_once_another_group_posts_a_better_best(tmp_path) -> None:
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a train task: beside forks only then
    try:
        _stop_when_beaten(tmp_path)
    finally:
        torch.set_num_threads(threads)


def _stop_when_beaten(tmp_path: Path) -> None:
    import threading
    import time
    from functools import partial

    from factory_lib.cycle.measure import GroupBests, beside
    from tests.records import record

    objective = load_objective(ROOT / "objectives" / "smoke.yaml")
    mine, other = GroupBests(tmp_path / "run", 0), GroupBests(tmp_path / "run", 1)
    best, better = record(objective, 1, val=0.8), record(objective, 0, val=0.9)
    mine.post(best)
    pid_file = tmp_path / "worker.pid"
    work = beside(partial(_sleep_in_a_worker, pid_file), lambda exit_code: None, niceness=5)
    threading.Timer(1.0, other.post, args=(better,)).start()
    started = time.monotonic()
    assert mine.wait_unless_beaten(best, [work]) == better.trial_id
    assert time.monotonic() - started < 30  # not the minute the work would take
    work.stop()
    assert work.process is not None and not work.process.is_alive()
    status = Path(f"/proc/{pid_file.read_text()}/status")
    assert not status.exists()  # its own worker ended (and was reaped) with it
    # nothing posted that beats it: the wait is the work's own
    quick = beside(lambda: 7, lambda exit_code: None)
    assert GroupBests(tmp_path / "other-run", 0).wait_unless_beaten(best, [quick]) is None
    assert quick() == 7
