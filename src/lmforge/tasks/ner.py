"""Named-entity recognition: a BIO tag per word, predicted on its first subword.

Words come from one rule, `words_of`, for training, evaluation and the service alike:
CoNLL tokens and raw text are split the same way, so the service's entities are the
spans that evaluation scored. Every sentence is read whole, in overlapping windows
when it is longer than one; `tag_words` picks each word's tag from the window where it
has the most context, and `extract_entities` turns tagged words into character spans.

Tags are IOB2 (`NerExample`: the readers convert IOB1), so the decoder may forbid what
IOB2 never holds: an I-X after O, at the start of a sentence, or after another type.
"""

from __future__ import annotations

import functools
import itertools
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from tokenizers import Tokenizer

from lmforge.data.records import NerExample
from lmforge.tasks.base import IGNORE_INDEX, Features, Task, pad_id, softmax
from lmforge.tasks.script import has_cjk, is_cjk

ZWJ = "\u200d"  # zero-width joiner: glues emoji sequences (👩‍💻) into one symbol


class NerTask(Task):
    name = "ner"
    metric_name = "f1"
    auto_model = "AutoModelForTokenClassification"
    output_names = ("logits",)

    def label_list(self, train_examples: Sequence[NerExample]) -> list[str]:
        tags = {tag for ex in train_examples for tag in ex.tags}
        # A token split in several words gives them I- tags: every type has one.
        tags |= {f"I-{tag[2:]}" for tag in tags if tag != "O"}
        # "O" first, then entity types with B- before I- (a stable, readable order).
        return ["O"] + sorted(tags - {"O"}, key=lambda t: (t[2:], t[0]))

    def encode(self, tokenizer, examples, labels, *, max_seq_len: int, **_) -> Features:
        sentences = [tagged_words(ex.tokens, ex.tags) for ex in examples]
        inputs, windows = encode_words(tokenizer, [words for words, _ in sentences], max_seq_len)
        index = {label: i for i, label in enumerate(labels)}
        targets = np.full(windows.word_ids.shape, IGNORE_INDEX, dtype=np.int64)
        for row, pos in zip(*np.nonzero(windows.first), strict=True):
            tags = sentences[windows.owners[row]][1]
            targets[row, pos] = index[tags[windows.word_ids[row, pos]]]
        meta = {"windows": windows, "gold": [tags for _, tags in sentences]}
        return Features(inputs=inputs, targets={"labels": targets}, meta=meta)

    def evaluate(self, outputs, features, examples, labels, **_) -> dict[str, float]:
        from seqeval.metrics import f1_score, precision_score, recall_score

        gold = features.meta["gold"]
        tagged = tag_words(outputs["logits"], features.meta["windows"], labels)
        predicted = [[tag for tag, _ in words] for words in tagged]
        # seqeval's default mode (mode=None) is conlleval-compatible entity-level scoring,
        # and reads BIO as extract_entities does: the served spans are the scored ones.
        return {
            "f1": float(f1_score(gold, predicted)),
            "precision": float(precision_score(gold, predicted)),
            "recall": float(recall_score(gold, predicted)),
        }


# --- words ---------------------------------------------------------------------------


def word_spans(text: str) -> list[tuple[int, int]]:
    """Character spans of the words of raw text, the words NER tags.

    Text with a CJK character is read a character at a time, Latin letters and digits
    too (the Resume NER data has one character per token, "1966" included). Other text:
    runs of letters, digits and marks are words; each punctuation mark or symbol (emoji
    included) is a word of its own. Whitespace and invisible format characters separate
    words; combining marks and zero-width joiners stay with the character before them.
    """
    return _spans(text, per_char=has_cjk(text))


def tagged_words(tokens: Sequence[str], tags: Sequence[str]) -> tuple[list[str], list[str]]:
    """A CoNLL sentence's words under `word_spans`'s rule, with their tags.

    The rule is chosen for the whole sentence, so these are the words of its raw text
    (tokens joined as `join_tokens` joins them). A token split in several words
    (`U.S.` -> U . S .) keeps its tag on the first and gives the others I- of its type.
    """
    per_char = any(has_cjk(token) for token in tokens)
    words, word_tags = [], []
    for token, tag in zip(tokens, tags, strict=True):
        for k, (start, end) in enumerate(_spans(token, per_char)):
            words.append(token[start:end])
            word_tags.append(tag if k == 0 or tag == "O" else f"I-{tag[2:]}")
    return words, word_tags


