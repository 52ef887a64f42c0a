"""A sample of the traffic a server receives, kept beside the datastore for `factory drift`.

Each row a request sends is kept with probability `rate`, encoded as the exports take it (the
form `factory drift` compares with the training split). Kept rows are written `rows_per_file`
at a time (and at shutdown) as `.npz` files named by the time of their first row; past
`max_files` the oldest is removed, so the sample is bounded and recent.

The folder is `<datastore root>/<flow>/traffic/<objective>/` beside the datastore: a local
folder, or an S3 prefix (`s3://bucket/...`, written with boto3) on the S3 datastore.
"""

from __future__ import annotations

import io
import logging
import os
import random
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

TRAFFIC_DIR = "traffic"
LOG = logging.getLogger("factory.serve")


@dataclass(frozen=True)
class SamplingConfig:
    """How much of the traffic to keep, and where: a folder or an s3:// prefix (None: off)."""

    folder: str | Path | None
    rate: float = 0.1
    rows_per_file: int = 1000
    max_files: int = 20


def traffic_folder(datastore_root: str, flow_name: str, objective_name: str, branch: str) -> str:
    """Where a datastore's served traffic of a search (an objective on a branch) is kept (a
    path or an s3:// URL)."""
    return f"{datastore_root.rstrip('/')}/{flow_name}/{TRAFFIC_DIR}/{objective_name}@{branch}"


class SampleFolder(Protocol):
    """Where sample files live: a local folder or an S3 prefix."""

    def names(self) -> list[str]: ...  # the sample files' names, oldest first
    def write(self, name: str, body: bytes) -> str: ...  # whole, or not at all; where
    def read(self, name: str) -> bytes: ...
    def delete(self, name: str) -> None: ...


class _LocalFolder:
    def __init__(self, path: Path) -> None:
        self.path = path

    def names(self) -> list[str]:
        return sorted(p.name for p in self.path.glob("*.npz")) if self.path.is_dir() else []

    def write(self, name: str, body: bytes) -> str:
        self.path.mkdir(parents=True, exist_ok=True)
        temporary = self.path / f".{name}.tmp"
        temporary.write_bytes(body)
        os.replace(temporary, self.path / name)  # readers never see half a file
        return str(self.path / name)

    def read(self, name: str) -> bytes:
        return (self.path / name).read_bytes()

    def delete(self, name: str) -> None:
        (self.path / name).unlink(missing_ok=True)


class _S3Folder:
    """An S3 prefix, through boto3 (its endpoint and credentials as the environment says)."""

    def __init__(self, url: str) -> None:
        import boto3

        self.url = url.rstrip("/")
        self.bucket, _, prefix = self.url.removeprefix("s3://").partition("/")
        self.prefix = f"{prefix}/" if prefix else ""
        self.client: Any = boto3.client("s3")

    def names(self) -> list[str]:
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=self.prefix
        )
        keys = [o["Key"] for page in pages for o in page.get("Contents", ())]
        return sorted(k[len(self.prefix) :] for k in keys if k.endswith(".npz"))

    def write(self, name: str, body: bytes) -> str:
        self.client.put_object(Bucket=self.bucket, Key=self.prefix + name, Body=body)
        return f"{self.url}/{name}"

    def read(self, name: str) -> bytes:
        body: bytes = self.client.get_object(Bucket=self.bucket, Key=self.prefix + name)[
            "Body"
        ].read()
        return body

    def delete(self, name: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self.prefix + name)


def sample_folder(where: str | Path) -> SampleFolder:
    """The sample's folder: an s3:// prefix, or a local path."""
    if str(where).startswith("s3://"):
        return _S3Folder(str(where))
    return _LocalFolder(Path(where))


class TrafficSampler:
    """Keep a random share of the rows served; write them in bounded, rotated files, in a
    writer thread of their own, so that no request waits for a file (on S3, a PUT)."""

    def __init__(self, config: SamplingConfig, seed: int | None = None) -> None:
        if not 0.0 <= config.rate <= 1.0:
            raise ValueError(f"sample rate {config.rate}: give a share between 0 and 1")
        self.config = config
        self._folder = sample_folder(config.folder) if config.folder is not None else None
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self._rows: list[np.ndarray] = []
        self._first_at = 0.0
        self._written = 0
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="sample")
        self._pending: list[Future[str]] = []
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
            full = self._take() if len(self._rows) >= self.config.rows_per_file else None
        if full is not None:
            writing = self._writer.submit(self._write, *full, trial_id)
            writing.add_done_callback(_log_failure)
            self._pending = [*(f for f in self._pending if not f.done()), writing]

    def wait(self) -> list[str]:
        """Wait for the files being written; where they went."""
        pending, self._pending = self._pending, []
        return [f.result() for f in pending]

    def flush(self, trial_id: str) -> str | None:
        """Write the rows kept so far (at shutdown), after the files being written; where."""
        self.wait()
        with self._lock:
            full = self._take() if self._rows else None
        return self._write(*full, trial_id) if full is not None else None

    def _take(self) -> tuple[list[np.ndarray], float, int]:
        """The rows kept so far, when the first came, and the file's number; the buffer empties."""
        self._written += 1
        rows, self._rows = self._rows, []
        return rows, self._first_at, self._written

    def _write(self, rows: list[np.ndarray], first_at: float, number: int, trial_id: str) -> str:
        folder = self._folder
        assert folder is not None
        name = f"{int(first_at * 1000):015d}-{os.getpid()}-{number:06d}.npz"
        body = io.BytesIO()
        np.savez(body, x=np.stack(rows), first_at=first_at, trial_id=trial_id)
        where = folder.write(name, body.getvalue())
        for old in folder.names()[: -self.config.max_files]:
            folder.delete(old)
        return where


def _log_failure(writing: Future[str]) -> None:
    """A sample file that could not be written is logged; serving goes on without it."""
    failure = writing.exception()
    if failure is not None:
        LOG.error("traffic sample file not written: %s", failure, exc_info=failure)


@dataclass(frozen=True)
class ServedSample:
    """Rows read back from the sample: encoded as the exports take them."""

    x: np.ndarray
    files: int
    first_at: float | None  # when the oldest row read was served (seconds since the epoch)


def read_sample(where: str | Path, since: float | None = None) -> ServedSample:
    """The rows served since `since` (seconds since the epoch; None: all that are kept)."""
    folder = sample_folder(where)
    parts, firsts = [], []
    for name in folder.names():
        if since is not None and int(name.split("-", 1)[0]) / 1000 < since - 0.001:
            continue  # the name says when its first row came: no need to read it
        with np.load(io.BytesIO(folder.read(name))) as data:
            first_at = float(data["first_at"])
            if since is not None and first_at < since:
                continue
            parts.append(np.asarray(data["x"], np.float32))
            firsts.append(first_at)
    if not parts:
        return ServedSample(np.zeros((0, 0), np.float32), 0, None)
    return ServedSample(np.concatenate(parts), len(parts), min(firsts))
