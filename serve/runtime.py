"""Model runtime: onnxruntime sessions and one wrapper per task, each behind a micro-batcher.

Wrappers encode and postprocess with `lmforge.tasks` (numpy + tokenizers), never torch.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from abc import ABC, abstractmethod
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from lmforge.tasks import classification, ner, qa
from lmforge.tasks.base import (
    MODEL_INPUTS,
    PAD_LOGIT,
    run_in_parts,
    single_rows,
    trim_padding,
)
from lmforge.tasks.registry import get_task
from lmforge.tokenizer import load_tokenizer
from serve.batcher import MicroBatcher, Unavailable
from serve.generator import GENERATION, DecodeLoop, GenerationModel, Job, Sampling, load_generation
from serve.metrics import Metrics
from serve.settings import Settings

log = logging.getLogger("lmforge.serve")


class ModelError(Exception):
    """A serving folder cannot be used; the message is the reason /readyz reports."""


class InputError(ValueError):
    """A request item this model cannot read (answered with a 422)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class NotServed(LookupError):
    """The task is not among LMFORGE_TASKS (answered with a 404)."""


# --- one wrapper per task ------------------------------------------------------------


class TaskModel(ABC):
    """A loaded task model: encode items, run onnxruntime, decode with lmforge.tasks."""

    task: str
    per_token: frozenset[str] = frozenset()  # outputs with a sequence axis

    def __init__(
        self,
        manifest: dict,
        tokenizer: Tokenizer,
        session: ort.InferenceSession,
        max_batch_tokens: int = 0,
        int8_rows_alone: bool = True,
    ) -> None:
        self.manifest = manifest
        self.tokenizer = tokenizer
        self.session = session
        self.max_batch_tokens = max_batch_tokens  # 0: one onnxruntime call per batch
        self.rows_alone = int8_rows_alone and bool(manifest.get("quantized", False))  # run()
        # Rows alone are small calls that leave cores idle in their serial parts: several
        # at once fill them, as concurrent per-request callers do.
        self._row_pool = (
            ThreadPoolExecutor(os.cpu_count() or 1, thread_name_prefix="rows")
            if self.rows_alone
            else None
        )
        self.labels: list[str] = list(manifest["labels"])
        self.max_seq_len = int(manifest["max_seq_len"])
        self.input_names = [i.name for i in session.get_inputs()]
        self.output_names = list(get_task(self.task).output_names)
        unknown = sorted(set(self.input_names) - set(MODEL_INPUTS))
        if unknown:
            raise ModelError(f"model inputs {unknown} are not among {list(MODEL_INPUTS)}")

    def info(self) -> dict[str, Any]:
        m = self.manifest
        return {
            "task": self.task,
            "labels": self.labels,
            "quantized": bool(m.get("quantized", False)),
            "version": str(m.get("version", "unknown")),
            "model_file": m["model_file"],
            "max_seq_len": self.max_seq_len,
        }

    def validate(self, items: list) -> None:  # noqa: B027 - a hook: only QA has one
        """Reject items the model cannot read; runs in the batch thread, per request."""

    @abstractmethod
    def encode(self, items: list) -> tuple[dict[str, np.ndarray], Any]:
        """Model inputs for `items`, plus whatever decode needs (offsets, windows)."""

    @abstractmethod
    def decode(self, outputs: dict[str, np.ndarray], items: list, state: Any) -> list[dict]:
        """One result per item, from the model outputs."""

    @abstractmethod
    def expected_shapes(self, rows: int, seq: int) -> dict[str, tuple[int, ...]]:
        """Output shapes for inputs of [rows, seq], given the manifest's labels."""

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """onnxruntime on `inputs`: an int8 model one row at a time, others in calls of
        at most `max_batch_tokens` padded tokens.

        An int8 model quantizes its activations with one scale per call, so a row batched
        with others (or padded) would get logits that depend on its company; alone and
        unpadded it gets exactly what the compress stage scored. The rows run on a thread
        pool (README: 0.77-0.89x the requests/s of padded calls at 32 clients, default
        size; LMFORGE_INT8_ROWS_ALONE=0 restores those). Split calls take rows shortest
        first, each call cut to its own longest row, so short texts batched with long
        ones are not padded to the long ones' length.
        """
        rows, seq = inputs["attention_mask"].shape
        if self.rows_alone:
            each = self._row_pool.map if rows > 1 else map  # one row: no thread hand-off
            return run_in_parts(self._run, inputs, single_rows(rows), self.per_token, each)
        if not self.max_batch_tokens or rows * seq <= self.max_batch_tokens:
            return self._run(inputs)
        lengths = inputs["attention_mask"].sum(axis=1)
        order = np.argsort(lengths, kind="stable")
        chunks = token_chunks(lengths[order], self.max_batch_tokens)
        return run_in_parts(self._run, inputs, [order[c] for c in chunks], self.per_token)

    def _run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        feed = {name: inputs[name] for name in self.input_names}
        return dict(zip(self.output_names, self.session.run(self.output_names, feed), strict=True))

    def predict(self, items: list) -> list[dict]:
        inputs, state = self.encode(items)
        return self.decode(self.run(inputs), items, state)

    @abstractmethod
    def samples(self) -> list:
        """Items for the load-time check: a short one and one that fills max_seq_len."""

    def check(self) -> None:
        """Run samples through encode, onnxruntime and decode; outputs must fit the manifest."""
        samples = self.samples()
        self.validate(samples)
        inputs, state = self.encode(samples)
        outputs = self.run(inputs)
        expected = self.expected_shapes(*inputs["input_ids"].shape)
        for name, shape in expected.items():
            if outputs[name].shape != shape:
                raise ModelError(
                    f"{self.manifest['model_file']}: output {name!r} has shape "
                    f"{outputs[name].shape}, expected {shape} for the {len(self.labels)} "
                    "labels in manifest.json"
                )
        self.decode(outputs, samples, state)


