"""Data: deterministic train/validation/test splits, preprocessing fitted on train only.

Every in-memory source (bundled sets, tables, image folders, arrays: `sources`) is split here
the same way: exact repeats kept once, stratified (or by group, or as the data says), checked
for rows shared between splits, fingerprinted. numpy, pandas and scikit-learn only, so steps
that just describe the data (start, join) stay light; the Lightning side lives in
`factory_lib.data.module`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from factory_lib.data.sources import (
    DataError,
    ImageEncoder,
    Loaded,
    TableEncoder,
    load_arrays,
    load_images,
    load_table,
)
from factory_lib.objective import BUNDLED_SHAPES, IMAGE_DATASETS, DataSpec

SPLITS = ("train", "val", "test")
_STD_FLOOR = 1e-6


class Preprocessing(BaseModel):
    """What turns raw inputs into the network's: the source's encoder (tables, images), then
    standardisation fitted on the training split; applied the same way at predict time."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    x_mean: list[float]
    x_std: list[float]
    y_mean: float = 0.0
    y_std: float = 1.0
    input_shape: tuple[int, ...]
    encoder: Annotated[TableEncoder | ImageEncoder, Field(discriminator="kind")] | None = None
    classes: tuple[str | int, ...] | None = None  # what `predict` returns for class k

    def encode(self, x: Any) -> np.ndarray:
        """What the source holds (a DataFrame, image files, arrays) → the exports' input."""
        if self.encoder is not None:
            return self.encoder.encode(x)
        return np.asarray(x, dtype=np.float32)  # rows may come flat (digits: 64 pixels)

    def standardise(self, encoded: np.ndarray) -> np.ndarray:
        flat = encoded.reshape(len(encoded), -1).astype(np.float32)
        out = (flat - np.asarray(self.x_mean, np.float32)) / np.asarray(self.x_std, np.float32)
        return out.reshape((len(encoded), *self.input_shape))

    def transform_x(self, x: Any) -> np.ndarray:
        return self.standardise(self.encode(x))

    def transform_y(self, y: np.ndarray) -> np.ndarray:
        return ((y - self.y_mean) / self.y_std).astype(np.float32)

    def inverse_y(self, y: np.ndarray) -> np.ndarray:
        return y * self.y_std + self.y_mean

    def describe(self) -> str:
        """One line for the model card: what happens before the network."""
        first = f"{self.encoder.describe()}; then " if self.encoder is not None else ""
        target = "; regression target standardised" if self.y_std != 1.0 else ""
        return f"{first}standardised with training-split statistics{target}"


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
    source: str = "dataset"
    classes: tuple[str | int, ...] | None = None
    notes: tuple[str, ...] = ()  # rows dropped, files skipped: with counts


@dataclass(frozen=True)
class Splits:
    """The three splits: raw features, preprocessed features (float32) and targets.

    Targets are class indices (int64) for classification and standardised values (float32)
    for regression; `raw_y` keeps them in their own units.
    """

    raw_x: dict[str, Any]  # what the source holds: arrays, a DataFrame, decoded images
    raw_y: dict[str, np.ndarray]
    x: dict[str, np.ndarray]
    y: dict[str, np.ndarray]
    preprocessing: Preprocessing
    summary: DataSummary


class DataLeakError(DataError):
    """Splits that share examples: the held-out split would not be held out."""


def row_hashes(x: Any) -> np.ndarray:
    """One 64-bit hash per example (its feature values; a DataFrame's row), vectorised."""
    import pandas as pd

    frame = x if isinstance(x, pd.DataFrame) else pd.DataFrame(np.reshape(x, (len(x), -1)))
    out: np.ndarray = pd.util.hash_pandas_object(frame, index=False).to_numpy()
    return out


def first_occurrences(x: Any) -> np.ndarray:
    """Indices of the first copy of each distinct example, in their original order."""
    first: np.ndarray = np.sort(np.unique(row_hashes(x), return_index=True)[1])
    return first.astype(np.int64)


