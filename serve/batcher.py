"""Micro-batching: concurrent requests for one task become one onnxruntime call.

One worker thread per task runs the batches, so inference stays off the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from serve.metrics import Metrics

log = logging.getLogger("lmforge.serve")


class Unavailable(Exception):
    """The task cannot take requests right now (answered with a 503)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class _Job:
    items: list
    future: asyncio.Future
    enqueued: float = field(default_factory=time.monotonic)


class MicroBatcher:
    """Gathers concurrent requests for one task into a single call of `predict`.

    A batch closes when it holds `max_items` items or its oldest request has waited
    `max_wait_s`; requests that queued while the previous batch ran go at once. The wait
    is only worth paying under concurrency: once a batch ran alone with nothing queued
    behind it, the next request goes at once (a lone client pays no window), and waiting
    resumes as soon as requests overlap again. One worker thread per task runs the
    batches, so inference stays off the event loop.
    """

    def __init__(
        self,
        task: str,
        predict: Callable[[list], list],
        *,
        max_wait_s: float,
        max_items: int,
        max_queue: int,
        metrics: Metrics,
    ) -> None:
        self.task = task
        self._predict = predict
        self._max_wait = max_wait_s
        self._max_items = max_items
        self._max_queue = max_queue
        self._metrics = metrics
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"infer-{task}")
        self._jobs: deque[_Job] = deque()
        self._queued = 0  # items in self._jobs
        self._concurrent = True  # the last batch had company: wait for more next time
        self._wakeup = asyncio.Event()
        self._closing = False
        self._worker = asyncio.create_task(self._run(), name=f"batcher-{task}")

    async def submit(self, items: list) -> list:
        if self._closing:
            raise Unavailable("shutting_down", "the service is shutting down")
        if self._queued + len(items) > self._max_queue:
            raise Unavailable(
                "overloaded", f"the {self.task} queue is full ({self._queued} items waiting)"
            )
        job = _Job(items, asyncio.get_running_loop().create_future())
        self._jobs.append(job)
        self._set_queued(self._queued + len(items))
        self._wakeup.set()
        return await job.future

    async def close(self) -> None:
        """Finish every queued request, then stop the worker (graceful shutdown)."""
        self._closing = True
        self._wakeup.set()
        await self._worker
        self._executor.shutdown(wait=True)

    async def _run(self) -> None:
        while self._jobs or not self._closing:
            if not self._jobs:
                await self._wait(None)
                continue
            delay = self._jobs[0].enqueued + self._max_wait - time.monotonic()
            waiting = self._concurrent and self._queued < self._max_items and not self._closing
            if delay > 0 and waiting:
                await self._wait(delay)
                continue
            await self._execute(self._take())

    async def _wait(self, timeout: float | None) -> None:
        self._wakeup.clear()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._wakeup.wait(), timeout)

    def _take(self) -> list[_Job]:
        batch: list[_Job] = []
        size = 0
        while self._jobs and (not batch or size + len(self._jobs[0].items) <= self._max_items):
            job = self._jobs.popleft()
            self._set_queued(self._queued - len(job.items))
            if not job.future.cancelled():  # the client went away while it waited
                batch.append(job)
                size += len(job.items)
        return batch

    async def _execute(self, batch: list[_Job]) -> None:
        if not batch:
            return
        items = [item for job in batch for item in job.items]
        self._metrics.batch_size.labels(self.task).observe(len(items))
        start = time.perf_counter()
        try:
            results = await asyncio.get_running_loop().run_in_executor(
                self._executor, self._predict, items
            )
        except (asyncio.CancelledError, KeyboardInterrupt, SystemExit):
            raise
        # BaseException: tokenizers reports Rust panics as PanicException, and one bad
        # batch must fail its own requests, not stop the worker for everyone after it.
        except BaseException as exc:
            log.exception("inference failed", extra={"task": self.task, "items": len(items)})
            for job in batch:
                if not job.future.done():
                    job.future.set_exception(RuntimeError(f"{self.task} inference failed: {exc}"))
            return
        finally:
            self._metrics.inference.labels(self.task).observe(time.perf_counter() - start)
            self._concurrent = len(items) > 1 or bool(self._jobs)
        offset = 0
        for job in batch:
            if not job.future.done():
                job.future.set_result(results[offset : offset + len(job.items)])
            offset += len(job.items)

    def _set_queued(self, value: int) -> None:
        self._queued = value
        self._metrics.queue_depth.labels(self.task).set(value)
