"""User data by path: tables (CSV, Parquet), image folders and arrays (.npz).

Each source is read whole into memory (a data set larger than memory is a user data module,
docs/data.md) and checked before any training: a problem names the file, and the column or
key, and says what to do. The encoders turn what the source holds (a DataFrame with the
original columns, image files or decoded pixels, arrays) into the float matrix the network
and the exports take; they are fitted on the training split only and kept with the model.
pandas, pyarrow, Pillow and numpy only: no torch.
"""

from __future__ import annotations

import difflib
import io
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict

from factory_lib.objective import DataSpec

if TYPE_CHECKING:
    import pandas as pd

SPLIT_NAMES = ("train", "val", "test")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
_GRAY_MODES = ("1", "L", "LA", "I", "I;16", "F")
# A string column read from a table is numeric with a few bad values (not categorical) when
# at least this share of its values parse as numbers.
_NUMERIC_SHARE = 0.5


class DataError(ValueError):
    """Data that cannot be used; the message names the file and the column or key, and
    `field` the objective's field it concerns where one does ("data.target")."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class Loaded:
    """A source read into memory, before it is split.

    `x` is what the source holds (a DataFrame of the feature columns; decoded images as uint8
    (N, H, W, C); an array), `y` the targets (class indices, or floats for regression).
    """

    x: Any
    y: np.ndarray
    classes: tuple[str | int, ...] | None
    encoder: TableEncoder | ImageEncoder | None
    categorical: tuple[str, ...] = ()  # a table's columns to one-hot
    split: np.ndarray | None = None  # "train"/"val"/"test" per row, where the data decides
    groups: np.ndarray | None = None  # no group spans two splits
    notes: tuple[str, ...] = field(default=())  # what was dropped or skipped, with counts


def _similar(name: str, names: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, [str(n) for n in names], n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _open(path: str) -> io.BytesIO | Path:
    """A local path, or the bytes of an s3:// object through Metaflow's S3 client (the
    credentials and endpoint the S3 datastore uses)."""
    if not path.startswith("s3://"):
        p = Path(path)
        if not p.exists():
            raise DataError(f"{path}: no such file or folder")
        return p
    from metaflow import S3

    with S3() as s3:
        obj = s3.get(path, return_missing=True)
        if not obj.exists:
            raise DataError(f"{path}: no such object")
        return io.BytesIO(obj.blob)


# --- tables -------------------------------------------------------------------------------


class TableEncoder(BaseModel):
    """Table rows → floats: numeric columns with missing values filled by the training median
    (and a missing indicator where the training split had gaps); categorical columns one-hot,
    with one more slot for a category the training split did not have (or a missing value)."""

    model_config = ConfigDict(frozen=True)

    kind: Literal["table"] = "table"
    numeric: tuple[str, ...]
    fill: tuple[float, ...]
    indicators: tuple[str, ...]
    categorical: tuple[tuple[str, tuple[str, ...]], ...]

    @property
    def columns(self) -> tuple[str, ...]:
        """The columns `encode` reads, in order."""
        return (*self.numeric, *(c for c, _ in self.categorical))

    @property
    def feature_names(self) -> tuple[str, ...]:
        """The encoded features, in the network's (and the exports') input order."""
        onehot = [f"{c}={v}" for c, values in self.categorical for v in (*values, "<unseen>")]
        return (*self.numeric, *(f"{c} missing" for c in self.indicators), *onehot)

    def describe(self) -> str:
        return (
            f"table: {len(self.numeric)} numeric columns (missing → training median"
            f"{', with an indicator' if self.indicators else ''}), "
            f"{len(self.categorical)} categorical (one-hot with an unseen slot) → "
            f"{len(self.feature_names)} features"
        )

    @classmethod
    def fit(cls, train: pd.DataFrame, categorical: Sequence[str]) -> TableEncoder:
        numeric = [c for c in train.columns if c not in categorical]
        medians = train[numeric].median() if numeric else None
        fill = tuple(
            0.0 if medians is None or np.isnan(medians[c]) else float(medians[c]) for c in numeric
        )
        return cls(
            numeric=tuple(numeric),
            fill=fill,
            indicators=tuple(c for c in numeric if train[c].isna().any()),
            categorical=tuple(
                (c, tuple(sorted({str(v) for v in train[c].dropna()}))) for c in categorical
            ),
        )

    def frame(self, rows: Any) -> pd.DataFrame:
        """`rows` as a DataFrame with this encoder's columns: a missing column is an error that
        names it; extra columns are left out with a notice."""
        import pandas as pd

        df = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(rows)
        missing = [c for c in self.columns if c not in df.columns]
        if missing:
            raise DataError(
                f"input has no column {missing[0]!r}{_similar(missing[0], list(df.columns))}"
                + (f" (and {len(missing) - 1} more missing)" if len(missing) > 1 else "")
                + f"; the model reads {', '.join(map(repr, self.columns))}"
            )
        extra = [c for c in df.columns if c not in self.columns]
        if extra:
            warnings.warn(
                f"columns not used by the model, ignored: {', '.join(map(str, extra))}",
                stacklevel=3,
            )
        return df

    def encode(self, rows: Any) -> np.ndarray:
        """A float32 matrix (rows × `feature_names`) from a DataFrame with the columns."""
        import pandas as pd

        df = self.frame(rows)
        parts = []
        if self.numeric:
            values = np.column_stack([_numeric_values(df[c], c) for c in self.numeric]).astype(
                np.float32
            )
            gaps = np.isnan(values)
            parts.append(np.where(gaps, np.asarray(self.fill, np.float32), values))
            at = [self.numeric.index(c) for c in self.indicators]
            parts.append(gaps[:, at].astype(np.float32))
        for column, categories in self.categorical:
            codes = pd.Index(categories).get_indexer(df[column].astype("string"))
            codes = np.where(codes < 0, len(categories), codes)  # unseen or missing
            parts.append(np.eye(len(categories) + 1, dtype=np.float32)[codes])
        return np.concatenate(parts, axis=1) if parts else np.zeros((len(df), 0), np.float32)


def _numeric_values(column: pd.Series, name: str) -> np.ndarray:
    """A column as floats (missing → NaN); a value that is not a number is an error naming
    the column and the row."""
    import pandas as pd

    values = pd.to_numeric(column, errors="coerce")
    bad = values.isna() & column.notna()
    if bad.any():
        row = bad.to_numpy().nonzero()[0][0]
        raise DataError(
            f"column {name!r} is numeric but row {row} holds {column.iloc[row]!r}; fix the "
            "value (empty cells are missing values), or list the column in data.categorical"
        )
    out: np.ndarray = values.to_numpy(dtype=np.float64, na_value=np.nan)
    return out


def _read_table(path: str) -> pd.DataFrame:
    import pandas as pd

    src = _open(path)
    suffix = Path(path).suffix.lower()
    try:
        if suffix == ".csv":
            df = pd.read_csv(src)
        elif suffix in (".parquet", ".pq"):
            df = pd.read_parquet(src)
        else:
            raise DataError(f"{path}: a table is a .csv or .parquet file, not {suffix or 'this'}")
    except pd.errors.EmptyDataError as exc:
        raise DataError(f"{path}: the file is empty") from exc
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not a readable CSV file: {exc}") from exc
    except OSError as exc:
        raise DataError(f"{path}: cannot read it: {exc}") from exc
    except Exception as exc:
        if suffix == ".csv":
            raise
        raise DataError(f"{path}: not a readable Parquet file: {exc}") from exc
    if df.empty:
        raise DataError(f"{path}: the table has no rows")
    return df


def _column(df: pd.DataFrame, name: str, path: str, role: str) -> None:
    if name not in df.columns:
        raise DataError(
            f"{path}: no column {name!r}{_similar(name, list(df.columns))}; "
            f"columns: {', '.join(map(str, df.columns))}",
            field=role,
        )


def _is_text(column: pd.Series) -> bool:
    import pandas as pd

    return not (pd.api.types.is_numeric_dtype(column) or pd.api.types.is_bool_dtype(column))


def _categorical(df: pd.DataFrame, spec: DataSpec, features: list[str], path: str) -> list[str]:
    """The categorical columns: as declared, or text columns that are not mostly numbers (a
    mostly numeric column with a stray word is refused in `_numeric_values`, not one-hot)."""
    import pandas as pd

    if spec.categorical is not None:
        for c in spec.categorical:
            if c not in features:
                _column(df, c, path, "data.categorical")
                raise DataError(
                    f"{path}: data.categorical names {c!r}, which is not a feature",
                    field="data.categorical",
                )
        return list(spec.categorical)
    found = []
    for c in features:
        col = df[c]
        if pd.api.types.is_bool_dtype(col):
            found.append(c)
        elif _is_text(col):
            present = col.dropna()
            parsed = pd.to_numeric(present, errors="coerce").notna().mean() if len(present) else 0
            if parsed < _NUMERIC_SHARE:
                found.append(c)
    return found


def load_table(spec: DataSpec, task: str) -> Loaded:
    """A CSV or Parquet table: features, target, optional split or group column, checked."""

    assert spec.table is not None and spec.target is not None
    path = spec.table
    df = _read_table(path)
    for name, role in [
        (spec.target, "data.target"),
        *((c, "data.id") for c in spec.id),
        *((c, "data.features") for c in spec.features or ()),
        *((c, f"data.{r}") for r in ("split_column", "group_column") if (c := getattr(spec, r))),
    ]:
        _column(df, name, path, role)
    notes = []
    missing_y = df[spec.target].isna()
    if missing_y.any():
        if spec.missing_target == "refuse":
            raise DataError(
                f"{path}: column {spec.target!r} (the target) is missing in {int(missing_y.sum())}"
                f" of {len(df)} rows (first: row {int(missing_y.to_numpy().nonzero()[0][0])}); "
                "fill them, or set data.missing_target: drop to train without those rows",
                field="data.target",
            )
        notes.append(f"dropped {int(missing_y.sum())} rows with no {spec.target!r} (the target)")
        df = df[~missing_y].reset_index(drop=True)
        if df.empty:
            raise DataError(f"{path}: no row has a value in {spec.target!r} (the target)")
    reserved = {spec.target, *spec.id, spec.split_column, spec.group_column}
    features = list(spec.features or [c for c in df.columns if c not in reserved])
    if not features:
        raise DataError(f"{path}: no feature columns left besides the target and ids")
    categorical = _categorical(df, spec, features, path)
    x = df[features].copy()
    for c in features:
        if c in categorical:
            x[c] = x[c].astype("string")
        else:
            try:
                x[c] = _numeric_values(x[c], c)
            except DataError as exc:
                raise DataError(f"{path}: {exc}") from None
    y, classes = _targets(df[spec.target], task, f"{path}: column {spec.target!r}")
    split = None
    if spec.split_column:
        split = df[spec.split_column].astype("string").str.strip().str.lower().to_numpy()
        split = np.where(split == "validation", "val", split)
        odd = sorted({str(v) for v in split} - set(SPLIT_NAMES))
        if odd:
            raise DataError(
                f"{path}: column {spec.split_column!r} (the split) holds {', '.join(odd[:5])}; "
                "each value must be train, val or test",
                field="data.split_column",
            )
    groups = df[spec.group_column].astype("string").to_numpy() if spec.group_column else None
    return Loaded(
        x=x,
        y=y,
        classes=classes,
        encoder=None,  # fitted on the training split once it is known
        categorical=tuple(categorical),
        split=split,
        groups=groups,
        notes=tuple(notes),
    )


def _targets(values: Any, task: str, where: str) -> tuple[np.ndarray, tuple[str | int, ...] | None]:
    """Class indices with the class names (strings or integers as they were), or floats."""
    import pandas as pd

    series = pd.Series(values)
    if task == "regression":
        y = pd.to_numeric(series, errors="coerce")
        if y.isna().any():
            row = int(y.isna().to_numpy().nonzero()[0][0])
            raise DataError(
                f"{where}: a regression target must be numeric; row {row} holds "
                f"{series.iloc[row]!r}"
            )
        if not np.isfinite(y.to_numpy(dtype=np.float64)).all():
            raise DataError(f"{where}: the target holds infinity")
        return y.to_numpy(dtype=np.float32), None
    if pd.api.types.is_float_dtype(series) and not (series == series.round()).all():
        raise DataError(
            f"{where}: a classification target holds fractions (e.g. {series.iloc[0]!r}); "
            "is the task regression?"
        )
    if pd.api.types.is_numeric_dtype(series):
        series = series.astype(np.int64)
        classes: list[str | int] = sorted(int(v) for v in series.unique())
    else:
        series = series.astype("string")
        classes = sorted(str(v) for v in series.unique())
    if len(classes) < 2:
        raise DataError(f"{where}: the target has one class ({classes[0]!r}); need two or more")
    codes = pd.Categorical(series, categories=classes).codes
    return np.asarray(codes, np.int64), tuple(classes)


# --- image folders ------------------------------------------------------------------------


class ImageEncoder(BaseModel):
    """Image files, PIL images or pixel arrays → floats (N, C, H, W) in 0–255, at the size
    trained on (resized bilinearly), grayscale or RGB as trained."""

    model_config = ConfigDict(frozen=True)

    kind: Literal["images"] = "images"
    size: tuple[int, int]  # height, width
    channels: Literal[1, 3]

    def describe(self) -> str:
        mode = "grayscale" if self.channels == 1 else "RGB"
        return f"images: decoded as {mode}, resized to {self.size[0]}×{self.size[1]}"

    def pixels(self, image: Any) -> np.ndarray:
        """One image (a file path, a PIL image, or an (H, W[, C]) array) as uint8 (H, W, C)."""
        from PIL import Image

        if isinstance(image, str | Path):
            with Image.open(image) as im:
                return self.pixels(im.copy())
        if isinstance(image, np.ndarray):
            arr = image
            if arr.dtype != np.uint8:
                if not np.isfinite(arr).all():
                    raise DataError("an image array holds NaN or infinity")
                arr = np.clip(arr, 0, 255).astype(np.uint8)
            if arr.ndim == 3 and arr.shape[0] in (1, 3) and arr.shape[-1] not in (1, 3):
                arr = arr.transpose(1, 2, 0)  # (C, H, W) → (H, W, C)
            image = Image.fromarray(arr[..., 0] if arr.ndim == 3 and arr.shape[-1] == 1 else arr)
        im = image.convert("L" if self.channels == 1 else "RGB")
        if im.size != (self.size[1], self.size[0]):
            im = im.resize((self.size[1], self.size[0]), Image.Resampling.BILINEAR)
        out = np.asarray(im, np.uint8)
        return out[..., None] if out.ndim == 2 else out

    def encode(self, images: Any) -> np.ndarray:
        """A batch (a list of files, PIL images or arrays; or one (N, H, W[, C]) array)."""
        if isinstance(images, np.ndarray) and images.shape[1:] == (*self.size, self.channels):
            batch = images.astype(np.float32)
        else:
            batch = np.stack([self.pixels(im) for im in images]).astype(np.float32)
        return np.ascontiguousarray(batch.transpose(0, 3, 1, 2))


def load_images(spec: DataSpec) -> Loaded:
    """An image folder: one subfolder per class; corrupt files skipped and counted."""
    from PIL import Image, UnidentifiedImageError

    assert spec.images is not None
    root = _open(spec.images)
    if not isinstance(root, Path) or not root.is_dir():
        raise DataError(f"{spec.images}: an image source is a local folder of class folders")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(classes) < 2:
        raise DataError(
            f"{spec.images}: {len(classes)} class folder(s) ({', '.join(classes) or 'none'}); "
            "an image folder needs one subfolder per class, two or more"
        )
    decoded, labels, corrupt, modes = [], [], [], set()
    for label, name in enumerate(classes):
        files = sorted(
            p for p in (root / name).rglob("*") if p.is_file() and not p.name.startswith(".")
        )
        for f in files:
            try:
                with Image.open(f) as im:
                    im.load()
                    modes.add(im.mode)
                    decoded.append(im.convert("RGB"))
            except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
                corrupt.append(f.relative_to(root).as_posix())
                continue
            labels.append(label)
    empty = [c for i, c in enumerate(classes) if i not in set(labels)]
    if empty:
        raise DataError(f"{spec.images}: class folder {empty[0]!r} holds no readable image")
    encoder = ImageEncoder(size=spec.image_size, channels=1 if modes <= set(_GRAY_MODES) else 3)
    x = np.stack([encoder.pixels(im) for im in decoded])
    notes: tuple[str, ...] = ()
    if corrupt:
        shown = ", ".join(corrupt[:3]) + (", ..." if len(corrupt) > 3 else "")
        notes = (f"skipped {len(corrupt)} unreadable image file(s): {shown}",)
    return Loaded(
        x=x,
        y=np.asarray(labels, np.int64),
        classes=tuple(classes),
        encoder=encoder,
        notes=notes,
    )


# --- arrays -------------------------------------------------------------------------------


def load_arrays(spec: DataSpec, task: str) -> Loaded:
    """An .npz file with `x` and `y`, or with `x_train`, `y_train`, `x_val`, ... (its own
    splits)."""
    assert spec.arrays is not None
    path = spec.arrays
    src = _open(path)
    try:
        with np.load(src, allow_pickle=False) as npz:
            held = {k: npz[k] for k in npz.files}
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(f"{path}: not a readable .npz file: {exc}") from exc
    own = [f"{v}_{s}" for s in SPLIT_NAMES for v in ("x", "y")]
    if any(k in held for k in own):
        absent = [k for k in own if k not in held]
        if absent:
            raise DataError(f"{path}: has predefined splits but no {absent[0]!r}")
        x = np.concatenate([held[f"x_{s}"] for s in SPLIT_NAMES])
        raw_y = np.concatenate([held[f"y_{s}"] for s in SPLIT_NAMES])
        split = np.concatenate([np.full(len(held[f"x_{s}"]), s) for s in SPLIT_NAMES])
        lengths = {k: len(held[k]) for k in own}
    else:
        for key in ("x", "y"):
            if key not in held:
                raise DataError(
                    f"{path}: no array {key!r}{_similar(key, list(held))}; it holds "
                    f"{', '.join(held) or 'nothing'} (want x and y, or x_train, y_train, ...)"
                )
        x, raw_y, split = held["x"], held["y"], None
        lengths = {"x": len(x), "y": len(raw_y)}
    pairs = [("x", "y")] if split is None else [(f"x_{s}", f"y_{s}") for s in SPLIT_NAMES]
    for kx, ky in pairs:
        if lengths[kx] != lengths[ky]:
            raise DataError(f"{path}: {kx!r} has {lengths[kx]} rows and {ky!r} {lengths[ky]}")
    if not np.issubdtype(x.dtype, np.number) or x.ndim < 2:
        raise DataError(f"{path}: 'x' must be numbers, one row per example; got {x.dtype}{x.shape}")
    bad = ~np.isfinite(x.reshape(len(x), -1)).all(axis=1)
    if bad.any():
        raise DataError(
            f"{path}: 'x' holds NaN or infinity in {int(bad.sum())} rows (first: row "
            f"{int(bad.nonzero()[0][0])}); arrays are used as they are, so fill or drop them"
        )
    if raw_y.ndim > 1 and raw_y.reshape(len(raw_y), -1).shape[1] != 1:
        raise DataError(f"{path}: 'y' must hold one target per row; its shape is {raw_y.shape}")
    y, classes = _targets(raw_y.reshape(-1), task, f"{path}: array 'y'")
    if classes is not None and list(classes) == list(range(len(classes))):
        classes = None  # 0..k-1 already: predict returns the indices
    return Loaded(x=x.astype(np.float32), y=y, classes=classes, encoder=None, split=split)