def shared_rows(xs: dict[str, Any]) -> dict[str, int]:
    """How many examples each pair of splits shares, e.g. {"train/test": 3}; empty if none."""
    hashes = {k: np.unique(row_hashes(v)) for k, v in xs.items()}
    names = list(hashes)
    found = {}
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            n = len(np.intersect1d(hashes[a], hashes[b], assume_unique=True))
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


def fingerprint_split(x: Any, y: np.ndarray) -> str:
    """A split's fingerprint: of its arrays, or of a table's row hashes."""
    return fingerprint_arrays(x if isinstance(x, np.ndarray) else row_hashes(x), y)


def combined_fingerprint(split_fingerprints: dict[str, str]) -> str:
    return fingerprint_arrays(
        *(np.frombuffer(fp.encode(), np.uint8) for fp in split_fingerprints.values())
    )


def _load_bundled(name: str) -> Loaded:
    from factory_lib.data.bundled import bundled_arrays

    data, target = bundled_arrays(name)
    x = np.asarray(data, dtype=np.float32)  # flat rows (digits: 64 pixels each)
    return Loaded(x=x, y=target, classes=None, encoder=None)


def load_source(spec: DataSpec, task: str) -> Loaded:
    """Read the objective's data, whichever in-memory source it is."""
    if spec.dataset is not None:
        return _load_bundled(spec.dataset)
    if spec.table is not None:
        return load_table(spec, task)
    if spec.images is not None:
        return load_images(spec)
    if spec.arrays is not None:
        return load_arrays(spec, task)
    raise ValueError("load_splits reads in-memory sources; a data module goes through `module`")


def _take(x: Any, idx: np.ndarray) -> Any:
    import pandas as pd

    return x.iloc[idx].reset_index(drop=True) if isinstance(x, pd.DataFrame) else x[idx]


def _split_indices(spec: DataSpec, task: str, data: Loaded) -> dict[str, np.ndarray]:
    """Row indices of each split: the data's own, by groups, or stratified at random."""
    from factory_lib.data.shuffle import train_test_indices

    n = len(data.y)
    if data.split is not None:
        return {k: np.flatnonzero(data.split == k) for k in SPLITS}
    rows = np.arange(n)
    val_share = spec.val_fraction / (1.0 - spec.test_fraction)
    if data.groups is not None:
        from sklearn.model_selection import GroupShuffleSplit

        groups = data.groups
        rest, test = next(
            GroupShuffleSplit(1, test_size=spec.test_fraction, random_state=spec.seed).split(
                rows, groups=groups
            )
        )
        train, val = next(
            GroupShuffleSplit(1, test_size=val_share, random_state=spec.seed).split(
                rest, groups=groups[rest]
            )
        )
        return {"train": rest[train], "val": rest[val], "test": test}
    stratify = data.y if task == "classification" else None
    rest, test = train_test_indices(n, spec.test_fraction, spec.seed, stratify)
    train, val = train_test_indices(
        len(rest), val_share, spec.seed, data.y[rest] if stratify is not None else None
    )
    return {"train": rest[train], "val": rest[val], "test": test}


def _check_classes(spec: DataSpec, data: Loaded, where: str) -> None:
    """Every class must have a row in each of the three splits."""
    counts = np.bincount(data.y, minlength=len(data.classes or ()) or int(data.y.max()) + 1)
    few = [(k, int(c)) for k, c in enumerate(counts) if c < len(SPLITS)]
    if few and data.split is None:
        k, c = few[0]
        name = data.classes[k] if data.classes else k
        raise DataError(
            f"{where}: class {name!r} has {c} row(s); a stratified split needs at least "
            f"{len(SPLITS)} per class (one for each of train, val and test)"
            + (f", and {len(few) - 1} more class(es) are as small" if len(few) > 1 else "")
        )


