"""Run an exported causal decoder (one ONNX graph with a key/value cache) from numpy.

The graph takes `input_ids`, `attention_mask` (every cached and new position, 0 = padding),
`position_ids` and one `past_key_<i>`/`past_value_<i>` per layer ([batch, heads, past, head
dim]; past may be 0), and returns `logits` for the new positions and the grown cache as
`present_key_<i>`/`present_value_<i>`. The same graph reads a prompt and each later token.
Numpy only: the compress stage and the service both drive the graph through this module.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class DecoderShape:
    """What feeding the graph needs to know about the model (read from the manifest)."""

    n_layer: int
    n_head: int
    head_dim: int
    max_positions: int
    eos_token_id: int

    @classmethod
    def from_manifest(cls, manifest: dict) -> DecoderShape:
        return cls(**{name: int(manifest[name]) for name in cls.__dataclass_fields__})

    def input_names(self) -> list[str]:
        past = [f"past_{kind}_{i}" for i in range(self.n_layer) for kind in ("key", "value")]
        return ["input_ids", "attention_mask", "position_ids", *past]

    def output_names(self) -> list[str]:
        present = [f"present_{kind}_{i}" for i in range(self.n_layer) for kind in ("key", "value")]
        return ["logits", *present]


@dataclass
class Cache:
    """The key/value cache of a batch of rows, left-padded to a common length."""

    tensors: list[np.ndarray]  # past key, past value per layer: [rows, heads, length, head_dim]
    mask: np.ndarray  # int64 [rows, length]: 1 where a row has a real token

    @classmethod
    def empty(cls, shape: DecoderShape, rows: int) -> Cache:
        empty = np.zeros((rows, shape.n_head, 0, shape.head_dim), np.float32)
        return cls([empty] * (2 * shape.n_layer), np.zeros((rows, 0), np.int64))

    @property
    def rows(self) -> int:
        return len(self.mask)

    def lengths(self) -> np.ndarray:
        """Real tokens per row: the position the row's next token takes."""
        return self.mask.sum(axis=1)

    def select(self, rows: list[int] | np.ndarray) -> Cache:
        """The given rows, with columns that are padding in all of them dropped."""
        mask = self.mask[rows]
        used = np.flatnonzero(mask.any(axis=0))
        start = int(used[0]) if len(used) else mask.shape[1]
        return Cache([t[rows][:, :, start:] for t in self.tensors], mask[:, start:])

    @staticmethod
    def concat(caches: list[Cache]) -> Cache:
        """Rows of several caches in one, each left-padded to the longest."""
        length = max(c.mask.shape[1] for c in caches)

        def pad(array: np.ndarray, axis: int, width: int) -> np.ndarray:
            widths = [(0, 0)] * array.ndim
            widths[axis] = (width, 0)
            return np.pad(array, widths) if width else array

        tensors = [
            np.concatenate([pad(c.tensors[i], 2, length - c.mask.shape[1]) for c in caches])
            for i in range(len(caches[0].tensors))
        ]
        mask = np.concatenate([pad(c.mask, 1, length - c.mask.shape[1]) for c in caches])
        return Cache(tensors, mask)


class Decoder:
    """One onnxruntime session of the decoder graph, fed from a `Cache`."""

    def __init__(self, session, shape: DecoderShape) -> None:
        self.session = session
        self.shape = shape
        self._inputs = shape.input_names()
        self._outputs = shape.output_names()

    def forward(self, input_ids: np.ndarray, cache: Cache) -> tuple[np.ndarray, Cache]:
        """Logits [rows, new, vocab] of `input_ids` [rows, new] after `cache`, and the grown
        cache. Every new token is real (no padding after the cache)."""
        rows, new = input_ids.shape
        positions = cache.lengths()[:, None] + np.arange(new)[None, :]
        mask = np.concatenate([cache.mask, np.ones((rows, new), np.int64)], axis=1)
        feed = dict(
            zip(
                self._inputs,
                [input_ids.astype(np.int64), mask, positions.astype(np.int64), *cache.tensors],
                strict=True,
            )
        )
        logits, *present = self.session.run(self._outputs, feed)
        return logits, Cache(present, mask)

    def score(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """Logits of right-padded rows read from scratch (padding only at the end, where
        causal attention keeps it from touching the real positions)."""
        rows, length = input_ids.shape
        positions = np.broadcast_to(np.arange(length), (rows, length))
        cache = Cache.empty(self.shape, rows)
        feed = dict(
            zip(
                self._inputs,
                [input_ids, attention_mask, np.ascontiguousarray(positions), *cache.tensors],
                strict=True,
            )
        )
        return self.session.run(["logits"], feed)[0]

    def greedy(self, prompt_ids: list[int], steps: int) -> tuple[list[int], list[np.ndarray]]:
        """Greedy continuation of one prompt: the new ids and the last-position logits of
        each step (the prompt pass, then one token at a time with the cache)."""
        logits, cache = self.forward(np.array([prompt_ids]), Cache.empty(self.shape, 1))
        ids, seen = [], []
        for _ in range(steps):
            seen.append(logits[0, -1])
            ids.append(int(np.argmax(logits[0, -1])))
            logits, cache = self.forward(np.array([[ids[-1]]]), cache)
        return ids, seen


def sample_next(
    logits: np.ndarray, temperature: float, top_p: float, rng: np.random.Generator
) -> int:
    """The next token from one row of logits: argmax at temperature 0, else a draw from the
    softmax at `temperature` restricted to the smallest set of tokens whose probability
    reaches `top_p` (nucleus sampling)."""
    if temperature <= 0:
        return int(np.argmax(logits))
    z = logits.astype(np.float64) / temperature
    probs = np.exp(z - z.max())
    probs /= probs.sum()
    if top_p < 1.0:
        order = np.argsort(-probs, kind="stable")
        cumulative = np.cumsum(probs[order])
        keep = order[: int(np.searchsorted(cumulative, top_p)) + 1]
        kept = probs[keep] / probs[keep].sum()
        return int(keep[rng.choice(len(keep), p=kept)])
    return int(rng.choice(len(probs), p=probs))
