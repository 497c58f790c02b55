"""Latency percentiles and model sizes, measured the same way for every runtime.

Runtimes are timed round-robin (one call of each per round) so that background load on a
shared machine falls on all of them alike instead of on whichever ran last.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from lmforge.tasks.base import MODEL_INPUTS

WARMUP_RUNS = 5


def timing_inputs(
    inputs: dict[str, np.ndarray], batch_size: int, seq_len: int, pad_id: int = 0
) -> dict[str, np.ndarray]:
    """The first `batch_size` rows of `inputs`, padded or cut to exactly `seq_len`."""
    rows = np.arange(batch_size) % len(inputs["input_ids"])  # repeat rows if there are few
    out = {}
    for name in MODEL_INPUTS:
        value = inputs[name][rows][:, :seq_len]
        fill = pad_id if name == "input_ids" else 0
        width = seq_len - value.shape[1]
        out[name] = np.pad(value, ((0, 0), (0, width)), constant_values=fill)
    return out


def latency(
    calls: dict[str, Callable[[], object]], runs: int, warmup: int = WARMUP_RUNS
) -> dict[str, dict[str, float]]:
    """p50, p95 and min wall time in milliseconds of each call, timed round-robin.

    On a busy machine the min is the closest to the uncontended time.
    """
    for call in calls.values():
        for _ in range(warmup):
            call()
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(runs):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            times[name].append((time.perf_counter() - start) * 1e3)
    return {
        name: {
            "p50": float(np.percentile(t, 50)),
            "p95": float(np.percentile(t, 95)),
            "min": float(np.min(t)),
        }
        for name, t in times.items()
    }


def size_mb(path: Path) -> float:
    """File size in megabytes (10^6 bytes)."""
    return Path(path).stat().st_size / 1e6
