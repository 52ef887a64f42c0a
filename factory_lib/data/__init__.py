"""Data: what every trial trains and is scored on.

- `splits`: bundled scikit-learn sets, deterministic splits, preprocessing fitted on train only,
  fingerprints and the leak check (numpy and scikit-learn only: light).
- `describe`: what the start step records of the data (`DataSummary`, `Preprocessing`).
- `module`: the Lightning side: tensors on the device, or the user's `LightningDataModule`.
"""

from factory_lib.data.splits import DataLeakError, DataSummary, Preprocessing, Splits, load_splits

__all__ = ["DataLeakError", "DataSummary", "Preprocessing", "Splits", "load_splits"]
