"""scikit-learn's bundled data sets, read from the files it ships without importing it.

Importing scikit-learn costs about half a second, and the start step and every train task load
the objective's data. Digits, iris, wine and breast cancer are plain CSV files in scikit-learn's
package, read here as its own loaders read them (`tests/test_data_sources.py` checks each array
against them). Diabetes is scaled by scikit-learn's own `scale`, and a scikit-learn whose files
lie elsewhere is asked through its loaders, as before.
"""

from __future__ import annotations

import csv
import gzip
import importlib.util
from pathlib import Path

import numpy as np

# scikit-learn's CSV layout: a header row (rows, features, class names), then features + class.
_CSV = {"iris": "iris.csv", "wine": "wine_data.csv", "breast_cancer": "breast_cancer.csv"}
_DIGITS = "digits.csv.gz"  # 64 pixels + the digit per row, no header


def bundled_arrays(name: str) -> tuple[np.ndarray, np.ndarray]:
    """A bundled set's features (float64, flat rows) and targets, as `load_<name>()` has them."""
    folder = _data_folder()
    if folder is not None and name == "digits" and (folder / _DIGITS).is_file():
        with gzip.open(folder / _DIGITS, "rt", encoding="utf-8") as f:
            table = np.loadtxt(f, delimiter=",")
        return table[:, :-1], table[:, -1].astype(int)
    if folder is not None and name in _CSV and (folder / _CSV[name]).is_file():
        return _read_csv(folder / _CSV[name])
    from sklearn import datasets

    bunch = getattr(datasets, f"load_{name}")()
    return np.asarray(bunch.data), np.asarray(bunch.target)


def _data_folder() -> Path | None:
    """scikit-learn's `datasets/data` folder, found without importing scikit-learn."""
    spec = importlib.util.find_spec("sklearn")
    roots = spec.submodule_search_locations if spec is not None else None
    return Path(next(iter(roots))) / "datasets" / "data" if roots else None


def _read_csv(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with path.open("r", encoding="utf-8") as f:
        rows = csv.reader(f)
        header = next(rows)
        n, features = int(header[0]), int(header[1])
        data, target = np.empty((n, features)), np.empty((n,), dtype=int)
        for i, row in enumerate(rows):
            data[i] = np.asarray(row[:-1], dtype=np.float64)
            target[i] = np.asarray(row[-1], dtype=int)
    return data, target
