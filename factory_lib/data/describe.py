"""What the start step knows of the data: shapes, sizes, fingerprints, fitted preprocessing."""

from __future__ import annotations

from factory_lib.data.splits import DataSummary, Preprocessing, load_splits
from factory_lib.objective import Objective


def describe_data(objective: Objective) -> tuple[DataSummary, Preprocessing | None]:
    """Shapes, sizes and fingerprints of the objective's data, and its fitted preprocessing.

    In-memory sources need numpy, pandas and scikit-learn (Pillow for images); a user module
    is built (which imports Lightning) and streamed, and fails here, before any trial, if it
    is unusable.
    """
    if objective.data.module is None:
        splits = load_splits(objective.data, objective.task)
        return splits.summary, splits.preprocessing
    from factory_lib.data.module import build_trial_data

    trial_data = build_trial_data(objective)
    return trial_data.summary, trial_data.preprocessing