class Classifier(TaskModel):
    task = "classification"

    def samples(self):
        return ["A short sample sentence.", "sample " * self.max_seq_len]

    def encode(self, items: list[str]):
        return classification.encode_texts(self.tokenizer, items, self.max_seq_len).inputs, None

    def decode(self, outputs, items, state):
        return classification.classify(outputs["logits"], self.labels)

    def expected_shapes(self, rows, seq):
        return {"logits": (rows, len(self.labels))}


class Tagger(TaskModel):
    task = "ner"
    per_token = frozenset({"logits"})

    def samples(self):
        return ["Ada Lovelace lived in London.", "London " * self.max_seq_len]

    def encode(self, items: list[str]):
        # Words and windows as evaluation reads them (lmforge.tasks.ner), so the served
        # entities are the ones the stage scored.
        return ner.encode_texts(self.tokenizer, items, self.max_seq_len)

    def decode(self, outputs, items, state):
        entities = ner.entities_of(items, outputs["logits"], state, self.labels)
        return [{"entities": e} for e in entities]

    def expected_shapes(self, rows, seq):
        return {"logits": (rows, seq, len(self.labels))}


class Reader(TaskModel):
    task = "qa"
    per_token = frozenset({"start_logits", "end_logits"})

    def samples(self):
        context = "Ada Lovelace lived in London."
        return [("Where did Ada live?", context), ("Where?", context * self.max_seq_len)]

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.doc_stride = int(self.manifest["doc_stride"])
        self.max_answer_len = int(self.manifest["max_answer_len"])
        # Each window holds the question, 3 special tokens and at least stride + 1 context
        # tokens (tokenizers panics otherwise). Half of what is left keeps the window count
        # of a long context within twice the minimum.
        self.max_question_tokens = qa.max_question_tokens(self.max_seq_len, self.doc_stride)
        if self.max_question_tokens < 1:
            raise ModelError(
                f"manifest.json: doc_stride {self.doc_stride} leaves no room for a question "
                f"in max_seq_len {self.max_seq_len}"
            )

    def info(self) -> dict[str, Any]:
        extra = {"doc_stride": self.doc_stride, "max_question_tokens": self.max_question_tokens}
        return super().info() | extra

    def validate(self, items: list[tuple[str, str]]) -> None:
        self.tokenizer.no_truncation()
        self.tokenizer.no_padding()
        questions = [question for question, _ in items]
        encodings = self.tokenizer.encode_batch(questions, add_special_tokens=False)
        for i, encoding in enumerate(encodings):
            n = len(encoding.ids)
            if n > self.max_question_tokens:
                raise InputError(
                    "question_too_long",
                    f"items[{i}].question is {n} tokens; the model reads at most "
                    f"{self.max_question_tokens}",
                )

    def encode(self, items: list[tuple[str, str]]):
        questions, contexts = [q for q, _ in items], [c for _, c in items]
        features = qa.encode_pairs(
            self.tokenizer, questions, contexts, self.max_seq_len, self.doc_stride
        )
        return trim_padding(features.inputs), features

    def decode(self, outputs, items, state):
        contexts = [c for _, c in items]
        # Padding is no part of a window: its logits must not dilute a span's probability,
        # or an answer's score would depend on the requests it was batched with.
        seq = outputs["start_logits"].shape[1]
        padding = state.inputs["attention_mask"][:, :seq] == 0
        start, end = (
            np.where(padding, PAD_LOGIT, outputs[k]) for k in ("start_logits", "end_logits")
        )
        return qa.best_answers(start, end, state, contexts, self.max_answer_len)

    def expected_shapes(self, rows, seq):
        return {"start_logits": (rows, seq), "end_logits": (rows, seq)}


