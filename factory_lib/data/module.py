"""Lightning data modules: in-memory sources as tensors on the device, or the user's own module.

A user module is streamed, never materialised: the start step and every train task pass over
its loaders once to check them (batches are (x, y) tensor pairs, classes in range), count and
fingerprint each split, and find rows shared between splits (keeping only the held-out
splits' row hashes); the evaluator streams the validation and test loaders. The contract is
in docs/data.md.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import lightning as L
import numpy as np
import torch

from factory_lib.data.sources import DataError
from factory_lib.data.splits import (
    DataLeakError,
    DataSummary,
    Preprocessing,
    Splits,
    combined_fingerprint,
    fingerprint_arrays,
    load_splits,
    row_hashes,
)
from factory_lib.imports import resolve
from factory_lib.objective import Objective


class DataModuleError(DataError):
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


Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class TrialData:
    """What a trial trains and is evaluated on: `eval_sets` are the validation and test
    splits as re-iterable (x, y) batches, streamed by the evaluator."""

    datamodule: L.LightningDataModule
    summary: DataSummary
    preprocessing: Preprocessing | None
    eval_sets: dict[str, Batches]


class SplitChanged(DataModuleError):
    """The data a task built differs from what the start step described."""


class _Pairs:
    """A user loader's batches checked to be (x, y) tensor pairs; re-iterable."""

    def __init__(self, make: Callable[[], Iterable[Any]], where: str) -> None:
        self.make, self.where = make, where

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for batch in self.make():
            yield _pair(batch, self.where)


def _pair(batch: Any, where: str) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(batch, Mapping):
        keys = ", ".join(map(repr, batch))
        raise DataModuleError(
            f"{where} yields dict batches ({keys}); the factory needs (x, y) pairs: "
            "return (inputs, targets), e.g. (batch['image'], batch['label'])"
        )
    if not isinstance(batch, tuple | list) or len(batch) < 2:
        raise DataModuleError(
            f"{where} yields {type(batch).__name__} batches; the factory needs (x, y) pairs"
        )
    x, y = batch[0], batch[1]
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise DataModuleError(
            f"{where} yields ({type(x).__name__}, {type(y).__name__}); x and y must be tensors"
        )
    if len(x) != len(y):
        raise DataModuleError(f"{where} yields batches with {len(x)} inputs and {len(y)} targets")
    return x, y


@dataclass
class _Scan:
    """One streamed pass over a split: its size, an order-independent fingerprint (the sum of
    row hashes, so a shuffling loader gives the same one), and its rows' hashes if kept."""

    rows: int = 0
    total: int = 0  # modulo 2**64
    hashes: list[np.ndarray] = field(default_factory=list)

    @property
    def fingerprint(self) -> str:
        return fingerprint_arrays(np.asarray([self.rows, self.total], np.uint64))


def _scan(
    batches: Batches, keep: bool, seen: np.ndarray | None, check_y: Callable[[torch.Tensor], None]
) -> tuple[_Scan, int]:
    """Stream a split once; with `seen` (held-out row hashes), count its rows found there."""
    scan, shared = _Scan(), 0
    for x, y in batches:
        check_y(y)
        xh = row_hashes(x.detach().cpu().numpy())
        yh = row_hashes(y.detach().cpu().numpy().astype(np.float64))
        both = xh ^ (yh * np.uint64(0x9E3779B97F4A7C15))
        scan.rows += len(xh)
        scan.total = (scan.total + int(both.sum(dtype=np.uint64))) % 2**64
        if keep:
            scan.hashes.append(xh)
        if seen is not None:
            shared += int(np.isin(xh, seen).sum())
    return scan, shared


def _built(objective: Objective) -> tuple[L.LightningDataModule, dict[str, _Pairs], str]:
    """The user's module, checked to have its loaders and set up; its (x, y) loaders."""
    spec = objective.data
    assert spec.module is not None
    where = f"data.module {spec.module!r}"
    cls = resolve(spec.module, "data.module")
    try:
        dm = cls(**spec.kwargs)
    except TypeError as exc:
        raise DataModuleError(f"{where}: cannot build it with data.kwargs: {exc}") from exc
    if not isinstance(dm, L.LightningDataModule):
        raise DataModuleError(f"{where} is not a LightningDataModule")
    for name, role in LOADERS.items():
        if getattr(type(dm), f"{name}_dataloader") is getattr(
            L.LightningDataModule, f"{name}_dataloader"
        ):
            raise DataModuleError(f"{where} has no {name}_dataloader(): {role} (docs/data.md)")
    dm.prepare_data()
    dm.setup("fit")
    dm.setup("test")
    loaders = {
        k: _Pairs(getattr(dm, f"{k}_dataloader"), f"{where}: {k}_dataloader()") for k in LOADERS
    }
    return dm, loaders, where


