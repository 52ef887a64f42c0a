"""A sample of the traffic a server receives, kept beside the datastore for `factory drift`.

Each row a request sends is kept with probability `rate`, encoded as the exports take it (the
form `factory drift` compares with the training split). Kept rows are written `rows_per_file`
at a time (and at shutdown) as `.npz` files named by the time of their first row; past
`max_files` the oldest is removed, so the sample is bounded and recent.

The folder is `<datastore root>/<flow>/traffic/<objective>/` on the local datastore; a server
on the S3 datastore is given a local folder with `--sample-dir`.
"""

from __future__ import annotations

import os
import random
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

TRAFFIC_DIR = "traffic"


@dataclass(frozen=True)
class SamplingConfig:
    """How much of the traffic to keep, and where (None: sampling is off)."""

    folder: Path | None
    rate: float = 0.1
    rows_per_file: int = 1000
    max_files: int = 20


def traffic_folder(datastore_root: str, flow_name: str, objective_name: str) -> Path:
    """Where a local datastore's served traffic of an objective is kept."""
    return Path(datastore_root) / flow_name / TRAFFIC_DIR / objective_name


class TrafficSampler:
    """Keep a random share of the rows served; write them in bounded, rotated files."""

    def __init__(self, config: SamplingConfig, seed: int | None = None) -> None:
        if not 0.0 <= config.rate <= 1.0:
            raise ValueError(f"sample rate {config.rate}: give a share between 0 and 1")
        self.config = config
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self._rows: list[np.ndarray] = []
        self._first_at = 0.0
        self._written = 0
        self.kept = 0

    @property
    def on(self) -> bool:
        return self.config.folder is not None and self.config.rate > 0

    def offer(self, rows: np.ndarray, trial_id: str) -> None:
        """Keep each of these served rows with probability `rate`."""
        if not self.on:
            return
        keep = [r for r in rows if self._random.random() < self.config.rate]
        if not keep:
            return
        with self._lock:
            if not self._rows:
                self._first_at = time.time()
            self._rows.extend(keep)
            self.kept += len(keep)
            if len(self._rows) >= self.config.rows_per_file:
                self._write(trial_id)

    def flush(self, trial_id: str) -> Path | None:
        """Write the rows kept so far (at shutdown, or for a drift check now)."""
        with self._lock:
            return self._write(trial_id) if self._rows else None

    def _write(self, trial_id: str) -> Path:
        folder = self.config.folder
        assert folder is not None
        folder.mkdir(parents=True, exist_ok=True)
        self._written += 1
        name = f"{int(self._first_at * 1000):015d}-{os.getpid()}-{self._written:06d}.npz"
        temporary = folder / f".{name}.tmp"
        with temporary.open("wb") as f:
            np.savez(f, x=np.stack(self._rows), first_at=self._first_at, trial_id=trial_id)
        path = folder / name
        os.replace(temporary, path)  # readers never see half a file
        self._rows = []
        for old in sample_files(folder)[: -self.config.max_files]:
            old.unlink(missing_ok=True)
        return path


def sample_files(folder: Path) -> list[Path]:
    """The sample's files, oldest first."""
    return sorted(folder.glob("*.npz")) if folder.is_dir() else []


@dataclass(frozen=True)
class ServedSample:
    """Rows read back from the sample: encoded as the exports take them."""

    x: np.ndarray
    files: int
    first_at: float | None  # when the oldest row read was served (seconds since the epoch)


def read_sample(folder: Path, since: float | None = None) -> ServedSample:
    """The rows served since `since` (seconds since the epoch; None: all that are kept)."""
    parts, firsts = [], []
    for path in sample_files(folder):
        with np.load(path) as data:
            first_at = float(data["first_at"])
            if since is not None and first_at < since:
                continue
            parts.append(np.asarray(data["x"], np.float32))
            firsts.append(first_at)
    if not parts:
        return ServedSample(np.zeros((0, 0), np.float32), 0, None)
    return ServedSample(np.concatenate(parts), len(parts), min(firsts))
