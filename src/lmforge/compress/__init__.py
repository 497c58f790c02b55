"""Compress a fine-tuned task model for serving: ONNX export checked against PyTorch,
graph fusion, int8 quantization chosen by measured accuracy, and latency/size metrics.
"""

from lmforge.compress.export import ParityError
from lmforge.compress.generation import TASK as CAUSAL_TASK
from lmforge.compress.pipeline import compress_task
from lmforge.config import TASKS

# TODO(merge): once lmforge.config.TASKS lists generation, this is just TASKS.
COMPRESS_TASKS = tuple(dict.fromkeys([*TASKS, CAUSAL_TASK]))

__all__ = ["COMPRESS_TASKS", "ParityError", "compress_task"]
