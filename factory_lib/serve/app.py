"""The HTTP application: `/predict`, `/health`, `/model`, `/metrics`, and hot swap.

`ModelSlot` holds the served model; a watcher thread asks the registry every `poll_s` seconds
(`model.current_champion`) and, when the champion changed (a promotion, an approval, a
rollback), loads the new one beside the old and swaps the reference. Requests and batches
read the slot once, so each is answered whole by one model, and none waits for a load.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from factory_lib.runs.client import default_branch
from factory_lib.serve.batching import Batcher
from factory_lib.serve.inputs import (
    MAX_BODY_BYTES,
    MAX_ROWS,
    BadRequest,
    Parsed,
    numeric_rows,
    parse_body,
    table_rows,
)
from factory_lib.serve.model import Current, ModelVersion, ServedModel, current_champion
from factory_lib.serve.traffic import SamplingConfig, TrafficSampler

LOG = logging.getLogger("factory.serve")
LATENCY_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


@dataclass(frozen=True)
class ServeConfig:
    """How `factory serve` runs: what to serve, how to batch, what to sample."""

    objective: str
    branch: str | None = None
    poll_s: float = 30.0
    batching: bool = True
    max_batch_rows: int = 64
    max_wait_ms: float = 2.0
    max_body_bytes: int = MAX_BODY_BYTES
    max_rows: int = MAX_ROWS
    threads: int = 0  # onnxruntime's intra-op threads; 0: its default
    sampling: SamplingConfig = field(default_factory=lambda: SamplingConfig(None))


class Metrics:
    """The Prometheus metrics `/metrics` exposes, in a registry of the app's own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "factory_serve_requests", "Requests answered", ["endpoint", "status"], registry=r
        )
        self.errors = Counter(
            "factory_serve_errors", "Requests answered 4xx or 5xx", ["status"], registry=r
        )
        self.latency = Histogram(
            "factory_serve_predict_seconds",
            "Time to answer /predict",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_rows = Histogram(
            "factory_serve_batch_rows", "Rows per model call", buckets=BATCH_BUCKETS, registry=r
        )
        self.model = Gauge(
            "factory_serve_model_info",
            "The model served (1 for the current one)",
            ["objective", "trial_id", "version", "promoted_in_cycle"],
            registry=r,
        )
        self.swaps = Counter("factory_serve_swaps", "Hot swaps to a new champion", registry=r)
        self.registry_errors = Counter(
            "factory_serve_registry_errors", "Failed reads of the registry", registry=r
        )
        self.sampled = Counter(
            "factory_serve_sampled_rows", "Rows kept in the traffic sample", registry=r
        )

    def served(self, objective: str, version: ModelVersion) -> None:
        self.model.clear()
        self.model.labels(
            objective, version.trial_id, version.weights_sha[:12], str(version.promoted_in_cycle)
        ).set(1)


class ModelSlot:
    """The model being served, swapped whole when the registry's champion changes."""

    def __init__(
        self,
        config: ServeConfig,
        metrics: Metrics,
        read: Callable[[str, str | None], Current] = current_champion,
    ) -> None:
        self.config = config
        self.metrics = metrics
        self.read = read
        self.model = ServedModel(read(config.objective, config.branch), config.threads)
        metrics.served(config.objective, self.model.version)

    def refresh(self) -> bool:
        """Ask the registry; load and swap in its champion if it is not the one served."""
        current = self.read(self.config.objective, self.config.branch)
        old = self.model.version
        package = current.bundle.package
        if (package.trial_id, package.weights_sha) == (old.trial_id, old.weights_sha):
            return False
        new = ServedModel(current, self.config.threads)  # loaded while the old one serves
        self.model = new
        self.metrics.served(self.config.objective, new.version)
        self.metrics.swaps.inc()
        LOG.info(
            "swapped %s -> %s (promoted in cycle %d; registry read from %s)",
            old.trial_id,
            new.version.trial_id,
            new.version.promoted_in_cycle,
            current.run,
        )
        return True

    def watch(self, stop: threading.Event) -> None:
        """Refresh every `poll_s` seconds until `stop`; a failed read keeps the model served."""
        while not stop.wait(self.config.poll_s):
            try:
                self.refresh()
            except Exception:  # logged and counted; the served model stays
                self.metrics.registry_errors.inc()
                LOG.exception("registry read failed; still serving %s", self.model.version.trial_id)


def create_app(
    config: ServeConfig, read: Callable[[str, str | None], Current] = current_champion
) -> FastAPI:
    """The application for `config.objective`'s current champion (LookupError: none yet)."""
    metrics = Metrics()
    slot = ModelSlot(config, metrics, read)
    branch = default_branch(config.branch)  # the search served: /model says which
    sampler = TrafficSampler(config.sampling)
    stop = threading.Event()
    batcher: Batcher | None = None

    def run_batch(rows: np.ndarray) -> tuple[list[Any], ModelVersion]:
        model = slot.model  # once per batch: a swap lands between batches
        return model.predict(rows), model.version

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        nonlocal batcher
        watcher = threading.Thread(target=slot.watch, args=(stop,), name="swap", daemon=True)
        watcher.start()
        if config.batching:
            batcher = Batcher(
                run_batch,
                config.max_batch_rows,
                config.max_wait_ms / 1000,
                metrics.batch_rows.observe,
            )
            batcher.start()
        version = slot.model.version
        LOG.info(
            "serving %s of %s (%s; promoted in cycle %d); batching %s; sampling %s",
            version.trial_id,
            config.objective,
            version.runtime,
            version.promoted_in_cycle,
            f"up to {config.max_batch_rows} rows, {config.max_wait_ms} ms"
            if config.batching
            else "off",
            f"{config.sampling.rate:.0%} to {config.sampling.folder}" if sampler.on else "off",
        )
        try:
            yield
        finally:
            stop.set()
            if batcher is not None:
                await batcher.stop()
            written = sampler.flush(slot.model.version.trial_id)
            if written is not None:
                LOG.info("traffic sample written: %s", written)

    app = FastAPI(title=f"factory serve: {config.objective}", lifespan=lifespan)
    one_call = asyncio.Semaphore(1)  # without batching: one model call at a time, like a batcher

    async def answer(rows: np.ndarray) -> tuple[list[Any], ModelVersion]:
        if batcher is not None:
            return await batcher.submit(rows)
        async with one_call:
            metrics.batch_rows.observe(len(rows))
            return await asyncio.to_thread(run_batch, rows)

    @app.post("/predict")
    async def predict(request: Request) -> Response:
        started = time.perf_counter()
        if batcher is not None:
            batcher.arriving += 1  # the batch being collected may wait for this one
        try:
            try:
                body = await _read_body(request, config.max_body_bytes)
                parsed = parse_body(body, config.max_rows)
                rows = _encode(slot.model, parsed)
            finally:
                if batcher is not None:
                    batcher.arriving -= 1
            answers, version = await answer(rows)
            before = sampler.kept
            sampler.offer(rows, version.trial_id)
            metrics.sampled.inc(sampler.kept - before)
            key = "prediction" if parsed.single else "predictions"
            response: Response = JSONResponse(
                {key: answers[0] if parsed.single else answers, "model": version.trial_id}
            )
        except BadRequest as exc:
            response = JSONResponse({"error": exc.message}, status_code=exc.status)
        except Exception as exc:  # the boundary: a logged 500, never a crash
            LOG.exception("internal error answering /predict")
            response = JSONResponse(
                {"error": f"internal error ({type(exc).__name__}); the server log has it"},
                status_code=500,
            )
        metrics.latency.observe(time.perf_counter() - started)
        _count(metrics, "/predict", response.status_code)
        return response

    @app.get("/health")
    def health() -> Response:
        _count(metrics, "/health", 200)
        return JSONResponse(
            {"status": "ok", "objective": config.objective, "model": slot.model.version.trial_id}
        )

    @app.get("/model")
    def model() -> Response:
        _count(metrics, "/model", 200)
        return JSONResponse({**slot.model.describe(), "branch": branch})

    @app.get("/metrics")
    def prometheus() -> Response:
        _count(metrics, "/metrics", 200)
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    app.state.slot, app.state.sampler, app.state.metrics = slot, sampler, metrics
    return app


def _count(metrics: Metrics, endpoint: str, status: int) -> None:
    metrics.requests.labels(endpoint, str(status)).inc()
    if status >= 400:
        metrics.errors.labels(str(status)).inc()


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it is known to be over `limit` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BadRequest(413, f"body of {declared} bytes is over the limit of {limit}")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise BadRequest(413, f"body is over the limit of {limit} bytes")
    return bytes(body)


def _encode(model: ServedModel, parsed: Parsed) -> np.ndarray:
    """Checked rows as the export takes them; the data's own encoder for table rows."""
    prep = model.preprocessing
    encoder = prep.encoder if prep is not None else None
    if encoder is not None and encoder.kind == "table":
        frame = table_rows(parsed, encoder.columns)
        try:
            return model.encode(frame)
        except ValueError as exc:  # a value the encoder cannot read, named by it
            raise BadRequest(422, str(exc)) from None
    rows = numeric_rows(parsed, model.input_shape)
    return model.encode(rows)
