"""A user data module that streams its splits from .npy files on disk, a chunk at a time: the
training set is never in memory, so it may be far larger than the task's memory
(docs/data.md; benchmarks/data.py trains on one ten times larger).

Layout: `root/{train,val,test}_x.npy` and `_y.npy` (write them with `write_splits`). Each pass
reads the file with plain reads (no memory map, whose pages would count as the task's), in
chunks of `batch_size` rows, visiting the chunks in an order drawn from torch's seed for the
training split (so each trial shuffles its own way) and in file order for the others. With
`log`, each pass that reaches the end appends a JSON line (split, rows, its start and end in
epoch seconds) to that file, which is how the benchmark tells the checking pass from the
epoch and sees that the epoch read every row.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset

SPLITS = ("train", "val", "test")


def _header(path: Path) -> tuple[np.dtype, tuple[int, ...], int]:
    with path.open("rb") as f:
        version = np.lib.format.read_magic(f)
        read = {(1, 0): np.lib.format.read_array_header_1_0}.get(
            version, np.lib.format.read_array_header_2_0
        )
        shape, _, dtype = read(f)
        return np.dtype(dtype), tuple(shape), f.tell()


class _Chunks(IterableDataset):  # type: ignore[type-arg]
    def __init__(
        self, root: Path, split: str, batch_size: int, shuffle: bool, log: Path | None
    ) -> None:
        self.split, self.x, self.y = split, root / f"{split}_x.npy", root / f"{split}_y.npy"
        self.batch_size, self.shuffle, self.log = batch_size, shuffle, log

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        started, rows = time.time(), 0
        x_dtype, x_shape, x_at = _header(self.x)
        y_dtype, _, y_at = _header(self.y)
        n, row = x_shape[0], int(np.prod(x_shape[1:]))
        starts = np.arange(0, n, self.batch_size)
        if self.shuffle:
            starts = starts[torch.randperm(len(starts)).numpy()]
        for start in starts:
            count = min(self.batch_size, n - start)
            x = np.fromfile(
                self.x, x_dtype, count * row, offset=x_at + int(start) * row * x_dtype.itemsize
            )
            y = np.fromfile(self.y, y_dtype, count, offset=y_at + int(start) * y_dtype.itemsize)
            rows += int(count)
            yield torch.from_numpy(x.reshape(count, *x_shape[1:])), torch.from_numpy(y)
        if self.log is not None:
            line = {"split": self.split, "rows": rows, "start": started, "end": time.time()}
            with self.log.open("a") as f:
                f.write(json.dumps(line) + "\n")


class NpyStream(L.LightningDataModule):
    """Batches streamed from `root`'s .npy files; `num_classes` for classification; with
    `log`, a line per complete pass appended to that file."""

    def __init__(
        self, root: str, batch_size: int = 256, num_classes: int = 10, log: str | None = None
    ) -> None:
        super().__init__()
        self.root, self.batch_size, self.num_classes = Path(root), batch_size, num_classes
        self.log = Path(log) if log is not None else None

    def _loader(self, split: str) -> DataLoader:  # type: ignore[type-arg]
        chunks = _Chunks(self.root, split, self.batch_size, split == "train", self.log)
        return DataLoader(chunks, batch_size=None)

    def train_dataloader(self) -> DataLoader:  # type: ignore[type-arg]
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:  # type: ignore[type-arg]
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:  # type: ignore[type-arg]
        return self._loader("test")


def write_splits(root: Path, x: np.ndarray, y: np.ndarray, seed: int = 0) -> dict[str, int]:
    """Split (x, y) 70/15/15 with `seed` and write the .npy files `NpyStream` reads."""
    root.mkdir(parents=True, exist_ok=True)
    order = np.random.default_rng(seed).permutation(len(y))
    cut = [int(0.7 * len(y)), int(0.85 * len(y))]
    sizes = {}
    for split, idx in zip(SPLITS, np.split(order, cut), strict=True):
        np.save(root / f"{split}_x.npy", np.ascontiguousarray(x[idx], np.float32))
        np.save(root / f"{split}_y.npy", np.ascontiguousarray(y[idx], np.int64))
        sizes[split] = len(idx)
    return sizes
