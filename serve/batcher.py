"""Micro-batching: concurrent requests for one task become one onnxruntime call.

One worker thread per task gathers the batches and runs them, so the event loop only
enqueues a request and is woken once per batch with every result of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
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
    error: BaseException | None = None  # set by the worker when `check` refuses the items


class MicroBatcher:
    """Gathers concurrent requests for one task into a single call of `predict`.

    A batch closes when it holds `max_items` items or its oldest request has waited
    `max_wait_s`; requests that queued while the previous batch ran go at once. The wait
    is only worth paying under concurrency: once a batch ran alone with nothing queued
    behind it, the next request goes at once (a lone client pays no window), and waiting
    resumes as soon as requests overlap again.

    The worker thread does everything but the enqueueing: waiting for company, `check`
    (per request: its exception fails that request alone), `predict`, metrics. It hands
    a batch's results back to the event loop in one call.

    `workers` threads take batches from the queue, so up to that many onnxruntime calls
    overlap: one call of a bigger model leaves cores idle in its serial parts.

    A lone request skips the workers: when `alone()` says no other request is in flight
    (after one turn of the event loop, so requests that arrived together see each other),
    the last batch had no company, no batch is running and the request holds one item, it
    runs on the event loop itself. With nothing to batch, the two thread hand-offs were
    pure cost (~0.25 ms a request); the loop is blocked for one item's inference, which
    nobody else was waiting for.
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
        check: Callable[[list], None] | None = None,
        alone: Callable[[], bool] | None = None,
        workers: int = 1,
    ) -> None:
        self.task = task
        self._predict = predict
        self._check = check
        self._alone = alone
        self._max_wait = max_wait_s
        self._max_items = max_items
        self._max_queue = max_queue
        self._batch_size = metrics.batch_size.labels(task)
        self._inference = metrics.inference.labels(task)
        self._queue_depth = metrics.queue_depth.labels(task)
        self._loop = asyncio.get_running_loop()
        self._ready = threading.Condition()  # guards _jobs, _queued and _closing
        self._jobs: deque[_Job] = deque()
        self._queued = 0  # items in self._jobs
        self._concurrent = True  # the last batch had company: wait for more next time
        self._busy = 0  # batches being run, by the workers or inline
        self._inline = False  # one is running on the event loop: the workers hold back
        self._closing = False
        self._stopped = self._loop.create_future()
        self._workers_left = workers
        for number in range(workers):
            name = f"infer-{task}-{number}"
            threading.Thread(target=self._run, name=name, daemon=True).start()

    async def submit(self, items: list) -> list:
        if self._alone is not None and len(items) == 1 and not self._concurrent:
            await asyncio.sleep(0)  # let requests that arrived with this one show up
            if self._alone() and self._claim_for_inline():
                return self._run_inline(items)
        job = _Job(items, self._loop.create_future())
        with self._ready:
            if self._closing:
                raise Unavailable("shutting_down", "the service is shutting down")
            if self._queued + len(items) > self._max_queue:
                raise Unavailable(
                    "overloaded", f"the {self.task} queue is full ({self._queued} items waiting)"
                )
            self._jobs.append(job)
            self._queued += len(items)
            self._queue_depth.set(self._queued)
            self._ready.notify()
        return await job.future

    def _claim_for_inline(self) -> bool:
        with self._ready:
            if self._jobs or self._busy or self._concurrent or self._closing:
                return False
            self._busy += 1
            self._inline = True
            return True

    def _run_inline(self, items: list) -> list:
        job = _Job(items, None)
        try:
            results = self._run_batch([job])
        finally:
            with self._ready:
                self._busy -= 1
                self._inline = False
                self._ready.notify_all()
        if job.error is not None:
            raise job.error
        return results

    async def close(self) -> None:
        """Finish every queued request, then stop the worker (graceful shutdown)."""
        with self._ready:
            self._closing = True
            self._ready.notify_all()  # every worker must see it to stop
        await self._stopped

    # --- the worker thread ---------------------------------------------------------------

    def _run(self) -> None:
        try:
            while (batch := self._next_batch()) is not None:
                self._execute(batch)
        finally:
            with self._ready:
                self._workers_left -= 1
                last = self._workers_left == 0
            if last:
                self._to_loop(_resolve, self._stopped)

    def _next_batch(self) -> list[_Job] | None:
        """The next batch to run, once it is due; None when closing and nothing is left."""
        with self._ready:
            while True:
                if not self._jobs or self._inline:
                    if self._closing and not self._jobs:
                        return None
                    self._ready.wait()
                    continue
                delay = self._jobs[0].enqueued + self._max_wait - time.monotonic()
                waiting = self._concurrent and self._queued < self._max_items and not self._closing
                if delay > 0 and waiting:
                    self._ready.wait(delay)
                    continue
                return self._take()

    def _take(self) -> list[_Job]:
        batch: list[_Job] = []
        size = 0
        while self._jobs and (not batch or size + len(self._jobs[0].items) <= self._max_items):
            job = self._jobs.popleft()
            self._queued -= len(job.items)
            if not job.future.cancelled():  # the client went away while it waited
                batch.append(job)
                size += len(job.items)
        self._queue_depth.set(self._queued)
        self._busy += 1
        return batch

    def _execute(self, batch: list[_Job]) -> None:
        try:
            results = self._run_batch(batch)
        finally:
            with self._ready:
                self._busy -= 1
        self._to_loop(_deliver, batch, results)

    def _run_batch(self, batch: list[_Job]) -> list:
        """Check and predict one batch: results of the jobs without an error, in order."""
        if self._check is not None:
            for job in batch:
                try:
                    self._check(job.items)
                except BaseException as exc:  # a tokenizers panic too: never end the worker
                    job.error = exc
        items = [item for job in batch if job.error is None for item in job.items]
        results: list = []
        start = time.perf_counter()
        try:
            if items:
                self._batch_size.observe(len(items))
                results = self._predict(items)
        # BaseException: tokenizers reports Rust panics as PanicException, and one bad
        # batch must fail its own requests, not stop the worker for everyone after it.
        except BaseException as exc:
            log.exception("inference failed", extra={"task": self.task, "items": len(items)})
            failure = RuntimeError(f"{self.task} inference failed: {exc}")
            for job in batch:
                job.error = job.error or failure
        finally:
            if items:
                self._inference.observe(time.perf_counter() - start)
            with self._ready:
                self._concurrent = len(items) > 1 or bool(self._jobs)
        return results

    def _to_loop(self, callback: Callable, *args) -> None:
        # RuntimeError: the loop is closed, so nobody is waiting any more.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(callback, *args)


def _deliver(batch: list[_Job], results: list) -> None:
    """On the event loop: each request gets its slice of the results, or its error."""
    offset = 0
    for job in batch:
        if job.error is None:
            if not job.future.done():
                job.future.set_result(results[offset : offset + len(job.items)])
            offset += len(job.items)
        elif not job.future.done():
            job.future.set_exception(job.error)


def _resolve(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)