def first_batch(objective: Objective, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """A user module's first (x, y) batch of `split`, without a pass over the rest."""
    _, loaders, where = _built(objective)
    try:
        return next(iter(loaders[split]))
    except StopIteration:
        raise DataModuleError(f"{where}: {split}_dataloader() yields no batch") from None


def _user_datamodule(objective: Objective, expected: DataSummary | None) -> TrialData:
    spec = objective.data
    dm, loaders, where = _built(objective)
    try:
        first_x, _ = next(iter(loaders["train"]))
    except StopIteration:
        raise DataModuleError(f"{where}: train_dataloader() yields no batch") from None
    if objective.task == "classification":
        n_outputs = getattr(dm, "num_classes", None)
        if not isinstance(n_outputs, int) or isinstance(n_outputs, bool):
            raise DataModuleError(f"{where}: a classification module needs an int 'num_classes'")
        if n_outputs < 2:
            raise DataModuleError(f"{where}: num_classes is {n_outputs}; need two or more")
    else:
        n_outputs = 1

    def check_y(split: str) -> Callable[[torch.Tensor], None]:
        def check(y: torch.Tensor) -> None:
            if objective.task != "classification":
                return
            if y.is_floating_point() or y.is_complex():
                raise DataModuleError(
                    f"{where}: {split}_dataloader() yields {y.dtype} targets; classification "
                    "targets are class indices (int64)"
                )
            if len(y) and (int(y.min()) < 0 or int(y.max()) >= n_outputs):
                raise DataModuleError(
                    f"{where}: {split}_dataloader() yields class {int(y.max())} (or "
                    f"{int(y.min())}); num_classes is {n_outputs}: classes are 0..{n_outputs - 1}"
                )

        return check

    held = {k: _scan(loaders[k], True, None, check_y(k))[0] for k in ("val", "test")}
    for k, scan in held.items():
        if scan.rows == 0:
            raise DataModuleError(f"{where}: {k}_dataloader() yields no example")
    val_rows: np.ndarray = np.concatenate(held["val"].hashes)
    test_rows: np.ndarray = np.concatenate(held["test"].hashes)
    train, leaked = _scan(
        loaders["train"], False, np.union1d(val_rows, test_rows), check_y("train")
    )
    inner = len(np.intersect1d(val_rows, test_rows))
    if leaked or inner:
        raise DataLeakError(
            f"{where}: splits share examples: {leaked} training rows are in val or test, "
            f"{inner} val rows are in test; a held-out split must hold out"
        )
    split_fps = {"train": train.fingerprint, **{k: v.fingerprint for k, v in held.items()}}
    summary = DataSummary(
        name=spec.module,
        task=objective.task,
        input_shape=tuple(first_x.shape[1:]),
        n_outputs=n_outputs,
        sizes={"train": train.rows, **{k: v.rows for k, v in held.items()}},
        fingerprint=combined_fingerprint(split_fps),
        split_fingerprints=split_fps,
        source="module",
    )
    _same_split(summary, expected, where)
    evals: dict[str, Batches] = {k: loaders[k] for k in ("val", "test")}
    return TrialData(datamodule=dm, summary=summary, preprocessing=None, eval_sets=evals)


def _same_split(summary: DataSummary, expected: DataSummary | None, where: str) -> None:
    """A task must train on exactly the data the start step described."""
    if expected is None or summary.split_fingerprints == expected.split_fingerprints:
        return
    differ = [
        f"{k} ({expected.sizes.get(k)} rows at the start, {summary.sizes.get(k)} here)"
        for k in summary.split_fingerprints
        if summary.split_fingerprints[k] != expected.split_fingerprints.get(k)
    ]
    raise SplitChanged(
        f"{where}: this task's data differs from what the start step described: "
        f"{', '.join(differ)}. The data must be the same in every task: a module splits with a "
        "fixed seed, a file must not change during a cycle"
    )


# What each loader of a user module is for.
LOADERS = {
    "train": "the trials train on it",
    "val": "the search picks on it (early stopping, the reward)",
    "test": "the held-out split: the promotion gate scores on it, the search never sees it",
}


def build_trial_data(objective: Objective, expected: DataSummary | None = None) -> TrialData:
    """The data module a trial trains on, with its evaluation batches; with `expected` (the
    start step's summary), refuse data whose split differs from it."""
    if objective.data.module is not None:
        return _user_datamodule(objective, expected)
    splits = load_splits(objective.data, objective.task)
    _same_split(splits.summary, expected, f"data {objective.data.path or objective.data.dataset}")
    dm = TensorDataModule(splits, objective.data.batch_size)
    return TrialData(
        datamodule=dm,
        summary=splits.summary,
        preprocessing=splits.preprocessing,
        eval_sets={k: DeviceBatches(*dm.tensors[k], EVAL_BATCH, None) for k in ("val", "test")},
    )