MODELS: dict[str, type[TaskModel]] = {m.task: m for m in (Classifier, Tagger, Reader)}


def token_chunks(lengths: np.ndarray, budget: int) -> list[slice]:
    """Consecutive slices of ascending `lengths`, each within `budget` tokens once padded to
    its longest row (a row over the budget goes alone)."""
    chunks, start = [], 0
    for i, length in enumerate(lengths.tolist()):
        if i > start and (i - start + 1) * max(length, 1) > budget:
            chunks.append(slice(start, i))
            start = i
    chunks.append(slice(start, len(lengths)))
    return chunks


def load_model(task: str, folder: Path, settings: Settings) -> TaskModel:
    """Open and check one serving folder; any problem becomes a ModelError with the reason."""
    if not folder.is_dir():
        raise ModelError(
            f"{folder} does not exist: run the compress stage (dvc repro) or set LMFORGE_ARTIFACTS"
        )
    manifest = read_manifest(folder / "manifest.json", task)
    model_path = folder / manifest["model_file"]
    for path in (model_path, folder / "tokenizer.json"):
        if not path.is_file():
            raise ModelError(f"{path} is missing")
    tokenizer = _step(folder / "tokenizer.json", load_tokenizer, folder)
    session = _step(model_path, open_session, model_path, settings)
    model = _step(
        model_path, MODELS[task], manifest, tokenizer, session,
        settings.max_batch_tokens, settings.int8_rows_alone,
    )  # fmt: skip
    _step(model_path, model.check)
    return model


def open_session(path: Path, settings: Settings) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = settings.intra_op_threads
    options.inter_op_num_threads = settings.inter_op_threads
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # The event loop and the tokenizer share the cores with onnxruntime's pool; threads
    # spinning between batches take their CPU (bench/serve_load.py, 2 cores, 6x384 at 32
    # clients: NER 212 vs 403 requests/s), though a lone client gains (QA 178 vs 127).
    spinning = "1" if settings.intra_op_spinning else "0"
    options.add_session_config_entry("session.intra_op.allow_spinning", spinning)
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _step(path: Path, load: Callable, *args):
    """One loading step; whatever onnxruntime or tokenizers raise becomes a ModelError."""
    try:
        return load(*args)
    except ModelError:
        raise
    except Exception as exc:
        raise ModelError(f"{path}: {type(exc).__name__}: {exc}") from exc


def read_manifest(path: Path, task: str) -> dict:
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(f"{path}: cannot read: {exc}") from exc
    if not isinstance(manifest, dict):
        raise ModelError(f"{path}: expected a JSON object")
    required = ["task", "labels", "max_seq_len", "model_file"]
    if task == "qa":
        required += ["doc_stride", "max_answer_len"]
    missing = [key for key in required if key not in manifest]
    if missing:
        raise ModelError(f"{path}: missing {', '.join(missing)}")
    if manifest["task"] != task:
        raise ModelError(f"{path}: task is {manifest['task']!r}, expected {task!r}")
    return manifest


# --- all tasks -------------------------------------------------------------------------


