"""Lightning data modules: the bundled sets as in-memory tensors, or the user's own module."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader

from factory_lib.data.splits import (
    DataSummary,
    Preprocessing,
    Splits,
    fingerprint_arrays,
    load_splits,
    shared_rows,
)
from factory_lib.imports import resolve
from factory_lib.objective import Objective


class DataModuleError(ValueError):
    """A user data module that cannot be used; the message says what is wrong."""


EVAL_BATCH = 1024


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class DeviceBatches:
    """Mini-batches cut from tensors that already live on the device: no DataLoader.

    With `generator`, each pass draws exactly what a shuffling DataLoader with that generator
    draws (one int64 for its workers' base seed, the permutation it uses, and the empty tail
    permutation torch's RandomSampler draws when exhausted), so a trial sees the same batches
    either way (tested).
    """

    def __init__(
        self, x: torch.Tensor, y: torch.Tensor, batch_size: int, generator: torch.Generator | None
    ) -> None:
        self.x, self.y, self.batch_size, self.generator = x, y, batch_size, generator

    def __len__(self) -> int:
        return -(-len(self.y) // self.batch_size)

    def skip(self, epochs: int) -> DeviceBatches:
        """Draw past `epochs` passes, as a trial continued from a checkpoint does."""
        for _ in range(epochs):
            self._order()
        return self

    def _order(self) -> torch.Tensor | None:
        if self.generator is None:
            return None
        n = len(self.y)
        torch.empty((), dtype=torch.int64).random_(generator=self.generator)
        order = torch.randperm(n, generator=self.generator).to(self.x.device)
        # Drawn now, not on exhaustion: Lightning stops after the last batch without asking
        # for more, and the draws (hence the next epoch's order) must not depend on who
        # iterates.
        torch.randperm(n, generator=self.generator)
        return order

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.y)
        order = self._order()
        for i in range(0, n, self.batch_size):
            if order is None:
                yield self.x[i : i + self.batch_size], self.y[i : i + self.batch_size]
            else:
                idx = order[i : i + self.batch_size]
                yield self.x[idx], self.y[idx]


class TensorDataModule(L.LightningDataModule):
    """Small data sets held as tensors, moved to the accelerator once and batched there."""

    def __init__(self, splits: Splits, batch_size: int, device: torch.device | None = None) -> None:
        super().__init__()
        self.device = device or default_device()
        self.tensors = {
            k: (
                torch.from_numpy(splits.x[k]).to(self.device),
                torch.from_numpy(splits.y[k]).to(self.device),
            )
            for k in splits.x
        }
        self.batch_size = batch_size

    def train_batches(self, seed: int) -> DeviceBatches:
        return DeviceBatches(
            *self.tensors["train"], self.batch_size, torch.Generator().manual_seed(seed)
        )

    def train_dataloader(self) -> DeviceBatches:
        # seed_everything(trial seed) ran before fit, so each trial shuffles its own way; a
        # trial continued from a checkpoint goes on with the order its parent would have had.
        module = self.trainer.lightning_module if self.trainer is not None else None
        return self.train_batches(torch.initial_seed()).skip(getattr(module, "start_epoch", 0))

    def val_dataloader(self) -> DeviceBatches:
        return DeviceBatches(*self.tensors["val"], EVAL_BATCH, None)

    def test_dataloader(self) -> DeviceBatches:
        return DeviceBatches(*self.tensors["test"], EVAL_BATCH, None)


@dataclass(frozen=True)
class TrialData:
    """What a trial trains and is evaluated on."""

    datamodule: L.LightningDataModule
    summary: DataSummary
    preprocessing: Preprocessing | None
    eval_sets: dict[str, tuple[torch.Tensor, torch.Tensor]]


def _collect(loader: DataLoader[tuple[torch.Tensor, ...]]) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*((b[0], b[1]) for b in loader), strict=True)
    return torch.cat(xs), torch.cat(ys)


def _user_datamodule(objective: Objective) -> TrialData:
    spec = objective.data
    assert spec.module is not None
    cls = resolve(spec.module, "data.module")
    try:
        dm = cls(**spec.kwargs)
    except TypeError as exc:
        raise DataModuleError(
            f"data.module {spec.module!r}: cannot build it with data.kwargs: {exc}"
        ) from exc
    if not isinstance(dm, L.LightningDataModule):
        raise DataModuleError(f"data.module {spec.module!r} is not a LightningDataModule")
    dm.prepare_data()
    dm.setup("fit")
    dm.setup("test")
    try:
        evals = {"val": _collect(dm.val_dataloader()), "test": _collect(dm.test_dataloader())}
        first_x, _ = next(iter(dm.train_dataloader()))[:2]
    except (TypeError, ValueError, StopIteration) as exc:
        raise DataModuleError(
            f"data.module {spec.module!r}: its loaders must yield (x, y) batches: {exc}"
        ) from exc
    if objective.task == "classification":
        n_outputs = getattr(dm, "num_classes", None)
        if not isinstance(n_outputs, int):
            raise DataModuleError(
                f"data.module {spec.module!r}: a classification module needs an int 'num_classes'"
            )
    else:
        n_outputs = 1
    train_x = torch.cat([b[0] for b in dm.train_dataloader()])
    shared = shared_rows(
        {"train": train_x.numpy(), **{k: x.numpy() for k, (x, _) in evals.items()}}
    )
    if shared:  # the user's own split: warn, naming the count, rather than refuse
        print(f"warning: data.module {spec.module!r}: splits share examples: {shared}", flush=True)
    split_fps = {k: fingerprint_arrays(x.numpy(), y.numpy()) for k, (x, y) in evals.items()}
    summary = DataSummary(
        name=spec.module,
        task=objective.task,
        input_shape=tuple(first_x.shape[1:]),
        n_outputs=n_outputs,
        sizes={k: len(y) for k, (_, y) in evals.items()},
        fingerprint=fingerprint_arrays(
            *(np.frombuffer(f.encode(), np.uint8) for f in split_fps.values())
        ),
        split_fingerprints=split_fps,
    )
    return TrialData(datamodule=dm, summary=summary, preprocessing=None, eval_sets=evals)


def build_trial_data(objective: Objective) -> TrialData:
    """The data module a trial trains on, with its evaluation tensors."""
    if objective.data.module is not None:
        return _user_datamodule(objective)
    splits = load_splits(objective.data, objective.task)
    dm = TensorDataModule(splits, objective.data.batch_size)
    return TrialData(
        datamodule=dm,
        summary=splits.summary,
        preprocessing=splits.preprocessing,
        eval_sets={k: dm.tensors[k] for k in ("val", "test")},
    )