def load_splits(spec: DataSpec, task: str) -> Splits:
    """Load the objective's data and split it deterministically by `spec.seed`; fit the
    preprocessing on the training split only."""
    where = spec.path or spec.dataset or "data"
    data = load_source(spec, task)
    notes = list(data.notes)
    if data.split is None:
        # Exact repeats (iris repeats a flower) kept once, so no split can share an example.
        keep = first_occurrences(data.x)
        if len(keep) < len(data.y):
            if spec.dataset is None:
                notes.append(f"dropped {len(data.y) - len(keep)} exact repeats of earlier rows")
            groups = data.groups[keep] if data.groups is not None else None
            data = replace(data, x=_take(data.x, keep), y=data.y[keep], groups=groups)
    if task == "classification":
        _check_classes(spec, data, where)
    idx = _split_indices(spec, task, data)
    for k in SPLITS:
        if len(idx[k]) == 0:
            raise DataError(f"{where}: the {k} split is empty")
    raw = {k: (_take(data.x, idx[k]), data.y[idx[k]]) for k in SPLITS}
    shared = shared_rows({k: v[0] for k, v in raw.items()})
    if shared:
        raise DataLeakError(
            f"{where}: splits share examples: {shared}; a held-out split must hold out"
        )
    encoder = data.encoder
    if spec.table is not None:
        encoder = TableEncoder.fit(raw["train"][0], data.categorical)
    encode = encoder.encode if encoder is not None else np.asarray
    encoded = {k: np.asarray(encode(v[0]), np.float32) for k, v in raw.items()}
    shape: tuple[int, ...] = (
        BUNDLED_SHAPES[spec.dataset][0] if spec.dataset else tuple(encoded["train"].shape[1:])
    )
    encoded = {k: v.reshape((len(v), *shape)) for k, v in encoded.items()}
    flat_train = encoded["train"].reshape(len(encoded["train"]), -1)
    if spec.dataset in IMAGE_DATASETS:
        # Images: one mean and scale for all pixels (a per-pixel std is ~0 at the border).
        mean = np.full(flat_train.shape[1], flat_train.mean())
        std = np.full(flat_train.shape[1], flat_train.std())
    elif spec.images is not None:
        # Image folders: a mean and scale per channel.
        per = encoded["train"].transpose(1, 0, 2, 3).reshape(shape[0], -1)
        mean = np.repeat(per.mean(axis=1), shape[1] * shape[2])
        std = np.repeat(np.maximum(per.std(axis=1), _STD_FLOOR), shape[1] * shape[2])
    else:
        # Tables and arrays: per feature; a feature constant on train is centred, not scaled.
        mean, std = flat_train.mean(axis=0), flat_train.std(axis=0)
        std = np.where(std < _STD_FLOOR, 1.0, std)
    y_train = raw["train"][1]
    y_mean, y_std = (
        (float(y_train.mean()), float(y_train.std())) if task == "regression" else (0.0, 1.0)
    )
    prep = Preprocessing(
        x_mean=mean.tolist(),
        x_std=std.tolist(),
        y_mean=y_mean,
        y_std=y_std or 1.0,
        input_shape=shape,
        encoder=encoder,
        classes=data.classes,
    )
    xs = {k: prep.standardise(v) for k, v in encoded.items()}
    if task == "classification":
        ys = {k: v[1].astype(np.int64) for k, v in raw.items()}
        n_outputs = len(data.classes) if data.classes else int(data.y.max()) + 1
    else:
        ys = {k: prep.transform_y(v[1].astype(np.float32)) for k, v in raw.items()}
        n_outputs = 1
    split_fps = {k: fingerprint_split(raw[k][0], raw[k][1]) for k in SPLITS}
    summary = DataSummary(
        name=spec.dataset or Path(where).name,
        task=task,
        input_shape=shape,
        n_outputs=n_outputs,
        sizes={k: len(v) for k, v in ys.items()},
        fingerprint=combined_fingerprint(split_fps),
        split_fingerprints=split_fps,
        source=spec.source,
        classes=data.classes,
        notes=tuple(notes),
    )
    return Splits(
        raw_x={k: v[0] for k, v in raw.items()},
        raw_y={k: v[1] for k, v in raw.items()},
        x=xs,
        y=ys,
        preprocessing=prep,
        summary=summary,
    )