class Runtime:
    """The models of every configured task: loads them, routes requests, drains on shutdown."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.models: dict[str, TaskModel | GenerationModel] = {}
        self.failures: dict[str, str] = {}  # task -> reason it is not served
        self.draining = False
        self._batchers: dict[str, MicroBatcher] = {}
        self._decoder: DecodeLoop | None = None
        for task in settings.task_names:
            metrics.model_ready.labels(task).set(0)

    def status(self) -> dict[str, dict[str, str]]:
        states = {}
        for task in self.settings.task_names:
            if task in self.models:
                states[task] = {"status": "ready"}
            elif task in self.failures:
                states[task] = {"status": "failed", "reason": self.failures[task]}
            else:
                states[task] = {"status": "loading"}
        return states

    def ready(self) -> bool:
        return not self.draining and len(self.models) == len(self.settings.task_names)

    async def load(self) -> None:
        """Load and check each task's model in a thread; failures are logged, not raised."""
        for task in self.settings.task_names:
            folder = self.settings.artifacts / task
            if task == GENERATION:
                await self._load_generation(folder)
                continue
            try:
                model = await asyncio.to_thread(load_model, task, folder, self.settings)
            # Not only ModelError: whatever a broken folder raises, the other tasks still load.
            except Exception as exc:
                reason = str(exc) if isinstance(exc, ModelError) else f"{type(exc).__name__}: {exc}"
                self._failed(task, reason)
                continue
            self._batchers[task] = MicroBatcher(
                task,
                model.predict,
                max_wait_s=self.settings.batch_wait_ms / 1000,
                max_items=self.settings.max_batch_items,
                max_queue=self.settings.max_queue_items,
                metrics=self.metrics,
                check=model.validate,
                alone=self._alone if self.settings.inline_lone_requests else None,
                workers=self.settings.batch_workers,
            )
            self._ready_model(task, model)

    def _alone(self) -> bool:
        return self.metrics.http_in_flight <= 1

    async def _load_generation(self, folder: Path) -> None:
        if not (folder / "manifest.json").is_file():
            self._failed(
                GENERATION,
                f"{folder / 'manifest.json'} does not exist: run the compress stage (dvc repro) "
                "or set LMFORGE_ARTIFACTS",
            )
            return
        try:
            model = await asyncio.to_thread(
                load_generation, folder, lambda path: open_session(path, self.settings)
            )
        except Exception as exc:
            self._failed(GENERATION, f"{folder}: {type(exc).__name__}: {exc}")
            return
        self._decoder = DecodeLoop(
            model,
            max_streams=self.settings.max_streams,
            max_queue=self.settings.max_queue_items,
            metrics=self.metrics,
        )
        self._ready_model(GENERATION, model)

    def _failed(self, task: str, reason: str) -> None:
        self.failures[task] = reason
        log.error("model not loaded", extra={"task": task, "reason": reason})

    def _ready_model(self, task: str, model: TaskModel | GenerationModel) -> None:
        self.models[task] = model
        info = model.info()
        self.metrics.model.labels(task).info(
            {k: str(info[k]) for k in ("version", "quantized", "model_file")}
        )
        self.metrics.model_ready.labels(task).set(1)
        log.info("model ready", extra=info)

    def generator(self) -> GenerationModel:
        """The causal LM, or the reason it cannot take a request (404/503)."""
        model = self._model(GENERATION)
        assert isinstance(model, GenerationModel)
        return model

    def generate(self, prompt_ids: list[int], sampling: Sampling, prompt_tokens: int) -> Job:
        self.generator()  # served and loaded
        assert self._decoder is not None
        return self._decoder.submit(prompt_ids, sampling, prompt_tokens)

    def _model(self, task: str) -> TaskModel | GenerationModel:
        if task not in self.settings.task_names:
            raise NotServed(f"this service does not serve {task} (LMFORGE_TASKS)")
        model = self.models.get(task)
        if model is None:
            if task in self.failures:
                raise Unavailable(
                    "model_unavailable", f"the {task} model failed to load: {self.failures[task]}"
                )
            raise Unavailable("model_loading", f"the {task} model is still loading")
        return model

    async def predict(self, task: str, items: list) -> list[dict]:
        self._model(task)
        return await self._batchers[task].submit(items)

    async def close(self) -> None:
        self.draining = True
        for batcher in self._batchers.values():
            await batcher.close()
        if self._decoder is not None:
            await self._decoder.close()
