"""Compress a fine-tuned task model for serving: ONNX export checked against PyTorch,
graph fusion, int8 quantization chosen by measured accuracy, and latency/size metrics.
"""

from lmforge.compress.export import ParityError
from lmforge.compress.pipeline import compress_task

__all__ = ["ParityError", "compress_task"]
