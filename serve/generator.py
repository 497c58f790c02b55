"""Text generation: the causal LM's serving folder, and one decode thread that runs every
active request's next token in one onnxruntime call (continuous batching).

A request joins the batch after its prompt pass (its cache left-padded to the batch's) and
leaves it when it ends: at `<|endoftext|>`, a stop string, max_new_tokens, or when its
client goes away. Sampling is per request in numpy, with its own seeded Generator, so a
seed gives the same text whatever else is in the batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from lmforge.decoder import Cache, Decoder, DecoderShape, sample_next
from lmforge.tasks.generation import context_ids
from serve.batcher import Unavailable
from serve.metrics import Metrics
from serve.textstream import TextStream, token_bytes

log = logging.getLogger("lmforge.serve")

GENERATION = "generation"
MANIFEST_KEYS = [*DecoderShape.__dataclass_fields__, "model_file"]


@dataclass
class Sampling:
    max_new_tokens: int
    temperature: float
    top_p: float
    seed: int | None
    stop: list[str]


@dataclass
class Job:
    """One generation request, shared by its route (event loop) and the decode thread."""

    prompt_ids: list[int]  # the context, as lmforge.tasks.generation builds it
    prompt_tokens: int  # of the prompt itself (an empty prompt's context is <|endoftext|>)
    sampling: Sampling
    text: TextStream
    events: asyncio.Queue  # ("token", str) ..., then ("done", dict) or ("error", str)
    rng: np.random.Generator
    enqueued: float = field(default_factory=time.perf_counter)
    generated: int = 0
    last_token: int = 0
    first_token_at: float | None = None
    cancelled: bool = False  # set by the route when the client goes away
    finish_reason: str | None = None

    def cancel(self) -> None:
        self.cancelled = True


class GenerationModel:
    """The serving folder of the causal LM: session, tokenizer, byte table, limits."""

    task = GENERATION

    def __init__(self, manifest: dict, tokenizer: Tokenizer, session) -> None:
        self.manifest = manifest
        self.tokenizer = tokenizer
        self.shape = DecoderShape.from_manifest(manifest)
        self.decoder = Decoder(session, self.shape)
        self.table = token_bytes(tokenizer)

    @property
    def max_positions(self) -> int:
        return self.shape.max_positions

    def info(self) -> dict[str, Any]:
        m = self.manifest
        return {
            "task": GENERATION,
            "labels": [],
            "quantized": bool(m.get("quantized", False)),
            "version": str(m.get("version", "unknown")),
            "model_file": m["model_file"],
            "max_seq_len": self.max_positions,
            "eos_token_id": self.shape.eos_token_id,
        }

    def prompt_ids(self, prompt: str) -> list[int]:
        """The context a completion follows, built as fine-tuning and compress built it."""
        return context_ids(self.tokenizer, prompt)

    def check(self) -> None:
        """A prompt pass and two cached steps; the logits must cover the vocabulary."""
        ids = self.prompt_ids("Hello")
        logits, cache = self.decoder.forward(np.array([ids]), Cache.empty(self.shape, 1))
        for _ in range(2):
            logits, cache = self.decoder.forward(logits[:, -1:].argmax(-1), cache)
        vocab = self.tokenizer.get_vocab_size()
        if logits.shape[:2] != (1, 1) or logits.shape[2] < vocab:
            raise ValueError(
                f"logits have shape {logits.shape}, expected (1, 1, >= {vocab}) for the tokenizer"
            )


def load_generation(
    folder: Path, session_factory: Callable[[Path], ort.InferenceSession]
) -> GenerationModel:
    """Open and check the serving folder; raises with the reason /readyz reports."""
    manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    missing = [key for key in MANIFEST_KEYS if key not in manifest]
    if missing:
        raise ValueError(f"{folder / 'manifest.json'}: missing {', '.join(missing)}")
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    session = session_factory(folder / manifest["model_file"])
    model = GenerationModel(manifest, tokenizer, session)
    model.check()
    return model


class DecodeLoop:
    """The decode thread: admits waiting jobs (prompt pass each), then runs one step for
    every active job per onnxruntime call, until each one ends."""

    def __init__(
        self, model: GenerationModel, *, max_streams: int, max_queue: int, metrics: Metrics
    ) -> None:
        self.model = model
        self._max_streams = max_streams
        self._max_queue = max_queue
        self._metrics = metrics
        self._loop = asyncio.get_running_loop()
        self._ready = threading.Condition()  # guards _waiting and _closing
        self._waiting: deque[Job] = deque()
        self._active: list[Job] = []  # decode thread only, like _cache
        self._cache: Cache | None = None
        self._closing = False
        self._stopped = self._loop.create_future()
        self._worker = threading.Thread(target=self._run, name="decode-generation", daemon=True)
        self._worker.start()

    def submit(
        self, prompt_ids: list[int], sampling: Sampling, prompt_tokens: int | None = None
    ) -> Job:
        job = Job(
            prompt_ids,
            len(prompt_ids) if prompt_tokens is None else prompt_tokens,
            sampling,
            TextStream(self.model.table, sampling.stop),
            asyncio.Queue(),
            np.random.default_rng(sampling.seed),  # None: fresh entropy
        )
        with self._ready:
            if self._closing:
                raise Unavailable("shutting_down", "the service is shutting down")
            if len(self._waiting) >= self._max_queue:
                raise Unavailable(
                    "overloaded", f"the generation queue is full ({len(self._waiting)} waiting)"
                )
            self._waiting.append(job)
            self._metrics.queue_depth.labels(GENERATION).set(len(self._waiting))
            self._ready.notify()
        return job

    async def close(self) -> None:
        """Finish every admitted and waiting request, then stop the thread (drain)."""
        with self._ready:
            self._closing = True
            self._ready.notify()
        await self._stopped

    # --- the decode thread ---------------------------------------------------------------

    def _run(self) -> None:
        try:
            while self._admit():
                if self._active:
                    self._step()
        finally:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                self._loop.call_soon_threadsafe(_resolve, self._stopped)

    def _admit(self) -> bool:
        """Take waiting jobs into the batch (prompt pass each); False when closed and idle."""
        with self._ready:
            while not self._waiting and not self._active:
                if self._closing:
                    return False
                self._ready.wait()
            room = self._max_streams - len(self._active)
            joining = [self._waiting.popleft() for _ in range(min(room, len(self._waiting)))]
            self._metrics.queue_depth.labels(GENERATION).set(len(self._waiting))
        events: list[tuple[Job, tuple]] = []
        caches = []
        for job in joining:
            if job.cancelled:  # its client left while it waited
                self._cancelled(job, events)
                continue
            try:
                ids = np.array([job.prompt_ids])
                logits, cache = self.model.decoder.forward(ids, Cache.empty(self.model.shape, 1))
            except Exception as exc:  # one bad prompt fails its own request only
                log.exception("prompt pass failed", extra={"task": GENERATION})
                events.append((job, ("error", f"generation failed: {exc}")))
                continue
            if self._advance(job, logits[0, -1], events):
                self._active.append(job)
                caches.append(cache)
        if caches:
            self._cache = Cache.concat(([self._cache] if self._cache else []) + caches)
        self._metrics.active_streams.set(len(self._active))
        self._deliver(events)
        return True

    def _step(self) -> None:
        """One token for every active job, in one onnxruntime call."""
        events: list[tuple[Job, tuple]] = []
        start = time.perf_counter()
        ids = np.array([[job.last_token] for job in self._active])
        try:
            logits, self._cache = self.model.decoder.forward(ids, self._cache)
        except Exception as exc:
            log.exception("decode step failed", extra={"task": GENERATION})
            events = [(job, ("error", f"generation failed: {exc}")) for job in self._active]
            self._active, self._cache = [], None
            self._deliver(events)
            return
        self._metrics.batch_size.labels(GENERATION).observe(len(self._active))
        self._metrics.inference.labels(GENERATION).observe(time.perf_counter() - start)
        keep = [
            i for i, job in enumerate(self._active) if self._advance(job, logits[i, -1], events)
        ]
        if len(keep) < len(self._active):
            self._active = [self._active[i] for i in keep]
            self._cache = self._cache.select(keep) if keep else None
            self._metrics.active_streams.set(len(self._active))
        self._deliver(events)

    def _advance(self, job: Job, logits: np.ndarray, events: list) -> bool:
        """Sample the job's next token and queue its text; False when the job has ended.

        Whatever goes wrong here (NaN logits, say) ends this job with an error event and
        never the decode thread, which every other request depends on.
        """
        if job.cancelled:
            self._cancelled(job, events)
            return False
        try:
            return self._next_token(job, logits, events)
        except Exception as exc:
            log.exception("sampling failed", extra={"task": GENERATION})
            events.append((job, ("error", f"generation failed: {exc}")))
            return False

    def _next_token(self, job: Job, logits: np.ndarray, events: list) -> bool:
        s = job.sampling
        token = sample_next(logits, s.temperature, s.top_p, job.rng)
        job.generated += 1
        if job.first_token_at is None:
            job.first_token_at = time.perf_counter()
            self._metrics.ttft.observe(job.first_token_at - job.enqueued)
        if token == self.model.shape.eos_token_id:
            job.finish_reason = "stop"
        else:
            job.last_token = token
            piece = job.text.push(token)
            events.append((job, ("token", piece)))
            if job.text.stopped:
                job.finish_reason = "stop"
            elif job.generated >= s.max_new_tokens:
                job.finish_reason = "length"
        if job.finish_reason is None:
            return True
        events.append((job, ("done", self._summary(job))))
        return False

    def _cancelled(self, job: Job, events: list) -> None:
        """End a job whose client went away; its route still gets a final event, so that
        nothing waits for this job forever."""
        job.finish_reason = "cancelled"
        self._metrics.cancelled.inc()
        self._metrics.generated_tokens.inc(job.generated)
        events.append((job, ("done", self._summary(job))))

    def _summary(self, job: Job) -> dict:
        if job.finish_reason != "cancelled":
            seconds = time.perf_counter() - job.enqueued
            self._metrics.generated_tokens.inc(job.generated)
            self._metrics.tokens_per_second.observe(job.generated / max(seconds, 1e-9))
        return {
            "text": job.text.finish(),  # the last piece: text held back until the end
            "prompt_tokens": job.prompt_tokens,
            "completion_tokens": job.generated,
            "finish_reason": job.finish_reason,
        }

    def _deliver(self, events: list[tuple[Job, tuple]]) -> None:
        if events:
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(_put_all, events)


def _put_all(events: list[tuple[Job, tuple]]) -> None:
    for job, event in events:
        job.events.put_nowait(event)


def _resolve(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)
