"""Data modules that break the contract in docs/data.md, each in one way."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset


def _loader(n: int = 40, classes: int = 3, offset: float = 0.0) -> DataLoader[Any]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 4, generator=g) + offset
    y = torch.arange(n) % classes
    return DataLoader(TensorDataset(x, y), batch_size=8)


class NoTestLoader(L.LightningDataModule):
    num_classes = 3

    def train_dataloader(self) -> DataLoader[Any]:
        return _loader()

    def val_dataloader(self) -> DataLoader[Any]:
        return _loader(offset=10)


class _Three(NoTestLoader):
    def test_dataloader(self) -> DataLoader[Any]:
        return _loader(offset=20)


class DictBatches(_Three):
    def train_dataloader(self) -> Any:
        return [{"image": torch.zeros(2, 4), "label": torch.zeros(2, dtype=torch.long)}]


class OneClass(_Three):
    num_classes = 1


class ClassOutOfRange(_Three):
    def val_dataloader(self) -> DataLoader[Any]:
        return _loader(classes=6, offset=10)


class Leaky(_Three):
    def test_dataloader(self) -> DataLoader[Any]:
        return _loader(n=8)  # the first eight training rows again
