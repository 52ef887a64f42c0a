"""Dynamic batching: concurrent requests' rows answered by one model call.

Requests queue their rows; one collector takes the first waiting request, then whatever else
is already waiting (it queued while the previous batch ran), up to `max_rows`. It waits for
more, up to `max_wait_s`, only while requests are on their way (`arriving`: received, not
yet queued), so a lone client pays no wait. Then it runs the model once, in a worker thread
so the event loop keeps accepting requests. The model is looked up once per batch: a hot
swap takes effect between batches, and a batch in progress finishes on the model it started
with.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

# Called with a batch's rows; returns one answer per row and what the batch reports with them.
RunBatch = Callable[[np.ndarray], tuple[list[Any], Any]]


@dataclass
class _Waiting:
    rows: np.ndarray
    answer: asyncio.Future[tuple[list[Any], Any]]


class Batcher:
    """Queue rows from many requests; answer each from one model call over them all."""

    def __init__(
        self,
        run: RunBatch,
        max_rows: int,
        max_wait_s: float,
        on_batch: Callable[[int], None] = lambda rows: None,
    ) -> None:
        self.run = run
        self.max_rows = max_rows
        self.max_wait_s = max_wait_s
        self.on_batch = on_batch
        self._queue: asyncio.Queue[_Waiting] = asyncio.Queue()
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="batch")
        self._task: asyncio.Task[None] | None = None
        self.arriving = 0  # requests received and being read or checked, not queued yet

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._collect())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._pool.shutdown(wait=True)

    async def submit(self, rows: np.ndarray) -> tuple[list[Any], Any]:
        """This request's answers, one per row, and what the batch reported with them."""
        waiting = _Waiting(rows, asyncio.get_running_loop().create_future())
        await self._queue.put(waiting)
        return await waiting.answer

    async def _collect(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            count = len(batch[0].rows)
            deadline = time.monotonic() + self.max_wait_s
            while count < self.max_rows:
                try:
                    more = self._queue.get_nowait()
                except asyncio.QueueEmpty:
                    left = deadline - time.monotonic()
                    if left <= 0 or self.arriving <= 0:
                        break
                    try:
                        more = await asyncio.wait_for(self._queue.get(), left)
                    except TimeoutError:
                        break
                if count + len(more.rows) > self.max_rows and count > 0:
                    await self._answer(loop, batch)
                    batch, count = [], 0
                batch.append(more)
                count += len(more.rows)
            await self._answer(loop, batch)

    async def _answer(self, loop: asyncio.AbstractEventLoop, batch: list[_Waiting]) -> None:
        """Run the model once over the batch and hand each request its slice."""
        rows = np.concatenate([w.rows for w in batch]) if len(batch) > 1 else batch[0].rows
        self.on_batch(len(rows))
        try:
            answers, reported = await loop.run_in_executor(self._pool, self.run, rows)
        except Exception as exc:  # noqa: BLE001  each waiting request answers 500 with the cause
            for w in batch:
                if not w.answer.done():
                    w.answer.set_exception(exc)
            return
        start = 0
        for w in batch:
            if not w.answer.done():  # a client that went away leaves a cancelled future
                w.answer.set_result((answers[start : start + len(w.rows)], reported))
            start += len(w.rows)
