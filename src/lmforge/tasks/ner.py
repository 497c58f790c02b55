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
    windows_of,
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


def encode_texts(tokenizer: Tokenizer, texts: list[str], max_seq_len: int, stride: int) -> tuple:
    """Raw texts to model inputs, each text in windows of `max_seq_len` tokens that overlap
    by `stride`, plus what span extraction needs: every window's offsets and word ids (both
    relative to its whole text) and the index of the text it reads."""
    windows, owners = windows_of(encode_batch(tokenizer, texts, max_seq_len, stride=stride))
    inputs = to_arrays(windows, pad_id(tokenizer))
    offsets = [window.offsets for window in windows]
    return inputs, offsets, word_id_array(windows, inputs["input_ids"].shape[1]), owners


def extract_entities(
    text: str,
    windows: Sequence[tuple[np.ndarray, list[tuple[int, int]], np.ndarray]],
    labels: list[str],
) -> list[dict]:
    """BIO-decode one text's (token logits, offsets, word ids) windows into entities with
    character offsets.

    Each word takes the tag of its first subword, read in the window where that subword
    sits furthest from an edge (the most context on both sides); its character span runs
    from its first to its last subword. An entity's score is the mean tag probability of
    its words.
    """
    words: dict[int, dict] = {}  # word -> start, end, and (centrality, tag, prob) of its tag
    for logits, offsets, word_ids in windows:
        positions = [p for p, w in enumerate(word_ids.tolist()) if w >= 0 and p < len(offsets)]
        if not positions:
            continue
        probs = softmax(logits)
        first, last = positions[0], positions[-1]
        for pos in positions:
            word = int(word_ids[pos])
            start, end = offsets[pos]
            entry = words.setdefault(word, {"start": start, "end": end, "tag": None})
            entry["end"] = max(entry["end"], end)
            if start < entry["start"]:  # an earlier subword: a window cut the word
                entry["start"], entry["tag"] = start, None
            if start == entry["start"]:  # the first subword
                centrality = min(pos - first, last - pos)
                if entry["tag"] is None or centrality > entry["tag"][0]:
                    tag_id = int(probs[pos].argmax())
                    entry["tag"] = (centrality, labels[tag_id], float(probs[pos, tag_id]))
    entities: list[dict] = []
    current = None
    for word in sorted(words):
        start, end, (_, tag, prob) = words[word]["start"], words[word]["end"], words[word]["tag"]
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
