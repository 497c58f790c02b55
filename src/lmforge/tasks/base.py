"""The interface every task implements, and batch encoding shared by all of them.

Numpy and `tokenizers` only: the serving path imports this module and must not load torch.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from tokenizers import Encoding, Tokenizer

MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
IGNORE_INDEX = -100  # label value the loss skips (special tokens, non-first subwords)


@dataclass
class Features:
    """Model-ready arrays for a list of examples (one row per feature/window)."""

    inputs: dict[str, np.ndarray]  # MODEL_INPUTS, int64 [rows, seq]
    targets: dict[str, np.ndarray] = field(default_factory=dict)  # training labels
    meta: dict[str, Any] = field(default_factory=dict)  # what postprocessing needs

    def __len__(self) -> int:
        return len(self.inputs["input_ids"])


class Task(ABC):
    """One fine-tuning task: how to encode its examples and score the model's outputs."""

    name: str
    metric_name: str  # the headline metric compress compares across runtimes
    auto_model: str  # transformers Auto class that builds the task model
    output_names: tuple[str, ...]  # model outputs, in ONNX order

    @abstractmethod
    def label_list(self, train_examples: Sequence[Any]) -> list[str]:
        """Labels in a stable order (empty for tasks without a label set)."""

    @abstractmethod
    def encode(
        self, tokenizer: Tokenizer, examples: Sequence[Any], labels: list[str], **opts
    ) -> Features:
        """Encode examples into model inputs, training targets and postprocessing meta."""

    def reduce_outputs(self, outputs: dict, features: Features, rows: slice) -> dict | None:
        """What to keep of the model outputs for `features`' `rows` (one prediction batch,
        trimmed to its longest row), when less than all of them; None: keep them all."""
        return None

    @abstractmethod
    def evaluate(
        self,
        outputs: dict[str, np.ndarray],
        features: Features,
        examples: Sequence[Any],
        labels: list[str],
        **opts,
    ) -> dict[str, float]:
        """Score the model outputs for `features` against the examples' references."""


def encode_batch(
    tokenizer: Tokenizer,
    batch: list,
    max_len: int,
    *,
    pretokenized: bool = False,
    stride: int = 0,
    only_second: bool = False,
) -> list[Encoding]:
    """Tokenize with truncation to `max_len`; overflowing windows are kept when stride > 0."""
    tokenizer.no_padding()
    tokenizer.enable_truncation(
        max_length=max_len,
        stride=stride,
        strategy="only_second" if only_second else "longest_first",
    )
    return tokenizer.encode_batch(batch, is_pretokenized=pretokenized)


def windows_of(encodings: Sequence[Encoding]) -> tuple[list[Encoding], list[int]]:
    """Every window of every encoding (itself, then its overflow), and the index of the
    input each window reads."""
    windows, owners = [], []
    for i, encoding in enumerate(encodings):
        for window in (encoding, *encoding.overflowing):
            windows.append(window)
            owners.append(i)
    return windows, owners


def to_arrays(encodings: Sequence[Encoding], pad_id: int, length: int | None = None) -> dict:
    """Stack encodings into int64 arrays padded to `length` (default: the longest)."""
    length = length or max(len(e.ids) for e in encodings)
    rows = len(encodings)
    ids = np.full((rows, length), pad_id, dtype=np.int64)
    mask = np.zeros((rows, length), dtype=np.int64)
    types = np.zeros((rows, length), dtype=np.int64)
    for i, enc in enumerate(encodings):
        n = len(enc.ids)
        ids[i, :n] = enc.ids
        mask[i, :n] = enc.attention_mask
        types[i, :n] = enc.type_ids
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


def trim_padding(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Cut the columns that are padding in every row: attention over them is wasted work.

    Arrays shaped [rows, seq] (inputs, token labels) are cut; others are left as they are.
    """
    mask = batch["attention_mask"]
    seq = mask.shape[1]
    longest = max(int(mask.sum(axis=1).max()), 1) if len(mask) else seq
    if longest >= seq:
        return batch
    return {
        k: (v[:, :longest] if v.ndim >= 2 and v.shape[1] == seq else v) for k, v in batch.items()
    }


def pad_id(tokenizer: Tokenizer) -> int:
    token_id = tokenizer.token_to_id("[PAD]")
    return 0 if token_id is None else token_id


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    z = x - x.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)
