"""Run a model, PyTorch or onnxruntime, over model-ready arrays in batches.

Every runtime gets the same inputs and the same thread count, so that outputs can be
compared element-wise and timings side by side.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from lmforge.tasks.base import MODEL_INPUTS

Runner = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]


def ort_session(path: Path, threads: int) -> ort.InferenceSession:
    """A CPU session with full graph optimization and `threads` intra-op threads."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only: no warnings about unused initializers
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def ort_runner(session: ort.InferenceSession) -> Runner:
    names = [o.name for o in session.get_outputs()]

    def run(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        feed = {name: inputs[name] for name in MODEL_INPUTS}
        return dict(zip(names, session.run(names, feed), strict=True))

    return run


def torch_runner(model: torch.nn.Module, output_names: tuple[str, ...]) -> Runner:
    model.eval()

    def run(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        tensors = {name: torch.from_numpy(inputs[name]) for name in MODEL_INPUTS}
        with torch.inference_mode():
            out = model(**tensors)
        return {name: out[name].float().numpy() for name in output_names}

    return run


def run_batched(run: Runner, inputs: dict[str, np.ndarray], batch_size: int) -> dict:
    """Outputs for all rows of `inputs`, computed `batch_size` rows at a time."""
    rows = len(inputs["input_ids"])
    parts: dict[str, list[np.ndarray]] = {}
    for start in range(0, rows, batch_size):
        batch = {name: inputs[name][start : start + batch_size] for name in MODEL_INPUTS}
        for name, value in run(batch).items():
            parts.setdefault(name, []).append(value)
    return {name: np.concatenate(values) for name, values in parts.items()}


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """PyTorch's intra-op thread count set to `threads` for the duration of the block."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)