def _spans(text: str, per_char: bool) -> list[tuple[int, int]]:
    spans: list[tuple[int, int]] = []
    for i, char in enumerate(text):
        category = unicodedata.category(char)
        if char.isspace() or (category in ("Cc", "Cf") and char != ZWJ):
            continue
        glued = (
            bool(spans)
            and spans[-1][1] == i
            and (
                category[0] == "M"
                or char == ZWJ
                or text[i - 1] == ZWJ
                or (not per_char and _in_word(char) and _in_word(text[i - 1]))
            )
        )
        if glued:
            spans[-1] = (spans[-1][0], i + 1)
        else:
            spans.append((i, i + 1))
    return spans


def _in_word(char: str) -> bool:
    return unicodedata.category(char)[0] in "LNM" and not is_cjk(char)


# --- windows -------------------------------------------------------------------------


@dataclass
class Windows:
    """Where each row of a windowed batch reads: its sentence, the word at each position
    (-1: [CLS], [SEP], padding) and whether that position holds the word's first subword."""

    owners: np.ndarray  # [rows] index of the sentence
    word_ids: np.ndarray  # [rows, seq]
    first: np.ndarray  # [rows, seq] bool
    word_counts: list[int]  # words per sentence


def encode_words(
    tokenizer: Tokenizer, sentences: Sequence[Sequence[str]], max_seq_len: int
) -> tuple[dict[str, np.ndarray], Windows]:
    """Model inputs for word lists: each sentence whole, in [CLS] ... [SEP] windows of
    `max_seq_len` that overlap by a quarter when it is longer than one (every word is
    then tagged with at least an eighth of a window of context on each side)."""
    body = max_seq_len - 2
    step = body - body // 4
    tokenizer.no_truncation()
    tokenizer.no_padding()
    encodings = tokenizer.encode_batch(
        [list(words) for words in sentences], is_pretokenized=True, add_special_tokens=False
    )
    rows: list[tuple[int, list[int], list[int]]] = []  # (sentence, token ids, word ids)
    for owner, encoding in enumerate(encodings):
        ids, words = encoding.ids, encoding.word_ids
        start = 0
        while True:
            rows.append((owner, ids[start : start + body], words[start : start + body]))
            if start + body >= len(ids):
                break
            start += step
    width = max(len(ids) for _, ids, _ in rows) + 2
    cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    input_ids = np.full((len(rows), width), pad_id(tokenizer), dtype=np.int64)
    attention = np.zeros((len(rows), width), dtype=np.int64)
    word_ids = np.full((len(rows), width), -1, dtype=np.int64)
    for row, (_, ids, words) in enumerate(rows):
        n = len(ids)
        input_ids[row, : n + 2] = [cls_id, *ids, sep_id]
        attention[row, : n + 2] = 1
        word_ids[row, 1 : n + 1] = words
    # A window that starts inside a word holds only its later subwords.
    first = np.zeros_like(word_ids, dtype=bool)
    for row, (owner, _, _) in enumerate(rows):
        previous = rows[row - 1] if row and rows[row - 1][0] == owner else None
        before = previous[2][step - 1] if previous else -1
        ids = word_ids[row]
        first[row, 1:] = (ids[1:] >= 0) & (ids[1:] != np.concatenate([[before], ids[1:-1]]))
    inputs = {
        "input_ids": input_ids,
        "attention_mask": attention,
        "token_type_ids": np.zeros_like(input_ids),
    }
    windows = Windows(
        owners=np.array([owner for owner, _, _ in rows], dtype=np.int64),
        word_ids=word_ids,
        first=first,
        word_counts=[len(words) for words in sentences],
    )
    return inputs, windows


