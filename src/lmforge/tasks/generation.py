"""Text generation: causal-LM fine-tuning on prompt -> completion, scored by perplexity.

The scoring rule lives here once, numpy and `tokenizers` only, so that compress (ONNX
logits) and serve compute it as fine-tuning does:
- the context is the prompt's tokens, or `<|endoftext|>` alone when the prompt is empty
  (as GPT-2 starts unconditional text; so that the first completion token is predicted too);
- after it come the completion's tokens and one `<|endoftext|>`, which is scored: the model
  learns where a completion ends;
- only completion tokens (and that end token) carry labels; context tokens are IGNORE_INDEX;
- perplexity = exp(summed negative log-likelihood / number of scored tokens).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from tokenizers import Tokenizer

from lmforge.data.records import GenerationExample
from lmforge.tasks.base import IGNORE_INDEX, Features, Task
from lmforge.tokenizer import EOS


class GenerationTask(Task):
    name = "generation"
    metric_name = "perplexity"
    auto_model = "AutoModelForCausalLM"
    output_names = ("logits",)

    def label_list(self, train_examples: Sequence[GenerationExample]) -> list[str]:
        return []

    def encode(self, tokenizer, examples, labels, *, max_seq_len: int, **_) -> Features:
        return encode_examples(tokenizer, examples, max_seq_len)

    def reduce_outputs(self, outputs: dict, features: Features, rows: slice) -> dict:
        """Per row (summed NLL, scored tokens): a batch's logits are [rows, seq, vocab],
        far too large to keep for the whole validation set."""
        labels = features.targets["labels"][rows]
        nll, count = completion_nll(outputs["logits"], labels[:, : outputs["logits"].shape[1]])
        return {"nll": nll, "tokens": count}

    def evaluate(self, outputs, features, examples, labels, **_) -> dict[str, float]:
        nll, tokens = float(outputs["nll"].sum()), int(outputs["tokens"].sum())
        return {"eval_loss": nll / max(tokens, 1), "perplexity": perplexity(nll, tokens)}


def context_ids(tokenizer: Tokenizer, prompt: str) -> list[int]:
    """The tokens a completion is written after: the prompt's, or `<|endoftext|>` for none."""
    if not prompt:
        return [tokenizer.token_to_id(EOS)]
    return tokenizer.encode(prompt, add_special_tokens=False).ids


def encode_example(
    tokenizer: Tokenizer, record: GenerationExample | dict, max_len: int
) -> tuple[np.ndarray, np.ndarray]:
    """(input ids, labels) of one example, at most `max_len` long.

    Too long: the context loses tokens from its start (down to one), then the completion
    loses its end.
    """
    prompt, completion = _fields(record)
    eos = tokenizer.token_to_id(EOS)
    context = context_ids(tokenizer, prompt)
    target = tokenizer.encode(completion, add_special_tokens=False).ids + [eos]
    context = context[-max(1, max_len - len(target)) :]
    ids = np.array((context + target)[:max_len], np.int64)
    labels = ids.copy()
    labels[: len(context)] = IGNORE_INDEX
    return ids, labels


def encode_examples(
    tokenizer: Tokenizer, examples: Sequence[GenerationExample | dict], max_len: int
) -> Features:
    """Right-padded rows (`<|endoftext|>` as padding, masked out) of `encode_example`."""
    encoded = [encode_example(tokenizer, ex, max_len) for ex in examples]
    length = max(len(ids) for ids, _ in encoded)
    rows = len(encoded)
    ids = np.full((rows, length), tokenizer.token_to_id(EOS), np.int64)
    mask = np.zeros((rows, length), np.int64)
    labels = np.full((rows, length), IGNORE_INDEX, np.int64)
    for i, (row_ids, row_labels) in enumerate(encoded):
        ids[i, : len(row_ids)] = row_ids
        mask[i, : len(row_ids)] = 1
        labels[i, : len(row_ids)] = row_labels
    # No token_type_ids: GPT-2 would add their embeddings (its token embeddings) to the input.
    return Features(inputs={"input_ids": ids, "attention_mask": mask}, targets={"labels": labels})


def completion_nll(logits: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row: the summed negative log-likelihood of the scored tokens and their count.

    `logits[:, t]` predicts the token at t + 1; labels are IGNORE_INDEX where unscored.
    """
    targets = labels[:, 1:]
    scored = targets != IGNORE_INDEX
    nll = np.zeros(len(labels))
    for row in np.flatnonzero(scored.any(-1)):  # a row at a time: [seq, vocab] temporaries
        positions = np.flatnonzero(scored[row])
        rows_logits = logits[row, positions].astype(np.float64)
        top = rows_logits.max(-1)
        log_norm = np.log(np.exp(rows_logits - top[:, None]).sum(-1)) + top
        picked = rows_logits[np.arange(len(positions)), targets[row, positions]]
        nll[row] = (log_norm - picked).sum()
    return nll, scored.sum(-1)


def perplexity(nll_sum: float, tokens: int) -> float:
    """exp of the mean NLL per scored token (capped so that a diverged model stays finite)."""
    return math.exp(min(nll_sum / max(tokens, 1), 50.0))


def _fields(record: GenerationExample | dict) -> tuple[str, str]:
    if isinstance(record, dict):
        return record.get("prompt", ""), record["completion"]
    return record.prompt, record.completion
