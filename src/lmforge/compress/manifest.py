"""What every serving folder's manifest.json says of where its model came from."""

from __future__ import annotations

from pathlib import Path

import onnx
import onnxruntime
import torch
import transformers

import lmforge
from lmforge.artifacts import sha256_file


def provenance(staging: Path, model_file: str, source_weights: Path, opset: int) -> dict:
    """The served file's version (its hash), the fine-tuned weights it was built from and
    the versions of everything that built it."""
    return {
        "version": sha256_file(staging / model_file)[:12],
        "source_sha256": sha256_file(source_weights),
        "versions": {
            "lmforge": lmforge.__version__,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "onnxruntime": onnxruntime.__version__,
            "onnx": onnx.__version__,
            "opset": opset,
        },
    }
