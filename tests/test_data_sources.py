"""Bring your own data: tables, image folders and arrays by path, user data modules that
stream; bad data refused before any step, naming the file and the column (docs/data.md)."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from factory_lib.checks import check_file
from factory_lib.data.module import SplitChanged, build_trial_data
from factory_lib.data.sources import DataError
from factory_lib.data.splits import DataLeakError, load_splits
from factory_lib.objective import Objective, ObjectiveError
from tests.aws import Aws
from tests.conftest import EXAMPLE_DATA

PENGUINS = EXAMPLE_DATA / "penguins.csv"  # written by conftest's example_data


def _objective(tmp_path: Path, data: dict[str, Any], **top: Any) -> Path:
    """An objective file in tmp_path reading `data` (paths relative to tmp_path)."""
    spec: dict[str, Any] = {
        "name": "byod",
        "task": "classification",
        "data": data,
        "model": {"families": ["mlp"]},
        "search_space": {"lr": {"type": "float", "low": 1e-3, "high": 1e-1, "log": True}},
        "fixed": {"width": 16, "depth": 1},
        "reward": {"metric": "accuracy"},
        "budget": {"trials_per_cycle": 2, "max_epochs": 2, "early_stopping_patience": 2},
        "promotion": {"seeds": 1, "min_improvement": 0.0},
        **top,
    }
    path = tmp_path / "objective.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def _refused(path: Path) -> str:
    with pytest.raises(ObjectiveError) as err:
        check_file(path)
    return str(err.value)


def _table(tmp_path: Path, df: pd.DataFrame, name: str = "t.csv") -> str:
    if name.endswith(".csv"):
        df.to_csv(tmp_path / name, index=False)
    else:
        df.to_parquet(tmp_path / name)
    return name


def _rows(n: int = 60, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "size": rng.normal(10, 2, n),
            "colour": rng.choice(["red", "green", "blue"], n),
            "kind": np.where(np.arange(n) % 2 == 0, "a", "b"),
        }
    )


def _load(path: Path) -> Objective:
    return check_file(path).objective


# --- bad data: refused before any step, naming the file and the column --------------------


def test_missing_target_column_is_named(tmp_path: Path) -> None:
    name = _table(tmp_path, _rows())
    msg = _refused(_objective(tmp_path, {"table": name, "target": "knd"}))
    assert "t.csv" in msg and "no column 'knd'" in msg and "did you mean 'kind'" in msg
    assert "line 5, data.target: " in msg  # the line of `target:` in the objective


def test_target_with_missing_values_is_refused_or_dropped_with_a_count(tmp_path: Path) -> None:
    df = _rows()
    df.loc[[3, 7], "kind"] = None
    name = _table(tmp_path, df)
    msg = _refused(_objective(tmp_path, {"table": name, "target": "kind"}))
    assert "t.csv: column 'kind' (the target) is missing in 2 of 60 rows" in msg
    assert "missing_target: drop" in msg
    objective = _load(
        _objective(tmp_path, {"table": name, "target": "kind", "missing_target": "drop"})
    )
    splits = load_splits(objective.data, objective.task)
    assert sum(splits.summary.sizes.values()) == 58
    assert "dropped 2 rows with no 'kind' (the target)" in splits.summary.notes


def test_a_text_column_that_is_not_declared_categorical_is_named_with_its_row(
    tmp_path: Path,
) -> None:
    df = _rows()
    df["size"] = df["size"].round(2).astype(str)
    df.loc[5, "size"] = "unknown"  # a stray word in a numeric column ("n/a" is missing)
    name = _table(tmp_path, df)
    msg = _refused(_objective(tmp_path, {"table": name, "target": "kind"}))
    assert "t.csv: column 'size' is numeric but row 5 holds 'unknown'" in msg
    # A text column left out of an explicit `categorical` list cannot be parsed either.
    msg = _refused(_objective(tmp_path, {"table": name, "target": "kind", "categorical": ["size"]}))
    assert "column 'colour' is numeric but row 0 holds" in msg


def test_an_empty_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "empty.csv").write_text("")
    assert "empty.csv: the file is empty" in _refused(
        _objective(tmp_path, {"table": "empty.csv", "target": "kind"})
    )
    (tmp_path / "header.csv").write_text("size,kind\n")
    assert "header.csv: the table has no rows" in _refused(
        _objective(tmp_path, {"table": "header.csv", "target": "kind"})
    )


def test_a_class_too_small_to_stratify_is_named(tmp_path: Path) -> None:
    df = _rows()
    df.loc[0, "kind"] = "rare"
    name = _table(tmp_path, df)
    msg = _refused(_objective(tmp_path, {"table": name, "target": "kind"}))
    assert "t.csv: class 'rare' has 1 row(s)" in msg


def test_an_image_folder_with_one_class_is_refused(tmp_path: Path) -> None:
    (tmp_path / "imgs" / "cat").mkdir(parents=True)
    Image.new("L", (4, 4)).save(tmp_path / "imgs" / "cat" / "a.png")
    msg = _refused(_objective(tmp_path, {"images": "imgs"}))
    assert "imgs: 1 class folder(s) (cat)" in msg and "two or more" in msg


def test_a_corrupt_parquet_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 this is not parquet at all PAR1")
    msg = _refused(_objective(tmp_path, {"table": "bad.parquet", "target": "kind"}))
    assert "bad.parquet: not a readable Parquet file" in msg


def test_a_path_that_does_not_exist_is_refused(tmp_path: Path) -> None:
    for data in (
        {"table": "nope.csv", "target": "kind"},
        {"images": "no_folder"},
        {"arrays": "nope.npz"},
    ):
        path = data.get("table") or data.get("images") or data.get("arrays")
        msg = _refused(_objective(tmp_path, data))
        assert f"{tmp_path / str(path)}: no such file or folder" in msg


def test_settings_that_do_not_apply_are_refused(tmp_path: Path) -> None:
    msg = _refused(
        _objective(
            tmp_path,
            {"module": "tests.user_code.stream:NpyStream", "batch_size": 128, "seed": 1},
        )
    )
    assert "data.batch_size: batch_size, seed: do not apply to 'module' data" in msg
    msg = _refused(_objective(tmp_path, {"images": "x", "target": "kind"}))
    assert "data.target: does not apply to 'images' data" in msg


def test_arrays_with_missing_keys_or_nan_are_refused(tmp_path: Path) -> None:
    np.savez(tmp_path / "a.npz", features=np.zeros((10, 2)), y=np.zeros(10))
    msg = _refused(_objective(tmp_path, {"arrays": "a.npz"}))
    assert "a.npz: no array 'x'" in msg and "it holds features, y" in msg
    x = np.random.default_rng(0).normal(size=(30, 2))
    x[4, 1] = np.nan
    np.savez(tmp_path / "b.npz", x=x, y=np.arange(30) % 2)
    assert "b.npz: 'x' holds NaN or infinity in 1 rows (first: row 4)" in _refused(
        _objective(tmp_path, {"arrays": "b.npz"})
    )


# --- what each source guarantees ----------------------------------------------------------


def test_a_table_keeps_class_names_fits_on_train_and_encodes_unseen_values(
    tmp_path: Path,
) -> None:
    from factory_lib.data.sources import TableEncoder

    objective = _load(_objective(tmp_path, {"table": str(PENGUINS), "target": "species"}))
    splits = load_splits(objective.data, objective.task)
    prep = splits.preprocessing
    assert prep.classes == ("Adelie", "Chinstrap", "Gentoo")
    encoder = prep.encoder
    assert isinstance(encoder, TableEncoder)
    assert encoder.indicators == (
        "bill_length_mm",
        "bill_depth_mm",
        "flipper_length_mm",
        "body_mass_g",
    )
    train = splits.raw_x["train"]
    assert encoder.fill[0] == pytest.approx(float(train["bill_length_mm"].median()))
    assert dict(encoder.categorical)["island"] == ("Biscoe", "Dream", "Torgersen")
    # An island never seen in training, and a missing one, go to the unseen slot.
    rows = splits.raw_x["test"].head(2).copy()
    rows["island"] = ["Atlantis", None]
    onehot = encoder.encode(rows)[
        :,
        [
            encoder.feature_names.index(f"island={v}")
            for v in ("Biscoe", "Dream", "Torgersen", "<unseen>")
        ],
    ]
    assert onehot.tolist() == [[0, 0, 0, 1], [0, 0, 0, 1]]
    assert (
        splits.summary.split_fingerprints
        == load_splits(objective.data, objective.task).summary.split_fingerprints
    )


def test_predict_names_a_missing_column_and_ignores_extra_ones(tmp_path: Path) -> None:
    objective = _load(_objective(tmp_path, {"table": str(PENGUINS), "target": "species"}))
    prep = load_splits(objective.data, objective.task).preprocessing
    df = pd.read_csv(PENGUINS).head(3)
    with pytest.raises(DataError, match="input has no column 'island'"):
        prep.encode(df.drop(columns=["island"]))
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        prep.encode(df.assign(comment="x"))
    assert "columns not used by the model, ignored: species, comment" in str(seen[0].message)


def test_split_and_group_columns_decide_the_splits(tmp_path: Path) -> None:
    df = _rows(90)
    df["fold"] = np.repeat(["train", "val", "test"], 30)
    objective = _load(
        _objective(
            tmp_path, {"table": _table(tmp_path, df), "target": "kind", "split_column": "fold"}
        )
    )
    assert load_splits(objective.data, objective.task).summary.sizes == {
        "train": 30,
        "val": 30,
        "test": 30,
    }
    df = _rows(120)
    df["patient"] = np.arange(120) // 4  # four rows per patient
    objective = _load(
        _objective(
            tmp_path,
            {
                "table": _table(tmp_path, df, "g.parquet"),
                "target": "kind",
                "group_column": "patient",
            },
        )
    )
    splits = load_splits(objective.data, objective.task)
    by_split = {
        k: set(df.merge(v.assign(_i=1), on=list(v.columns))["patient"])
        for k, v in splits.raw_x.items()
    }
    assert not by_split["train"] & by_split["test"] and not by_split["train"] & by_split["val"]


def test_corrupt_images_are_skipped_counted_and_reported(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for label in ("a", "b"):
        folder = tmp_path / "imgs" / label
        folder.mkdir(parents=True)
        for i in range(12):
            pixels = rng.integers(0, 255, (6, 5, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"{i}.png")
    (tmp_path / "imgs" / "a" / "broken.png").write_bytes(b"not a png")
    objective = _load(_objective(tmp_path, {"images": "imgs", "image_size": [4, 4]}))
    splits = load_splits(objective.data, objective.task)
    assert splits.summary.input_shape == (3, 4, 4)  # RGB, resized
    assert sum(splits.summary.sizes.values()) == 24
    assert splits.summary.notes == ("skipped 1 unreadable image file(s): a/broken.png",)


def test_arrays_with_their_own_splits_are_checked_for_leaks(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    parts = {s: rng.normal(size=(20, 3)) for s in ("train", "val", "test")}
    parts["test"][0] = parts["train"][5]  # a training row in the held-out split
    np.savez(
        tmp_path / "own.npz",
        **{f"x_{s}": v for s, v in parts.items()},
        **{f"y_{s}": np.arange(20) % 2 for s in parts},
    )
    objective = Objective.model_validate(
        {**yaml.safe_load(_objective(tmp_path, {"arrays": str(tmp_path / "own.npz")}).read_text())}
    )
    with pytest.raises(DataLeakError, match=r"splits share examples: \{'train/test': 1\}"):
        load_splits(objective.data, objective.task)


# --- user data modules --------------------------------------------------------------------


def _stream(tmp_path: Path, **kwargs: Any) -> Objective:
    from sklearn.datasets import load_digits

    from tests.user_code.stream import write_splits

    digits = load_digits()
    write_splits(tmp_path / "shards", digits.images[:, None] / 16.0, digits.target)
    data = {
        "module": "tests.user_code.stream:NpyStream",
        "kwargs": {"root": str(tmp_path / "shards"), **kwargs},
    }
    return _load(_objective(tmp_path, data))


def test_a_streaming_module_is_fingerprinted_and_checked_in_every_task(tmp_path: Path) -> None:
    objective = _stream(tmp_path, batch_size=100)
    first = build_trial_data(objective)
    assert first.summary.sizes == {"train": 1257, "val": 270, "test": 270}
    # The training loader shuffles, yet the fingerprint is the same in every build.
    again = build_trial_data(objective, expected=first.summary)
    assert again.summary.split_fingerprints == first.summary.split_fingerprints
    # Another split (a module that splits without a fixed seed) is refused in the task.
    from sklearn.datasets import load_digits

    from tests.user_code.stream import write_splits

    digits = load_digits()
    write_splits(tmp_path / "shards", digits.images[:, None] / 16.0, digits.target, seed=1)
    with pytest.raises(SplitChanged, match="differs from what the start step described: train"):
        build_trial_data(objective, expected=first.summary)


def test_bad_modules_get_the_factorys_own_messages(tmp_path: Path) -> None:
    cases = {
        "NoTestLoader": "has no test_dataloader(): the held-out split",
        "DictBatches": "yields dict batches ('image', 'label'); the factory needs (x, y) pairs",
        "OneClass": "num_classes is 1; need two or more",
        "ClassOutOfRange": "yields class 5 (or 0); num_classes is 3",
        "Leaky": "splits share examples: 8 training rows are in val or test",
    }
    for name, expected in cases.items():
        objective = _load(_objective(tmp_path, {"module": f"tests.user_code.bad_modules:{name}"}))
        with pytest.raises(DataError, match=expected.replace("(", r"\(").replace(")", r"\)")):
            build_trial_data(objective)


def test_one_family_without_a_family_parameter_builds_that_family() -> None:
    from torch import nn

    from factory_lib.models.builders import build_model
    from factory_lib.objective import load_objective

    objective = load_objective(EXAMPLE_DATA.parent.parent / "digits_arrays.yaml")  # cnn only
    model = build_model(objective, {"channels": 8}, (1, 8, 8), 10)
    assert any(isinstance(m, nn.Conv2d) for m in model.modules())


@pytest.mark.slow
def test_a_table_on_s3_is_read_with_the_datastores_client(aws: Aws, tmp_path: Path) -> None:
    """`table: s3://...` through Metaflow's S3 client, against a local moto server."""
    s3 = aws.client("s3")
    s3.create_bucket(Bucket="team-data")
    s3.upload_file(str(PENGUINS), "team-data", "tables/penguins.csv")

    def check(table: str) -> subprocess.CompletedProcess[str]:
        path = _objective(tmp_path, {"table": table, "target": "species"})
        return subprocess.run(
            [sys.executable, "-m", "factory_lib.ops.cli", "check", str(path)],
            capture_output=True,
            text=True,
            env={**os.environ, **aws.env},
            timeout=300,
            check=False,
        )

    found = check("s3://team-data/tables/penguins.csv")
    assert found.returncode == 0, found.stderr[-2000:]
    assert "data penguins.csv: train 223, val 52, test 69 rows" in found.stdout
    missing = check("s3://team-data/tables/nope.csv")
    assert missing.returncode != 0
    assert "s3://team-data/tables/nope.csv: no such object" in missing.stdout + missing.stderr


