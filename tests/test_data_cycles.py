"""Every data source through real cycles: two chained cycles each, then its champion predicts
from raw inputs in a fresh process, through `load_champion` and through its ONNX export, with
the same outputs (docs/data.md)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import EXAMPLE_DATA, ROOT, run_cycle, write_objective

# Run in a fresh process: raw inputs as the source holds them → predict, and → ONNX.
PREDICT = """
import torch  # first: Metaflow issue #2462
import json, sys
import numpy as np, onnxruntime
from factory_lib.runs import load_champion
from factory_lib.runs.client import latest_cycle

name, kind, path = sys.argv[1:4]
if kind == "table":
    import pandas as pd
    raw = pd.read_csv(path).sample(25, random_state=0).drop(columns=["species"])
elif kind == "images":
    from pathlib import Path
    raw = sorted(Path(path).rglob("*.png"))[::80]
elif kind == "arrays":
    raw = np.load(path)["x"][:25]
else:
    raw = np.load(path)[:25]
model = load_champion(name)
state = latest_cycle("CycleFlow", name)
session = onnxruntime.InferenceSession(state.bundle.exports.onnx)
scores = session.run(None, {"x": model.export_input(raw).astype("float32")})[0]
classes = model.package.preprocessing and model.package.preprocessing.classes
onnx_labels = np.asarray(classes)[scores.argmax(1)] if classes else scores.argmax(1)
print(json.dumps({
    "cycle": state.cycle,
    "predict": model.predict(raw).tolist(),
    "onnx": onnx_labels.tolist(),
}))
"""


def _stream_shards(tmp_path: Path) -> Path:
    from sklearn.datasets import load_digits

    from tests.user_code.stream import write_splits

    digits = load_digits()
    write_splits(tmp_path / "shards", digits.images[:, None] / 16.0, digits.target)
    return tmp_path / "shards"


# The shipped example objectives, as they are (their data paths relative to them), and the
# raw inputs to predict on.
SHIPPED = {
    "table": ("penguins", EXAMPLE_DATA / "penguins.csv"),
    "images": ("digits_images", EXAMPLE_DATA / "digits_png"),
    "arrays": ("digits_arrays", EXAMPLE_DATA / "digits.npz"),
}


def _objective(kind: str, tmp_path: Path) -> tuple[Path, str, str]:
    """The source's objective file, its name, and the raw inputs to predict on."""
    if kind in SHIPPED:
        name, raw = SHIPPED[kind]
        return ROOT / "objectives" / f"{name}.yaml", name, str(raw)
    shards = _stream_shards(tmp_path)
    path = write_objective(tmp_path, "byod_module", "digits_arrays")
    spec = yaml.safe_load(path.read_text())
    spec["data"] = {  # a module's loaders decide the batch size and the split
        "module": "tests.user_code.stream:NpyStream",
        "kwargs": {"root": str(shards), "batch_size": 64},
    }
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path, "byod_module", str(shards / "test_x.npy")


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["table", "images", "arrays", "module"])
def test_each_source_chains_two_cycles_and_its_champion_predicts_from_raw_inputs(
    kind: str, tmp_path: Path
) -> None:
    objective, name, raw = _objective(kind, tmp_path)
    first = run_cycle(objective, trials=2, epochs=3)
    second = run_cycle(objective, trials=2, epochs=3)
    plan = second["start"].task.data.plan
    assert plan.cycle == 2 and plan.previous.run_pathspec == first.pathspec
    assert plan.data.split_fingerprints == first["start"].task.data.plan.data.split_fingerprints
    out = subprocess.run(
        [sys.executable, "-c", PREDICT, name, kind, raw],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["cycle"] == 2
    assert result["predict"] == result["onnx"]
    assert len(result["predict"]) >= 20
    expected = {  # the names the data gave its classes: species, folder names; else indices
        "table": {"Adelie", "Chinstrap", "Gentoo"},
        "images": {str(d) for d in range(10)},
    }.get(kind, set(range(10)))
    assert set(result["predict"]) <= expected