def tag_words(logits: np.ndarray, windows: Windows, labels: list[str]) -> list[list[tuple]]:
    """(tag, probability) of every word of every sentence.

    A word's tag distribution is that of its first subword, read in the window where that
    subword has the most context (the furthest from the window's edges); a word without
    tokens (all its characters normalized away) is surely "O". The tags of a sentence are
    its most probable valid IOB2 sequence (`decode_bio`).
    """
    rows, positions = np.nonzero(windows.first)
    lengths = (windows.word_ids >= 0).sum(axis=1)  # content positions 1..length
    centrality = np.minimum(positions - 1, lengths[rows] - positions)
    offsets = np.concatenate([[0], np.cumsum(windows.word_counts)])
    words = offsets[windows.owners[rows]] + windows.word_ids[rows, positions]
    # Per word, the most central of its readings: sort by word, then centrality descending.
    order = np.lexsort((-centrality, words))
    words, first_reading = np.unique(words[order], return_index=True)
    picked = order[first_reading]
    word_probs = np.zeros((offsets[-1], len(labels)), dtype=np.float32)
    word_probs[:, labels.index("O")] = 1.0
    word_probs[words] = softmax(logits[rows[picked], positions[picked]])
    allowed = allowed_transitions(tuple(labels))
    tagged = []
    for start, end in itertools.pairwise(offsets):
        sentence = word_probs[start:end]
        tag_ids = decode_bio(sentence, allowed)
        chosen = sentence[np.arange(len(tag_ids)), tag_ids].tolist()
        tagged.append([(labels[i], p) for i, p in zip(tag_ids.tolist(), chosen, strict=True)])
    return tagged


@functools.cache  # per label set: the service decodes every request with the same one
def allowed_transitions(labels: tuple[str, ...]) -> np.ndarray:
    """[from + 1, to] bool: which tag may follow which in IOB2 (row 0: the sentence start).
    I-X only continues B-X or I-X."""
    kinds = [label[2:] if label[:2] in ("B-", "I-") else None for label in labels]
    allowed = np.ones((len(labels) + 1, len(labels)), dtype=bool)
    for to, label in enumerate(labels):
        if label.startswith("I-"):
            allowed[0, to] = False
            allowed[1:, to] = [kind == kinds[to] for kind in kinds]
    return allowed


def decode_bio(probs: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    """The most probable tag sequence (product of the words' tag probabilities) among those
    `allowed` permits: Viterbi with forbidden transitions. The per-word argmax when it is
    valid already (the common case, and then no search is needed)."""
    best = probs.argmax(axis=1)
    if len(best) == 0 or (allowed[0, best[0]] and allowed[best[:-1] + 1, best[1:]].all()):
        return best
    log_probs = np.log(np.maximum(probs, 1e-30))
    penalty = np.where(allowed, 0.0, -np.inf)
    score = log_probs[0] + penalty[0]
    back = np.zeros(probs.shape, dtype=np.int64)
    for i in range(1, len(probs)):
        candidates = score[:, None] + penalty[1:]  # [from, to]
        back[i] = candidates.argmax(axis=0)
        score = candidates[back[i], np.arange(probs.shape[1])] + log_probs[i]
    path = [int(score.argmax())]
    for i in range(len(probs) - 1, 0, -1):
        path.append(int(back[i, path[-1]]))
    return np.array(path[::-1])


# --- serving -------------------------------------------------------------------------


def encode_texts(tokenizer: Tokenizer, texts: Sequence[str], max_seq_len: int) -> tuple:
    """Raw texts to model inputs, plus what `entities_of` needs (word spans, windows)."""
    spans = [word_spans(text) for text in texts]
    words = [[text[a:b] for a, b in s] for text, s in zip(texts, spans, strict=True)]
    inputs, windows = encode_words(tokenizer, words, max_seq_len)
    return inputs, (spans, windows)


def entities_of(
    texts: Sequence[str], logits: np.ndarray, state: tuple, labels: list[str]
) -> list[list[dict]]:
    """Entities of each text, from the logits of `encode_texts`'s inputs."""
    spans, windows = state
    tagged = tag_words(logits, windows, labels)
    return [extract_entities(text, s, t) for text, s, t in zip(texts, spans, tagged, strict=True)]


def extract_entities(
    text: str, spans: Sequence[tuple[int, int]], tagged: Sequence[tuple[str, float]]
) -> list[dict]:
    """BIO-decode tagged words into entities with character offsets into `text`.

    An I- tag with no open entity of its type starts one (as conlleval and seqeval read
    it). An entity's score is the mean tag probability of its words.
    """
    entities: list[dict] = []
    current = None
    for (start, end), (tag, prob) in zip(spans, tagged, strict=True):
        prefix, _, kind = tag.partition("-")
        if prefix == "I" and current is not None and current["label"] == kind:
            current["end"], current["probs"] = end, current["probs"] + [prob]
            continue
        if current is not None:
            entities.append(current)
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
