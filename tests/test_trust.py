"""Trustworthy verdicts: noise-aware promotion in real cycles, exports that load on their own."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from factory_lib.data.module import build_trial_data
from factory_lib.data.splits import load_splits
from factory_lib.objective import load_objective
from factory_lib.propose.base import make_proposal
from factory_lib.registry.export import export_champion
from factory_lib.registry.model import ChampionModel
from factory_lib.registry.package import ModelPackage
from factory_lib.train.trial import run_trial
from tests.conftest import ROOT, run_cycle, trained_in, write_objective

LOADER = """
import sys, numpy as np, torch, onnxruntime
x = np.load(sys.argv[1])
ts = torch.jit.load(sys.argv[2])(torch.from_numpy(x)).detach().numpy()
ox = onnxruntime.InferenceSession(sys.argv[3]).run(None, {"x": x})[0]
np.save(sys.argv[4], np.stack([ts, ox]))
assert not any(m.startswith(("factory_lib", "metaflow")) for m in sys.modules)
"""


@pytest.mark.parametrize("name", ["smoke", "diabetes", "digits"])
def test_exports_predict_like_the_trained_model_without_this_repo(
    name: str, tmp_path: Path
) -> None:
    objective = load_objective(ROOT / "objectives" / f"{name}.yaml").with_overrides(epochs=3)
    data = build_trial_data(objective)
    params = {"lr": 0.01, "width": 16, "depth": 1, "family": "cnn" if name == "digits" else "mlp"}
    out = run_trial(objective, make_proposal(objective, 1, 0, 0, params, "test", ""), data)
    assert out.weights is not None
    package = ModelPackage(
        objective=objective,
        params=out.result.proposal.params,
        input_shape=data.summary.input_shape,
        n_outputs=data.summary.n_outputs,
        preprocessing=data.preprocessing,
        weights=out.weights,
        weights_sha=out.result.weights_sha or "",
        trial_id="c001-t00",
    )
    raw = load_splits(objective.data, objective.task).raw_x["test"].astype(np.float32)
    exports = export_champion(package, raw)
    assert set(exports.max_abs_diff) == {"torchscript", "onnx"}
    paths = [tmp_path / n for n in ("x.npy", "model.pt", "model.onnx", "out.npy")]
    np.save(paths[0], raw)
    paths[1].write_bytes(exports.torchscript)
    paths[2].write_bytes(exports.onnx)
    subprocess.run(
        [sys.executable, "-c", LOADER, *map(str, paths)],
        check=True,
        cwd=tmp_path,
        env={"PATH": ""},
        timeout=120,
    )
    ts, ox = np.load(paths[3])
    predict = ChampionModel(package).predict(raw)
    if objective.task == "classification":
        assert (ts.argmax(axis=1) == predict).all() and (ox.argmax(axis=1) == predict).all()
    else:
        np.testing.assert_allclose(ts, predict, atol=1e-3)
        np.testing.assert_allclose(ox, predict, atol=1e-3)


@pytest.mark.slow
def test_noise_is_not_promoted_and_a_clear_gain_is(tmp_path: Path) -> None:
    weak = {"lr": 0.001, "width": 4, "depth": 1}
    objective = write_objective(
        tmp_path,
        "trust",
        budget={"trials_per_cycle": 1},
        promotion={"seeds": 3, "confidence": 0.9, "min_improvement": 0.0, "max_val_test_gap": 1.0},
        proposers={
            "enqueue": [weak, {**weak, "lr": 0.00101}, {"lr": 0.08, "width": 32, "depth": 2}]
        },
    )
    first = run_cycle(objective, fresh=True)["end"].task.data
    noise = run_cycle(objective)["end"].task.data
    clear_run = run_cycle(objective)
    clear = clear_run["end"].task.data

    assert first.decision.status == "promoted" and len(first.champion.seed_values) == 3
    assert noise.decision.status in ("not_significant", "regressed")
    assert noise.champion.trial_id == first.champion.trial_id
    evidence = noise.decision.evidence
    assert len(evidence.challenger_values) == len(evidence.champion_values) == 3
    assert "Welch" in evidence.method
    assert clear.decision.status == "promoted", clear.decision.reason
    assert clear.champion.parent == first.champion.trial_id
    assert clear.decision.evidence.lower_bound > 0

    card = clear.model_card
    assert card.lineage.parent == first.champion.trial_id
    assert card.held_out_over_seeds.sd is not None
    assert set(card.exports.max_abs_diff) == {"torchscript", "onnx"}
    assert "Model card: trust" in card.to_markdown()
    assert clear.exports.trial_id == clear.champion.trial_id
    assert clear.pareto.trial_ids and clear.pareto.hypervolume > 0

    # the new champion was re-trained with the other two seeds once each: in its train task
    # (its group's best, where that is quicker than a measure task) or in the measure tasks the
    # gate listed; nothing else is re-trained, and the steps around them train nothing
    listed = clear_run["gate"].task.data.measure_jobs
    remeasured = {job.trial_id for job in listed if job.kind == "seeds"}  # a job per seed
    remeasured |= {m.job.trial_id for m in clear_run["join"].task.data.measured_in_train}
    assert clear.champion.trial_id in remeasured
    trained = [t for s in ("train", "measure") for task in clear_run[s] for t in trained_in(task)]
    again = sorted(t for t in trained if t not in {r.trial_id for r in clear.records})
    assert again == sorted(f"{t}-s{j}" for t in remeasured for j in (1, 2))
    for step in ("start", "join", "gate", "decide", "end"):
        assert [trained_in(task) for task in clear_run[step]] == [[]], step


def test_a_failing_export_is_a_note_not_a_failed_cycle(monkeypatch: pytest.MonkeyPatch) -> None:
    import factory_lib.registry.export as export
    from factory_lib.cycle.measure import export_or_note

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("tracer exploded")

    monkeypatch.setattr(export, "export_champion", broken)
    objective = load_objective(ROOT / "objectives" / "smoke.yaml")
    exports, summary = export_or_note(None, objective)  # type: ignore[arg-type]
    assert exports is None and summary.error == "export failed: RuntimeError: tracer exploded"
