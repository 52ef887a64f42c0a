"""Multi-fidelity: the promotion rule on constructed records, and trials that really continue
from their checkpoints (alone, fused, inside a task and across cycles)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import optuna
import pytest

from factory_lib.data.module import build_trial_data
from factory_lib.fidelity import promotions
from factory_lib.objective import FidelitySpec, ObjectiveError, load_objective, parse_objective
from factory_lib.propose.base import make_proposal
from factory_lib.records import Evaluation, TrialResult
from factory_lib.reward import score
from factory_lib.train.checkpoint import Checkpoint
from factory_lib.train.group import train_group
from factory_lib.train.trial import run_trial
from tests.conftest import ROOT, run_cycle, write_objective

SMOKE = load_objective(ROOT / "objectives" / "smoke.yaml")
# Early stopping is kept out of the way: these tests follow the rungs alone.
RUNGS = SMOKE.model_copy(
    update={
        "fidelity": FidelitySpec(rungs=(3, 9), eta=2),
        "budget": SMOKE.budget.model_copy(update={"max_epochs": 9, "early_stopping_patience": 9}),
    }
)
ALONE = {"lr": 0.02, "width": 16, "depth": 2, "dropout": 0.2}  # depth 2: not fusable with below


def _proposal(objective, number: int, **params):
    return make_proposal(objective, 1, number, number, params, "test", "")


def _record(number: int, accuracy: float, *, epochs: int = 3, resumable: bool = True):
    proposal = _proposal(RUNGS, number, lr=0.01 * (number + 1)).model_copy(
        update={"epochs": epochs}
    )
    metrics = {"accuracy": accuracy, "macro_f1": accuracy}
    evaluation = Evaluation(val=metrics, test=metrics, params=100, latency_ms=0.1, train_seconds=1)
    result = TrialResult(
        proposal=proposal,
        status="ok",
        evaluation=evaluation,
        curve=(accuracy,) * epochs,
        epochs=epochs,
        resumable=resumable,
        task_pathspec=f"CycleFlow/1/train/{number}",
    )
    return score(RUNGS, result)


def test_the_best_one_in_eta_of_a_rung_is_promoted_once() -> None:
    records = [_record(i, acc) for i, acc in enumerate([0.5, 0.9, 0.7, 0.8])]
    due = promotions(RUNGS, records, cycle=2)
    assert [p.continues for p in due] == ["c001-t01", "c001-t03"]  # best 2 of 4 (eta 2)
    first = due[0]
    assert (first.trial_id, first.epochs, first.cycle) == ("c001-t01-r1", 9, 2)
    assert first.checkpoint == "CycleFlow/1/train/1" and first.source == "fidelity"
    assert first.params == records[1].proposal.params and first.seed == records[1].proposal.seed
    continued = score(RUNGS, TrialResult(proposal=first, status="ok"))
    assert [p.continues for p in promotions(RUNGS, [*records, continued], 2)] == ["c001-t03"]
    # Fewer than eta trials at a rung promote nothing; nor does one without a checkpoint.
    assert promotions(RUNGS, records[:1], 2) == []
    assert promotions(RUNGS, [_record(0, 0.9, resumable=False), _record(1, 0.1)], 2) == []


def test_fidelity_is_validated_with_the_field_named() -> None:
    text = (ROOT / "objectives" / "smoke.yaml").read_text()
    with pytest.raises(ObjectiveError, match=r"fidelity\.rungs: .*ascending"):
        parse_objective(text + "fidelity: {rungs: [3, 2]}\n", "smoke.yaml")
    with pytest.raises(ObjectiveError, match=r"exceeds budget.max_epochs \(3\)"):
        parse_objective(text + "fidelity: {rungs: [2, 9]}\n", "smoke.yaml")


@pytest.mark.parametrize("params", [ALONE, {"lr": 0.02, "width": 16, "depth": 1}])
def test_a_continued_trial_equals_one_uninterrupted_fit(params: dict) -> None:
    data = build_trial_data(RUNGS)
    first = _proposal(RUNGS, 0, **params)
    assert first.epochs == 3
    parent = run_trial(RUNGS, first, data)
    assert parent.result.resumable and parent.checkpoint is not None
    assert parent.result.epochs == 3
    step = first.model_copy(
        update={"trial_id": "c001-t00-r1", "epochs": 9, "continues": "c001-t00"}
    )
    blob = parent.checkpoint
    continued = run_trial(RUNGS, step, data, checkpoint=lambda: blob).result
    whole = run_trial(RUNGS, first.model_copy(update={"epochs": 9}), data).result
    assert continued.status == whole.status == "ok", (continued.cause, whole.cause)
    assert (continued.epochs, continued.start_epoch) == (9, 3)
    assert continued.curve[:3] == parent.result.curve
    np.testing.assert_allclose(continued.curve, whole.curve, atol=1e-6)
    assert continued.evaluation.val == pytest.approx(whole.evaluation.val, abs=1e-6)
    assert not continued.resumable  # the last rung keeps no checkpoint


def test_fused_trials_keep_checkpoints_and_promote_inside_their_task() -> None:
    proposals = [
        _proposal(RUNGS, i, lr=lr, width=16, depth=1) for i, lr in enumerate([0.003, 0.05, 0.02])
    ]
    outputs = train_group(RUNGS, [*proposals, _proposal(RUNGS, 3, **ALONE)])
    ids = [o.result.proposal.trial_id for o in outputs]
    rung0 = outputs[:4]
    assert all(o.result.epochs == 3 and o.result.resumable for o in rung0)
    ranked = sorted(rung0, key=lambda o: -score(RUNGS, o.result).val_reward)
    assert len(outputs) == 6  # the best 2 of 4 continued here, after the group
    for out, parent in zip(outputs[4:], ranked[:2], strict=True):
        r = out.result
        assert r.proposal.continues == parent.result.proposal.trial_id
        assert ids[4:] == [f"{p.result.proposal.trial_id}-r1" for p in ranked[:2]]
        assert (r.status, r.epochs, r.start_epoch) == ("ok", 9, 3), r.cause
        assert r.curve[:3] == parent.result.curve
    # A fused trial's checkpoint is the one it would keep alone: weights, its own optimiser
    # state, early stopping. (Continuing is exact: see the test above; float noise of 1e-8
    # between fused and alone may grow over later epochs, as any two runs' would.)
    data = build_trial_data(RUNGS)
    for fused in rung0[:3]:
        alone = run_trial(RUNGS, fused.result.proposal, data)
        a, f = Checkpoint.from_bytes(alone.checkpoint), Checkpoint.from_bytes(fused.checkpoint)
        assert a.curve == pytest.approx(f.curve, abs=1e-6)
        assert (a.early_stopping_wait, a.early_stopping_best) == (
            f.early_stopping_wait,
            pytest.approx(f.early_stopping_best, abs=1e-6),
        )
        for name, tensor in a.net.items():
            np.testing.assert_allclose(tensor, f.net[name], atol=1e-6)
        for index, state in a.optimizer["state"].items():
            for key, value in state.items():
                np.testing.assert_allclose(value, f.optimizer["state"][index][key], atol=1e-6)
        assert a.optimizer["param_groups"] == f.optimizer["param_groups"]


def test_a_missing_checkpoint_fails_that_trial_alone() -> None:
    orphan = _proposal(RUNGS, 5, **ALONE).model_copy(
        update={"trial_id": "c001-t05-r1", "epochs": 9, "continues": "c001-t05"}
    )
    [out] = train_group(RUNGS, [orphan])
    assert out.result.status == "failed" and "no checkpoint of c001-t05" in out.result.cause


@pytest.mark.slow
def test_pruned_in_cycle_two_and_continued_from_cycle_one(tmp_path: Path) -> None:
    """Two real cycles: cycle 2 continues cycle 1's best trial from its stored checkpoint, and
    prunes a deliberately bad configuration against cycle 1's curves, keeping its curve."""
    good = [{"lr": 0.05, "width": 16 + i, "depth": 1} for i in range(3)]
    bad = {"lr": 0.001, "width": 4, "depth": 1}
    objective = write_objective(
        tmp_path,
        "fidelity",
        budget={
            "trials_per_cycle": 3,
            "max_epochs": 6,
            "early_stopping_patience": 6,
            "group_size": 1,
            "fuse": False,
        },
        fidelity={"rungs": [2, 6], "eta": 3},
        pruning={"rule": "percentile", "percentile": 50, "warmup_epochs": 2, "min_trials": 3},
        proposers={"enqueue": [*good, bad]},
    )
    # Cycle 1's trials also report their curves to a shared Optuna storage (a journal file).
    journal = tmp_path / "curves.journal"
    deployment = tmp_path / "deployment.yaml"
    deployment.write_text(f"optuna_storage: {journal}\n")
    run = run_cycle(objective, deployment=deployment, fresh=True)
    first = run["end"].task.data
    # One trial per task: no task saw three trials of the rung, so nothing continued in cycle 1;
    # and no trial had three others to be pruned against.
    assert [(r.status, r.result.epochs, r.result.resumable) for r in first.records] == [
        ("ok", 2, True)
    ] * 3
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(journal))
    )
    shared = optuna.load_study(study_name=f"fidelity-curves-{run.id}", storage=storage)
    assert {
        t.user_attrs["trial_id"]: tuple(t.intermediate_values.values()) for t in shared.trials
    } == {r.trial_id: r.result.curve for r in first.records}

    second = run_cycle(objective, trials=2)["end"].task.data
    continued, pruned = second.records  # records are kept in proposal-number order
    parent = min(first.records, key=lambda r: (-r.val_reward, r.proposal.number))
    assert continued.proposal.continues == parent.trial_id
    assert continued.proposal.checkpoint == parent.result.task_pathspec
    r = continued.result
    assert (r.status, r.epochs, r.start_epoch) == ("ok", 6, 2), r.cause
    assert r.curve[:2] == parent.result.curve
    assert pruned.proposal.params == bad
    assert pruned.status == "pruned", pruned.result.cause
    assert "worse than the 50th-percentile bar" in pruned.result.cause
    assert pruned.result.epochs == 2 and len(pruned.result.curve) == 2
    assert second.history[:3] == first.history


def test_a_higher_rung_is_not_flagged_for_jumping_beyond_lower_rungs() -> None:
    from factory_lib.reward import flags

    low = [_record(i, 0.60 + 0.001 * i) for i in range(6)]  # 3 epochs: tightly bunched
    high = _record(9, 0.95, epochs=9)
    assert flags(RUNGS, high, low) == ()
    same_rung = _record(9, 0.95)
    assert any("jumps beyond history" in f for f in flags(RUNGS, same_rung, low))


def test_records_pickled_before_the_fidelity_fields_still_load() -> None:
    import copy

    for value, missing in [
        (_proposal(RUNGS, 0, lr=0.01), ("epochs", "continues", "checkpoint")),
        (_record(0, 0.9).result, ("start_epoch", "resumable")),
    ]:
        state = copy.deepcopy(value.__getstate__())
        for name in missing:  # as pickled before these fields existed
            del state["__dict__"][name]
        old = type(value).__new__(type(value))
        old.__setstate__(state)
        defaults = {n: type(value).model_fields[n].default for n in missing}
        assert old == value.model_copy(update=defaults)
