"""Extractive QA: answer spans in a context read in overlapping windows; EM/F1 by SQuAD's
rule, or CMRC 2018's for Chinese answers.

The same `best_answers` picks spans for evaluation and for the service, with
character offsets into the original context.
"""

from __future__ import annotations

import collections
import re
import string
from collections.abc import Sequence

import numpy as np
from tokenizers import Tokenizer

from lmforge.data.records import QaExample
from lmforge.tasks.base import (
    Features,
    Task,
    encode_batch,
    pad_id,
    softmax,
    to_arrays,
    windows_of,
)
from lmforge.tasks.script import has_cjk


class QaTask(Task):
    name = "qa"
    metric_name = "f1"
    auto_model = "AutoModelForQuestionAnswering"
    output_names = ("start_logits", "end_logits")

    def label_list(self, train_examples: Sequence[QaExample]) -> list[str]:
        return []

    def encode(
        self, tokenizer, examples, labels, *, max_seq_len: int, doc_stride: int, **_
    ) -> Features:
        features = encode_pairs(
            tokenizer,
            [ex.question for ex in examples],
            [ex.context for ex in examples],
            max_seq_len,
            doc_stride,
        )
        starts, ends = [], []
        for row, example_index in enumerate(features.meta["example_index"]):
            ex = examples[example_index]
            span = (0, 0)  # unanswerable, or the answer lies outside this window: [CLS]
            if ex.answer_texts:
                first = ex.answer_starts[0]
                span = token_span(
                    features.meta["offsets"][row], first, first + len(ex.answer_texts[0])
                )
            starts.append(span[0])
            ends.append(span[1])
        features.targets["start_positions"] = np.array(starts, np.int64)
        features.targets["end_positions"] = np.array(ends, np.int64)
        return features

    def evaluate(
        self, outputs, features, examples, labels, *, max_answer_len: int = 30, **_
    ) -> dict[str, float]:
        allow_null = any(not ex.answer_texts for ex in examples)
        answers = best_answers(
            outputs["start_logits"],
            outputs["end_logits"],
            features,
            [ex.context for ex in examples],
            max_answer_len,
            allow_null=allow_null,
        )
        return qa_scores([a["answer"] for a in answers], [ex.answer_texts for ex in examples])


def encode_pairs(
    tokenizer: Tokenizer,
    questions: list[str],
    contexts: list[str],
    max_seq_len: int,
    doc_stride: int,
) -> Features:
    """One feature per context window; meta maps each back to its example and characters.

    Questions over `max_question_tokens` are clipped: `tokenizers` cannot stride a
    context that a long question leaves no more than `doc_stride` tokens of room for.
    """
    questions = clip_questions(tokenizer, questions, max_question_tokens(max_seq_len, doc_stride))
    encodings = encode_batch(
        tokenizer,
        list(zip(questions, contexts, strict=True)),
        max_seq_len,
        stride=doc_stride,
        only_second=True,
    )
    windows, example_index = windows_of(encodings)
    inputs = to_arrays(windows, pad_id(tokenizer), max_seq_len)
    offsets = np.full((len(windows), max_seq_len, 2), -1, dtype=np.int64)
    for row, window in enumerate(windows):
        for pos, seq in enumerate(window.sequence_ids):
            if seq == 1:  # context tokens only: the answer can never be in the question
                offsets[row, pos] = window.offsets[pos]
    meta = {"example_index": np.array(example_index, np.int64), "offsets": offsets}
    return Features(inputs=inputs, meta=meta)


def max_question_tokens(max_seq_len: int, doc_stride: int) -> int:
    """Longest question (in tokens) that still leaves each window more context than stride."""
    return (max_seq_len - 3 - doc_stride) // 2


def clip_questions(tokenizer: Tokenizer, questions: list[str], max_tokens: int) -> list[str]:
    tokenizer.no_truncation()
    clipped = []
    for question, enc in zip(
        questions, tokenizer.encode_batch(questions, add_special_tokens=False), strict=True
    ):
        clipped.append(
            question[: enc.offsets[max_tokens][0]] if len(enc.ids) > max_tokens else question
        )
    return clipped


def token_span(offsets: np.ndarray, char_start: int, char_end: int) -> tuple[int, int]:
    """Token positions covering [char_start, char_end) in this window, or (0, 0)."""
    in_context = offsets[:, 0] >= 0
    if not in_context.any():
        return (0, 0)
    positions = np.flatnonzero(in_context)
    if offsets[positions[0], 0] > char_start or offsets[positions[-1], 1] < char_end:
        return (0, 0)
    start = positions[offsets[positions, 0] <= char_start][-1]
    end = positions[offsets[positions, 1] >= char_end][0]
    return (int(start), int(end))


