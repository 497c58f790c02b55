"""Constants and helpers the test modules share (fixtures live in conftest.py)."""

from __future__ import annotations

from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

# A model small enough that a DeepSpeed run of a dozen steps takes seconds.
TINY_MODEL = {
    "hidden_size": 32,
    "num_layers": 1,
    "num_heads": 2,
    "intermediate_size": 64,
    "max_seq_len": 32,
    "dropout": 0.0,
    "attention_dropout": 0.0,
}


def default_params() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text())
