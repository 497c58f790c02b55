"""Decisions made by measuring, not guessing: the int8 format by accuracy, and which nodes
stay fp32 by how much their quantization hurts. Nothing here depends on timings, so the
same fp32 graph always gives the same int8 model.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from lmforge.compress.quantize import QuantOptions, candidates, quantizable_nodes, quantize

log = logging.getLogger("lmforge.compress")


@dataclass(frozen=True)
class Evaluation:
    """A model scored on the selection examples."""

    metric: float  # the task's headline metric
    error: float  # mean absolute difference of outputs from the fp32 graph

    def to_dict(self) -> dict:
        return {"metric": round(self.metric, 5), "output_mae": float(f"{self.error:.4g}")}


Evaluate = Callable[[Path], Evaluation]


def choose_quantization(
    fp32_path: Path,
    dst: Path,
    evaluate: Evaluate,
    max_drop: float,
    preferred: QuantOptions,
    search: bool,
    workdir: Path,
) -> dict:
    """Write the chosen int8 model to `dst`; return the measurements that chose it.

    The chosen format is the first of `candidates(preferred)` (fastest first) whose metric
    is at most `max_drop` below the fp32 graph's. If none is, the most accurate format is
    taken and nodes move back to fp32, most damaging first, until the metric is in budget.
    """
    reference = evaluate(fp32_path).metric
    tried = []
    for i, options in enumerate(candidates(preferred) if search else [preferred]):
        path = workdir / f"candidate{i}.int8.onnx"
        quantize(fp32_path, path, options)
        tried.append((options, evaluate(path), path))
        log.info("quantization %s: %s", options.label, tried[-1][1].to_dict())
    report = {
        "reference_metric": round(reference, 5),
        "max_metric_drop": max_drop,
        "candidates": [{**o.to_dict(), **e.to_dict()} for o, e, _ in tried],
    }
    within = [t for t in tried if reference - t[1].metric <= max_drop]
    if within:
        options, result, path = within[0]
    else:
        base = max(tried, key=lambda t: (t[1].metric, -t[1].error))[0]
        options, result, path, steps = _keep_fp32(
            fp32_path, base, evaluate, reference, max_drop, workdir
        )
        report["fp32_fallback"] = steps
    shutil.copyfile(path, dst)
    report["chosen"] = {**options.to_dict(), **result.to_dict()}
    report["within_budget"] = reference - result.metric <= max_drop
    return report


def _keep_fp32(
    fp32_path: Path,
    base: QuantOptions,
    evaluate: Evaluate,
    reference: float,
    max_drop: float,
    workdir: Path,
):
    """Greedy fp32 fallback: rank nodes by the output error of quantizing each one alone."""
    nodes = quantizable_nodes(fp32_path)
    single = workdir / "single.int8.onnx"
    damage = {}
    for node in nodes:
        quantize(fp32_path, single, base, only=[node])
        damage[node] = evaluate(single).error
    keep: list[str] = []
    steps = []
    options, result, path = base, None, None
    for node in sorted(nodes, key=damage.__getitem__, reverse=True):
        keep.append(node)
        options = replace(base, keep_fp32=tuple(keep))
        path = workdir / f"fallback{len(keep)}.int8.onnx"
        quantize(fp32_path, path, options)
        result = evaluate(path)
        steps.append(
            {"node": node, "alone_output_mae": float(f"{damage[node]:.4g}"), **result.to_dict()}
        )
        log.info("keeping %s in fp32: %s", node, result.to_dict())
        if reference - result.metric <= max_drop:
            break
    if result is None:  # nothing quantizable: the "int8" model is the fp32 one
        result, path = evaluate(fp32_path), fp32_path
    return options, result, path, steps