def best_answers(
    start_logits: np.ndarray,
    end_logits: np.ndarray,
    features: Features,
    contexts: list[str],
    max_answer_len: int,
    *,
    allow_null: bool = False,
    n_best: int = 20,
) -> list[dict]:
    """The highest-scoring span per example across all of its windows.

    Score = start logit + end logit (as in the reference SQuAD scripts); the reported
    score is the span's probability within its window. With `allow_null` (SQuAD v2) an
    example answers "" when the [CLS] score beats every span.
    """
    offsets = features.meta["offsets"]
    best: dict[int, dict] = {}
    null_score: dict[int, float] = {}
    for row, example in enumerate(features.meta["example_index"].tolist()):
        s_logits, e_logits = start_logits[row], end_logits[row]
        null = float(s_logits[0] + e_logits[0])
        null_score[example] = max(null_score.get(example, -np.inf), null)
        # The n_best x n_best candidate spans at once; argmax takes the first best in
        # (start rank, end rank) order, as a loop over both rankings would.
        starts = np.argsort(s_logits)[::-1][:n_best]
        ends = np.argsort(e_logits)[::-1][:n_best]
        length = ends[None, :] - starts[:, None] + 1
        valid = (offsets[row, starts, 0] >= 0)[:, None] & (offsets[row, ends, 0] >= 0)[None, :]
        valid &= (length >= 1) & (length <= max_answer_len)
        if not valid.any():
            continue
        scores = np.where(valid, s_logits[starts][:, None] + e_logits[ends][None, :], -np.inf)
        i, j = np.unravel_index(int(scores.argmax()), scores.shape)
        score = float(scores[i, j])
        if example not in best or score > best[example]["logit"]:
            s, e = starts[i], ends[j]
            best[example] = {
                "logit": score,
                "start": int(offsets[row, s, 0]),
                "end": int(offsets[row, e, 1]),
                "score": float(softmax(s_logits)[s] * softmax(e_logits)[e]),
            }
    results = []
    for example, context in enumerate(contexts):
        span = best.get(example)
        if span is None or (allow_null and null_score[example] > span["logit"]):
            results.append({"answer": "", "start": 0, "end": 0, "score": 0.0})
        else:
            text = context[span["start"] : span["end"]]
            results.append(
                {"answer": text, "start": span["start"], "end": span["end"], "score": span["score"]}
            )
    return results


# --- scoring: SQuAD v1.1/v2.0 for text without CJK characters, CMRC 2018 for text with them


def normalize_answer(text: str) -> str:
    """Lower case, drop punctuation and articles, collapse whitespace (SQuAD's rule)."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def exact_match(prediction: str, truth: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(truth))


def f1(prediction: str, truth: str) -> float:
    pred_tokens = normalize_answer(prediction).split()
    true_tokens = normalize_answer(truth).split()
    if not pred_tokens or not true_tokens:  # v2: unanswerable matches only an empty answer
        return float(pred_tokens == true_tokens)
    common = collections.Counter(pred_tokens) & collections.Counter(true_tokens)
    overlap = sum(common.values())
    if overlap == 0:
        return 0.0
    precision, recall = overlap / len(pred_tokens), overlap / len(true_tokens)
    return 2 * precision * recall / (precision + recall)


# CMRC 2018's evaluation script (cmrc2018_evaluate.py, v5): its `sp_char` punctuation is
# dropped; its list's "……" entry is two characters and never matches one, so it is left out.
CMRC_PUNCTUATION = frozenset("-:_*^/\\~`+=，。：？！“”；’《》·、「」（）－～『』")
_CMRC_CHINESE = re.compile("[\u4e00-\u9fa5]")
# The script splits the runs between Chinese characters with nltk.word_tokenize; lmforge
# does not depend on nltk: words and single punctuation marks come close (both split
# "nexon(2004)" into nexon ( 2004 )).
_CMRC_RUN_WORDS = re.compile(r"\w+|[^\w\s]")


def cmrc_segments(text: str) -> list[str]:
    """Lower-cased text as CMRC 2018 scores it: each Chinese character one segment, the
    runs between them split into words, CMRC's punctuation dropped."""
    segments: list[str] = []
    run = ""
    for char in text.lower().strip():
        if char in CMRC_PUNCTUATION:
            continue
        if _CMRC_CHINESE.match(char):
            segments += _CMRC_RUN_WORDS.findall(run)
            run = ""
            segments.append(char)
        else:
            run += char
    return segments + _CMRC_RUN_WORDS.findall(run)


def cmrc_exact_match(prediction: str, truth: str) -> float:
    def strip(text: str) -> str:
        return "".join(ch for ch in text.lower().strip() if ch not in CMRC_PUNCTUATION)

    return float(strip(prediction) == strip(truth))


def cmrc_f1(prediction: str, truth: str) -> float:
    """F1 of the longest common run of segments (CMRC 2018 counts a contiguous overlap,
    where SQuAD counts a bag of words)."""
    pred, true = cmrc_segments(prediction), cmrc_segments(truth)
    longest = _longest_common_run(pred, true)
    if longest == 0:
        return 0.0
    precision, recall = longest / len(pred), longest / len(true)
    return 2 * precision * recall / (precision + recall)


def _longest_common_run(a: list[str], b: list[str]) -> int:
    best, previous = 0, [0] * (len(b) + 1)
    for x in a:
        current = [0] * (len(b) + 1)
        for j, y in enumerate(b, start=1):
            if x == y:
                current[j] = previous[j - 1] + 1
                best = max(best, current[j])
        previous = current
    return best


def qa_scores(predictions: list[str], references: list[list[str]]) -> dict[str, float]:
    """Mean over questions of the best EM and F1 against any reference answer: CMRC 2018's
    rule for questions whose references hold CJK characters, SQuAD's for the others."""
    em = f1_total = 0.0
    for prediction, truths in zip(predictions, references, strict=True):
        truths = truths or [""]
        chinese = any(has_cjk(t) for t in truths)
        em_of, f1_of = (cmrc_exact_match, cmrc_f1) if chinese else (exact_match, f1)
        em += max(em_of(prediction, t) for t in truths)
        f1_total += max(f1_of(prediction, t) for t in truths)
    n = max(len(predictions), 1)
    return {"exact_match": em / n, "f1": f1_total / n}
