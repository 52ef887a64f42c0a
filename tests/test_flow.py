"""Real cycles through metaflow.Runner on the smoke objective, asserted through the Client API."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from factory_lib.cycle.close import MeasureJob
from factory_lib.data.splits import load_splits
from factory_lib.runs.champions import load_champion
from factory_lib.runs.client import objective_tag
from tests.conftest import (
    FLOW,
    ROOT,
    run_and_kill_after_first,
    run_cycle,
    trained_in,
    write_objective,
)

pytestmark = pytest.mark.slow


def _end(run):
    return run["end"].task.data


def _comparable(record) -> tuple:
    """What a record must reproduce exactly (timings and task paths aside)."""
    r = record.result
    ev = r.evaluation
    return (
        r.proposal,
        r.status,
        r.curve,
        r.weights_sha,
        ev and (ev.val, ev.test, ev.params),
        record.val_reward,
        record.feasible,
    )


def test_two_chained_cycles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # With an `llm` section but no key, the cycles run on Optuna alone and say so, once each.
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    objective = write_objective(
        tmp_path, "flow-chain", proposers={"llm": {"model": "claude-sonnet-4-6"}}
    )
    first_run = run_cycle(objective, fresh=True)
    first = _end(first_run)
    second_run = run_cycle(objective)
    second = _end(second_run)
    logs = "".join(step.task.stdout for step in first_run)
    assert logs.count("LLM proposer off: ANTHROPIC_API_KEY is not set") == 1

    assert (first.cycle, second.cycle) == (1, 2)
    assert objective_tag("flow-chain") in second_run.tags
    n = len(first.history)
    assert n == 3 and len(second.history) == 6
    assert second.history[:n] == first.history  # earlier records unchanged, in order
    keys = [r.proposal.key for r in second.history]
    assert len(set(keys)) == len(keys)  # no proposal repeats one already tried
    assert [r.proposal.number for r in second.history] == list(range(6))
    assert all(r.proposal.source == "optuna:tpe" for r in second.history)
    assert second.decision.status in ("promoted", "not_significant", "regressed")
    assert second.champion is not None

    # The champion loads without the flow and predicts what its record says it scored.
    model = load_champion("flow-chain")
    splits = load_splits(model.package.objective.data, "classification")
    accuracy = float(np.mean(model.predict(splits.raw_x["test"]) == splits.raw_y["test"]))
    assert accuracy == pytest.approx(second.champion.test_value)


def test_failed_trials_are_records_and_siblings_survive(tmp_path: Path) -> None:
    objective = write_objective(
        tmp_path,
        "flow-failures",
        model={"builder": "tests.builders:planted"},
        search_space={
            "behaviour": {"type": "categorical", "choices": ["ok", "raise", "nan", "hang"]}
        },
        budget={"trials_per_cycle": 4, "trial_timeout_s": 6},
        proposers={"enqueue": [{"behaviour": b} for b in ("ok", "raise", "nan", "hang")]},
    )
    first = _end(run_cycle(objective, fresh=True))
    statuses = {r.proposal.params["behaviour"]: r for r in first.history}
    assert {b: r.status for b, r in statuses.items()} == {
        "ok": "ok",
        "raise": "failed",
        "nan": "diverged",
        "hang": "timeout",
    }
    assert "planted failure" in statuses["raise"].result.cause
    assert first.champion is not None and first.champion.trial_id == statuses["ok"].trial_id

    # A cycle in which every trial fails still completes, records all, keeps the champion.
    second_run = run_cycle(objective, env={"FACTORY_TEST_FAIL_ALL": "1"}, trials=2)
    second = _end(second_run)
    assert second.cycle == 2
    assert second.history[:4] == first.history
    new = second.history[4:]
    assert len(new) == 2 and all(r.status == "failed" for r in new)
    assert second.decision.status == "infeasible"
    assert second.champion == first.champion
    assert second.champion_package == first.champion_package
    # no challenger, so nothing to measure: the one measure task trains nothing
    assert second_run["gate"].task.data.measure_jobs == [MeasureJob("none")]
    assert trained_in(second_run["measure"].task) == []


def test_resume_after_kill_mid_foreach_gives_the_same_records(tmp_path: Path) -> None:
    from metaflow import Flow, Runner, namespace

    reference = _end(run_cycle(write_objective(tmp_path, "flow-reference"), fresh=True))

    objective = write_objective(tmp_path, "flow-resume")
    killed = run_and_kill_after_first("train", objective)
    namespace(None)
    assert not Flow("CycleFlow")[killed].successful

    # resume takes the objective of the run it resumes (Metaflow refuses --config here)
    with Runner(FLOW, show_output=False, cwd=str(ROOT)).resume(origin_run_id=killed) as running:
        assert running.status == "successful", running.stderr[-3000:]
        resumed = running.run
    cloned = [t for t in resumed["train"] if t.origin_pathspec is not None]
    assert 1 <= len(cloned) < 3  # the finished trial was reused, the rest ran again
    data = _end(resumed)
    assert [_comparable(r) for r in data.history] == [_comparable(r) for r in reference.history]
    assert data.champion.trial_id == reference.champion.trial_id


def test_the_first_champion_is_re_measured_where_its_trials_trained(tmp_path: Path) -> None:
    # One train task: its best trial is the cycle's challenger, so the gate finds the first
    # champion re-trained over seeds and exported already, and the measure step trains nothing.
    objective = write_objective(
        tmp_path,
        "flow-measure-in-train",
        budget={"trials_per_cycle": 2, "group_size": 2},
        promotion={"seeds": 3},
    )
    run = run_cycle(objective, fresh=True)
    end = _end(run)
    [train] = run["train"]
    challenger = end.champion.trial_id
    assert sorted(trained_in(train)) == sorted(
        [r.trial_id for r in end.records] + [f"{challenger}-s1", f"{challenger}-s2"]
    )
    assert run["gate"].task.data.measure_jobs == [MeasureJob("none")]
    assert trained_in(run["measure"].task) == []
    assert end.decision.status == "promoted" and len(end.champion.seed_values) == 3
    assert end.exports is not None and end.exports.trial_id == challenger
    assert set(end.model_card.exports.max_abs_diff) == {"torchscript", "onnx"}
