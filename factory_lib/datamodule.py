"""Lightning data modules: the bundled sets as in-memory tensors, or the user's own module."""

from __future__ import annotations

from dataclasses import dataclass

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from factory_lib.data import DataSummary, Preprocessing, Splits, fingerprint_arrays, load_splits
from factory_lib.imports import resolve
from factory_lib.objective import Objective


class DataModuleError(ValueError):
    """A user data module that cannot be used; the message says what is wrong."""


class TensorDataModule(L.LightningDataModule):
    """Small data sets held as tensors; shuffling follows the trial's seed."""

    def __init__(self, splits: Splits, batch_size: int) -> None:
        super().__init__()
        self.tensors = {
            k: (torch.from_numpy(splits.x[k]), torch.from_numpy(splits.y[k])) for k in splits.x
        }
        self.batch_size = batch_size

    def train_dataloader(self) -> DataLoader[tuple[torch.Tensor, ...]]:
        # seed_everything(trial seed) ran before fit, so each trial shuffles its own way.
        generator = torch.Generator().manual_seed(torch.initial_seed())
        return DataLoader(
            TensorDataset(*self.tensors["train"]),
            batch_size=self.batch_size,
            shuffle=True,
            generator=generator,
        )

    def val_dataloader(self) -> DataLoader[tuple[torch.Tensor, ...]]:
        return DataLoader(TensorDataset(*self.tensors["val"]), batch_size=1024)

    def test_dataloader(self) -> DataLoader[tuple[torch.Tensor, ...]]:
        return DataLoader(TensorDataset(*self.tensors["test"]), batch_size=1024)


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
