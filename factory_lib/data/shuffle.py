"""scikit-learn's `train_test_split` of row indices, index for index, without scikit-learn.

Importing scikit-learn costs about half a second (SciPy's statistics among it), and every
start and train task split its rows with it: this is its ShuffleSplit and StratifiedShuffleSplit
(scikit-learn 1.x), the same draws from the same `numpy.random.RandomState`, so a seed splits
the rows as it always did. `tests/test_data_sources.py` checks it against scikit-learn.
"""

from __future__ import annotations

import math

import numpy as np


def train_test_indices(
    n: int, test_fraction: float, seed: int, stratify: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """What `train_test_split(range(n), test_size=test_fraction, random_state=seed,
    stratify=stratify)` returns: the train rows and the test rows."""
    n_test = math.ceil(test_fraction * n)
    n_train = n - n_test
    if n_train <= 0 or n_test <= 0:
        raise ValueError(
            f"with {n} rows, test fraction {test_fraction} leaves the train or test split empty"
        )
    rng = np.random.RandomState(seed)
    if stratify is None:
        permutation = rng.permutation(n)
        return permutation[n_test : n_test + n_train], permutation[:n_test]
    classes, y_indices, class_counts = np.unique(stratify, return_inverse=True, return_counts=True)
    if class_counts.min() < 2:
        raise ValueError("a stratified split needs at least 2 rows of every class")
    if min(n_train, n_test) < len(classes):
        raise ValueError(
            f"a stratified split of {n} rows into {n_train} and {n_test} cannot hold each of "
            f"{len(classes)} classes on both sides"
        )
    class_indices = np.split(np.argsort(y_indices, kind="stable"), np.cumsum(class_counts)[:-1])
    n_i = _approximate_mode(class_counts, n_train, rng)
    t_i = _approximate_mode(class_counts - n_i, n_test, rng)
    train: list[int] = []
    test: list[int] = []
    for i in range(len(classes)):
        permutation = rng.permutation(class_counts[i])
        rows = class_indices[i].take(permutation, mode="clip")
        train.extend(rows[: n_i[i]])
        test.extend(rows[n_i[i] : n_i[i] + t_i[i]])
    return rng.permutation(train), rng.permutation(test)


def _approximate_mode(
    class_counts: np.ndarray, n_draws: int, rng: np.random.RandomState
) -> np.ndarray:
    """Rows per class when drawing `n_draws` of them: each class's share rounded down, then
    one more for the largest remainders, ties broken at random (scikit-learn's own rule)."""
    continuous = class_counts / class_counts.sum() * n_draws
    floored = np.floor(continuous)
    need_to_add = int(n_draws - floored.sum())
    if need_to_add > 0:
        remainder = continuous - floored
        for value in np.sort(np.unique(remainder))[::-1]:
            (tied,) = np.where(remainder == value)
            add_now = min(len(tied), need_to_add)
            floored[rng.choice(tied, size=add_now, replace=False)] += 1
            need_to_add -= add_now
            if need_to_add == 0:
                break
    counts: np.ndarray = floored.astype(int)
    return counts