def test_drift_reads_a_table_with_its_target_column() -> None:
    from factory_lib.ops.drift import load_labelled

    x, y = load_labelled(PENGUINS, "species")
    assert "species" not in x.columns and len(x) == len(y) == 344
    with pytest.raises(ValueError, match="no column 'kind'"):
        load_labelled(PENGUINS, "kind")


@pytest.mark.parametrize("name", ["digits", "iris", "wine", "breast_cancer", "diabetes"])
def test_bundled_sets_read_as_scikit_learn_loads_them(name: str) -> None:
    from sklearn import datasets

    from factory_lib.data.bundled import bundled_arrays

    bunch = getattr(datasets, f"load_{name}")()
    data, target = bundled_arrays(name)
    assert data.dtype == bunch.data.dtype and target.dtype == bunch.target.dtype
    np.testing.assert_array_equal(data, bunch.data)
    np.testing.assert_array_equal(target, bunch.target)


def test_rows_split_as_scikit_learn_splits_them() -> None:
    from sklearn.model_selection import train_test_split

    from factory_lib.data.shuffle import train_test_indices

    rng = np.random.default_rng(0)
    cases = 0
    for n in (9, 10, 37, 150, 1797):
        for fraction in (0.15, 0.2, 0.3, 0.5):
            for seed in (0, 1, 42):
                # balanced, skewed (remainders that tie and differ), and no stratification
                for y in (np.arange(n) % 3, rng.choice(4, n, p=[0.55, 0.25, 0.15, 0.05]), None):
                    if y is not None and np.bincount(y).min() < 2:
                        continue
                    n_test = int(np.ceil(fraction * n))
                    if y is not None and min(n_test, n - n_test) < len(np.unique(y)):
                        continue
                    want = train_test_split(
                        np.arange(n), test_size=fraction, random_state=seed, stratify=y
                    )
                    got = train_test_indices(n, fraction, seed, y)
                    np.testing.assert_array_equal(got[0], want[0])
                    np.testing.assert_array_equal(got[1], want[1])
                    cases += 1
    assert cases > 120


def test_the_scores_equal_scikit_learns() -> None:
    from sklearn.metrics import f1_score, r2_score

    from factory_lib.evaluate import macro_f1, r2

    rng = np.random.default_rng(1)
    for _ in range(50):
        y = rng.integers(0, 5, 40)
        pred = np.where(rng.random(40) < 0.6, y, rng.integers(0, 7, 40))  # classes y lacks too
        assert macro_f1(y, pred) == pytest.approx(
            f1_score(y, pred, average="macro", zero_division=0), abs=1e-12
        )
        t = rng.normal(size=30).astype(np.float32)
        p = (t + rng.normal(scale=0.5, size=30)).astype(np.float32)
        assert r2(t, p) == pytest.approx(r2_score(t, p), abs=1e-5)
    assert macro_f1(np.array([1, 1]), np.array([2, 2])) == 0.0  # no class right
    constant = np.ones(5)
    assert r2(constant, constant) == r2_score(constant, constant) == 1.0
    assert r2(constant, constant + 1) == r2_score(constant, constant + 1) == 0.0
