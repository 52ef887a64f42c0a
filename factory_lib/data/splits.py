"""Data: deterministic train/validation/test splits, preprocessing fitted on train only.

This module needs only numpy and scikit-learn, so steps that just describe the data (start,
join) stay light; the Lightning side lives in `factory_lib.data.module`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, ConfigDict

from factory_lib.objective import IMAGE_DATASETS, DataSpec

SPLITS = ("train", "val", "test")
_STD_FLOOR = 1e-6


class Preprocessing(BaseModel):
    """Standardisation fitted on the training split; applied the same way at predict time."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    x_mean: list[float]
    x_std: list[float]
    y_mean: float = 0.0
    y_std: float = 1.0
    input_shape: tuple[int, ...]

    def transform_x(self, x: np.ndarray) -> np.ndarray:
        flat = x.reshape(len(x), -1).astype(np.float32)
        out = (flat - np.asarray(self.x_mean, np.float32)) / np.asarray(self.x_std, np.float32)
        return out.reshape((len(x), *self.input_shape))

    def transform_y(self, y: np.ndarray) -> np.ndarray:
        return ((y - self.y_mean) / self.y_std).astype(np.float32)

    def inverse_y(self, y: np.ndarray) -> np.ndarray:
        return y * self.y_std + self.y_mean


class DataSummary(BaseModel):
    """What proposers and records may know about the data: shapes, sizes and fingerprints."""

    model_config = ConfigDict(frozen=True)

    name: str
    task: str
    input_shape: tuple[int, ...]
    n_outputs: int
    sizes: dict[str, int]
    fingerprint: str
    split_fingerprints: dict[str, str]


@dataclass(frozen=True)
class Splits:
    """The three splits: raw features, preprocessed features (float32) and targets.

    Targets are class indices (int64) for classification and standardised values (float32)
    for regression; `raw_y` keeps them in their own units.
    """

    raw_x: dict[str, np.ndarray]
    raw_y: dict[str, np.ndarray]
    x: dict[str, np.ndarray]
    y: dict[str, np.ndarray]
    preprocessing: Preprocessing
    summary: DataSummary


class DataLeakError(ValueError):
    """Splits that share examples: the held-out split would not be held out."""


def row_hashes(x: np.ndarray) -> list[bytes]:
    """One hash per example (its feature bytes)."""
    flat = np.ascontiguousarray(x.reshape(len(x), -1), dtype=np.float32)
    return [hashlib.blake2b(row.tobytes(), digest_size=16).digest() for row in flat]


def first_occurrences(x: np.ndarray) -> np.ndarray:
    """Indices of the first copy of each distinct example, in their original order."""
    seen: set[bytes] = set()
    keep = []
    for i, h in enumerate(row_hashes(x)):
        if h not in seen:
            seen.add(h)
            keep.append(i)
    return np.asarray(keep, dtype=np.int64)


def shared_rows(xs: dict[str, np.ndarray]) -> dict[str, int]:
    """How many examples each pair of splits shares, e.g. {"train/test": 3}; empty if none."""
    hashes = {k: set(row_hashes(v)) for k, v in xs.items()}
    names = list(hashes)
    found = {}
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            n = len(hashes[a] & hashes[b])
            if n:
                found[f"{a}/{b}"] = n
    return found


def fingerprint_arrays(*arrays: np.ndarray) -> str:
    """A short content hash of arrays (shape and bytes)."""
    h = hashlib.sha256()
    for a in arrays:
        h.update(str(a.shape).encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]


def _load_bundled(name: str) -> tuple[np.ndarray, np.ndarray, tuple[int, ...]]:
    from sklearn import datasets

    loader = getattr(datasets, f"load_{name}")
    bunch = loader()
    x = np.asarray(bunch.data, dtype=np.float32)
    y = np.asarray(bunch.target)
    shape: tuple[int, ...] = (1, 8, 8) if name in IMAGE_DATASETS else (x.shape[1],)
    return x, y, shape


def load_splits(spec: DataSpec, task: str) -> Splits:
    """Load a bundled data set and split it deterministically by `spec.seed`."""
    from sklearn.model_selection import train_test_split

    if spec.dataset is None:
        raise ValueError("load_splits reads bundled data sets; user modules go through datamodule")
    x, y, shape = _load_bundled(spec.dataset)
    keep = first_occurrences(x)  # iris repeats a flower: one copy, so no split can share it
    x, y = x[keep], y[keep]
    stratify = y if task == "classification" else None
    x_rest, x_test, y_rest, y_test = train_test_split(
        x, y, test_size=spec.test_fraction, random_state=spec.seed, stratify=stratify
    )
    val_share = spec.val_fraction / (1.0 - spec.test_fraction)
    x_train, x_val, y_train, y_val = train_test_split(
        x_rest,
        y_rest,
        test_size=val_share,
        random_state=spec.seed,
        stratify=y_rest if task == "classification" else None,
    )
    flat_train = x_train.reshape(len(x_train), -1)
    if spec.dataset in IMAGE_DATASETS:
        # Images: one mean and scale for all pixels (a per-pixel std is ~0 at the border).
        mean = np.full(flat_train.shape[1], flat_train.mean())
        std = np.full(flat_train.shape[1], flat_train.std())
    else:
        # Tables: per feature; a feature constant on train is centred, not scaled.
        mean, std = flat_train.mean(axis=0), flat_train.std(axis=0)
        std = np.where(std < _STD_FLOOR, 1.0, std)
    y_mean, y_std = (
        (float(y_train.mean()), float(y_train.std())) if task == "regression" else (0.0, 1.0)
    )
    prep = Preprocessing(
        x_mean=mean.tolist(),
        x_std=std.tolist(),
        y_mean=y_mean,
        y_std=y_std,
        input_shape=shape,
    )
    raw = {"train": (x_train, y_train), "val": (x_val, y_val), "test": (x_test, y_test)}
    xs = {k: prep.transform_x(v[0]) for k, v in raw.items()}
    if task == "classification":
        ys = {k: v[1].astype(np.int64) for k, v in raw.items()}
        n_outputs = int(y.max()) + 1
    else:
        ys = {k: prep.transform_y(v[1].astype(np.float32)) for k, v in raw.items()}
        n_outputs = 1
    shared = shared_rows({k: v[0] for k, v in raw.items()})
    if shared:
        raise DataLeakError(f"bundled data set {spec.dataset!r}: splits share examples: {shared}")
    split_fps = {k: fingerprint_arrays(raw[k][0], raw[k][1]) for k in SPLITS}
    summary = DataSummary(
        name=spec.dataset,
        task=task,
        input_shape=shape,
        n_outputs=n_outputs,
        sizes={k: len(v) for k, v in ys.items()},
        fingerprint=fingerprint_arrays(
            *(np.frombuffer(fp.encode(), np.uint8) for fp in split_fps.values())
        ),
        split_fingerprints=split_fps,
    )
    return Splits(
        raw_x={k: v[0] for k, v in raw.items()},
        raw_y={k: v[1] for k, v in raw.items()},
        x=xs,
        y=ys,
        preprocessing=prep,
        summary=summary,
    )
