"""Named-entity recognition: a BIO tag per word, predicted on its first subword.

`extract_entities` turns the same word predictions that evaluation scores into
character spans of the original text, which is what the service returns.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from tokenizers import Encoding, Tokenizer

from lmforge.data.records import NerExample
from lmforge.tasks.base import (
    IGNORE_INDEX,
    Features,
    Task,
    encode_batch,
    pad_id,
    softmax,
    to_arrays,
)


class NerTask(Task):
    name = "ner"
    metric_name = "f1"
    auto_model = "AutoModelForTokenClassification"
    output_names = ("logits",)

    def label_list(self, train_examples: Sequence[NerExample]) -> list[str]:
        tags = {tag for ex in train_examples for tag in ex.tags}
        # "O" first, then entity types with B- before I- (a stable, readable order).
        return ["O"] + sorted(tags - {"O"}, key=lambda t: (t[2:], t[0]))

    def encode(self, tokenizer, examples, labels, *, max_seq_len: int, **_) -> Features:
        encodings = encode_batch(
            tokenizer, [ex.tokens for ex in examples], max_seq_len, pretokenized=True
        )
        features = Features(inputs=to_arrays(encodings, pad_id(tokenizer), max_seq_len))
        features.meta["word_ids"] = word_id_array(encodings, max_seq_len)
        index = {label: i for i, label in enumerate(labels)}
        targets = np.full_like(features.meta["word_ids"], IGNORE_INDEX)
        for row, ex in enumerate(examples):
            for pos, word in first_subwords(features.meta["word_ids"][row]):
                targets[row, pos] = index[ex.tags[word]]
        features.targets["labels"] = targets
        return features

    def evaluate(self, outputs, features, examples, labels, **_) -> dict[str, float]:
        from seqeval.metrics import f1_score, precision_score, recall_score

        predicted_ids = outputs["logits"].argmax(-1)
        gold, predicted = [], []
        for row, ex in enumerate(examples):
            tags = ["O"] * len(ex.tokens)  # words cut off by truncation count as "O"
            for pos, word in first_subwords(features.meta["word_ids"][row]):
                tags[word] = labels[predicted_ids[row, pos]]
            gold.append(list(ex.tags))
            predicted.append(tags)
        # seqeval's default mode (mode=None) is conlleval-compatible entity-level scoring.
        return {
            "f1": float(f1_score(gold, predicted)),
            "precision": float(precision_score(gold, predicted)),
            "recall": float(recall_score(gold, predicted)),
        }


def word_id_array(encodings: Sequence[Encoding], length: int) -> np.ndarray:
    """Word index of every token, -1 for special tokens and padding."""
    out = np.full((len(encodings), length), -1, dtype=np.int64)
    for row, enc in enumerate(encodings):
        for pos, word in enumerate(enc.word_ids[:length]):
            if word is not None:
                out[row, pos] = word
    return out


def first_subwords(word_ids: np.ndarray) -> list[tuple[int, int]]:
    """(token position, word index) of the first subword of each word."""
    pairs, previous = [], -1
    for pos, word in enumerate(word_ids.tolist()):
        if word >= 0 and word != previous:
            pairs.append((pos, word))
        previous = word
    return pairs


def encode_texts(tokenizer: Tokenizer, texts: list[str], max_seq_len: int) -> tuple:
    """Raw texts to model inputs plus the offsets and word ids span extraction needs."""
    encodings = encode_batch(tokenizer, texts, max_seq_len)
    inputs = to_arrays(encodings, pad_id(tokenizer))
    length = inputs["input_ids"].shape[1]
    offsets = [enc.offsets for enc in encodings]
    return inputs, offsets, word_id_array(encodings, length)


def extract_entities(
    text: str,
    logits: np.ndarray,
    offsets: list[tuple[int, int]],
    word_ids: np.ndarray,
    labels: list[str],
) -> list[dict]:
    """BIO-decode one text's token logits into entities with character offsets.

    Each word takes the tag of its first subword; its character span runs from its
    first to its last subword. An entity's score is the mean tag probability of its words.
    """
    probs = softmax(logits)
    words: dict[int, list] = {}  # word -> [start, end, tag, prob]
    for pos, word in enumerate(word_ids.tolist()):
        if word < 0 or pos >= len(offsets):
            continue
        start, end = offsets[pos]
        if word not in words:
            tag_id = int(probs[pos].argmax())
            words[word] = [start, end, labels[tag_id], float(probs[pos, tag_id])]
        else:
            words[word][1] = end
    entities: list[dict] = []
    current = None
    for word in sorted(words):
        start, end, tag, prob = words[word]
        prefix, _, kind = tag.partition("-")
        if prefix == "I" and current is not None and current["label"] == kind:
            current["end"], current["probs"] = end, current["probs"] + [prob]
            continue
        if current is not None:
            entities.append(current)
        # An I- tag with no open entity of its type starts one (as conlleval reads it).
        current = {"label": kind, "start": start, "end": end, "probs": [prob]} if kind else None
    if current is not None:
        entities.append(current)
    return [
        {
            "text": text[e["start"] : e["end"]],
            "label": e["label"],
            "start": e["start"],
            "end": e["end"],
            "score": float(np.mean(e["probs"])),
        }
        for e in entities
    ]
