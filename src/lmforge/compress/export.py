"""Export a task model to ONNX (dynamic batch and sequence axes, pinned opset) and check
that the ONNX graph computes what PyTorch computes.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

from lmforge.errors import LmforgeError
from lmforge.tasks.base import MODEL_INPUTS


class ParityError(LmforgeError):
    """The exported graph's outputs differ from PyTorch's by more than the tolerance."""


class _NamedOutputs(torch.nn.Module):
    """Returns the task's outputs as a plain tuple, in ONNX order."""

    def __init__(self, model: torch.nn.Module, output_names: tuple[str, ...]) -> None:
        super().__init__()
        self.model = model
        self.output_names = output_names

    def forward(self, input_ids, attention_mask, token_type_ids):
        out = self.model(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
        )
        return tuple(out[name] for name in self.output_names)


def export_onnx(
    model: torch.nn.Module,
    path: Path,
    output_names: tuple[str, ...],
    sample: dict[str, np.ndarray],
    opset: int,
) -> None:
    """Trace `model` on `sample` into `path`; inputs are MODEL_INPUTS, outputs `output_names`.

    The TorchScript exporter (dynamo=False) is used: it needs no onnxscript and produces
    the graph patterns onnxruntime's transformer optimizer knows how to fuse.
    """
    wrapped = _NamedOutputs(model.eval(), output_names)
    args = tuple(torch.from_numpy(sample[name]) for name in MODEL_INPUTS)
    axes = {name: {0: "batch", 1: "sequence"} for name in MODEL_INPUTS}
    for name, has_sequence in zip(output_names, _sequence_outputs(wrapped, args), strict=True):
        axes[name] = {0: "batch", 1: "sequence"} if has_sequence else {0: "batch"}
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        # Tracer and deprecation warnings about the legacy exporter are expected here.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapped,
            args,
            str(path),
            input_names=list(MODEL_INPUTS),
            output_names=list(output_names),
            dynamic_axes=axes,
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )


def _sequence_outputs(model: torch.nn.Module, args: tuple) -> list[bool]:
    """Which outputs have a sequence axis: run at two lengths and see which dim 1 follows."""
    shorter = tuple(a[:, :-1] for a in args)
    with torch.inference_mode():
        full, cut = model(*args), model(*shorter)
    return [a.dim() > 1 and a.shape[1] != b.shape[1] for a, b in zip(full, cut, strict=True)]


def sequence_outputs(path: Path) -> set[str]:
    """Names of the graph outputs whose second axis is the dynamic sequence axis."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    found = set()
    for out in graph.output:
        dims = out.type.tensor_type.shape.dim
        if len(dims) > 1 and dims[1].dim_param == "sequence":
            found.add(out.name)
    return found


def max_abs_diff(
    expected: dict[str, np.ndarray],
    actual: dict[str, np.ndarray],
    attention_mask: np.ndarray,
    per_token: set[str],
) -> float:
    """Largest absolute difference over all outputs, at the positions that are real tokens.

    Per-token outputs (`per_token`) at padding positions are never read by any task, and
    fused attention kernels are free to compute them differently, so they are not compared.
    """
    worst = 0.0
    for name, want in expected.items():
        diff = np.abs(want.astype(np.float64) - actual[name].astype(np.float64))
        if name in per_token:
            diff = diff[attention_mask.astype(bool)]
        worst = max(worst, float(diff.max(initial=0.0)))
    return worst


def check_parity(task_name: str, what: str, diff: float, tolerance: float) -> None:
    """Raise ParityError naming the task, the model and the diff when it exceeds tolerance."""
    if not diff <= tolerance:  # also catches NaN
        raise ParityError(
            f"{task_name}: {what} differs from PyTorch: max abs diff of outputs {diff:.3g} "
            f"> parity_tolerance {tolerance:g} on the validation inputs"
        )
