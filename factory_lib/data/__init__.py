"""Data: what every trial trains and is scored on.

- `splits`: bundled scikit-learn sets, deterministic splits, preprocessing fitted on train only,
  fingerprints and the leak check (numpy only: light).
- `bundled`, `shuffle`: scikit-learn's bundled sets and its `train_test_split` of rows, without
  importing scikit-learn (half a second of every start and train task).
- `describe`: what the start step records of the data (`DataSummary`, `Preprocessing`).
- `module`: the Lightning side: tensors on the device, or the user's `LightningDataModule`.
"""

from factory_lib.data.splits import DataLeakError, DataSummary, Preprocessing, Splits, load_splits

__all__ = ["DataLeakError", "DataSummary", "Preprocessing", "Splits", "load_splits"]
