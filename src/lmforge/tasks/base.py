"""The interface every task implements, and batch encoding shared by all of them.

Numpy and `tokenizers` only: the serving path imports this module and must not load torch.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from tokenizers import Encoding, Tokenizer

MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
IGNORE_INDEX = -100  # label value the loss skips (special tokens, non-first subwords)
PAD_LOGIT = -1e9  # exp() of it is 0, and two of them still add up in float32


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


def run_in_parts(
    run: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]],
    inputs: dict[str, np.ndarray],
    parts: Sequence[np.ndarray],
    per_token: Collection[str],
    map_parts: Callable = map,
) -> dict[str, np.ndarray]:
    """`run` on the rows of each part (an array of row indices), each call cut to the
    part's longest row; the outputs come back in row order at the inputs' width, the
    positions past a row's own length of `per_token` outputs set to PAD_LOGIT.
    `map_parts` (e.g. a thread pool's map) may run the calls at once."""
    rows, seq = inputs["attention_mask"].shape
    lengths = inputs["attention_mask"].sum(axis=1)

    def run_part(picked: np.ndarray) -> tuple[int, dict[str, np.ndarray]]:
        longest = max(int(lengths[picked].max()), 1)
        return longest, run({name: value[picked, :longest] for name, value in inputs.items()})

    outputs: dict[str, np.ndarray] = {}
    for picked, (longest, part) in zip(parts, map_parts(run_part, parts), strict=True):
        for name, value in part.items():
            token_axis = name in per_token
            if name not in outputs:
                shape = (rows, seq, *value.shape[2:]) if token_axis else (rows, *value.shape[1:])
                outputs[name] = np.full(shape, PAD_LOGIT, value.dtype)
            if token_axis:
                outputs[name][picked, :longest] = value
            else:
                outputs[name][picked] = value
    return outputs


def single_rows(rows: int) -> list[np.ndarray]:
    """One part per row for `run_in_parts`: each row runs alone, without padding.

    A dynamically quantized (int8) model needs this to answer the same for a text
    whatever else is in its batch: it takes one activation scale per input tensor, so
    another row, or padding, shifts every row's logits (by ~0.04 on the default models).
    """
    return [np.array([row]) for row in range(rows)]


def pad_id(tokenizer: Tokenizer) -> int:
    token_id = tokenizer.token_to_id("[PAD]")
    return 0 if token_id is None else token_id


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    z = x - x.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)
