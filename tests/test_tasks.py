"""Task encoding and scoring: label alignment, span mapping, and the reference metrics."""

from __future__ import annotations

import re

import numpy as np
import pytest

from lmforge.data.records import ClassificationExample, NerExample, QaExample
from lmforge.tasks.base import IGNORE_INDEX, Features, trim_padding
from lmforge.tasks.ner import NerTask, encode_texts, extract_entities, first_subwords
from lmforge.tasks.qa import QaTask, best_answers, encode_pairs, squad_scores, token_span
from lmforge.tasks.registry import TASKS
from lmforge.tokenizer import train_tokenizer

TEXTS = [
    "Maria Lopez flew from Paris to Berlin to meet the board of Acme Corporation.",
    "The weather in Oslo was unbelievably cold, said Johan Berg.",
    "Reed Motors was founded in Brookfield in 1961 by Alan Reed.",
] * 20


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(TEXTS, vocab_size=120, min_frequency=1, lowercase=True)


def test_registry_lists_the_three_tasks():
    assert set(TASKS) == {"classification", "ner", "qa"}


def test_ner_labels_go_on_first_subwords_only(tokenizer):
    ex = NerExample(
        tokens=["Maria", "Lopez", "flew", "to", "Berlin"],
        tags=["B-PER", "I-PER", "O", "O", "B-LOC"],
    )
    labels = NerTask().label_list([ex])
    assert labels[0] == "O"
    features = NerTask().encode(tokenizer, [ex], labels, max_seq_len=32)
    targets = features.targets["labels"][0]
    firsts = first_subwords(features.meta["word_ids"][0])
    assert [w for _, w in firsts] == [0, 1, 2, 3, 4]
    assert [labels[targets[p]] for p, _ in firsts] == ex.tags
    # Every other position (specials, later subwords, padding) is ignored by the loss.
    first_positions = {p for p, _ in firsts}
    assert all(targets[p] == IGNORE_INDEX for p in range(32) if p not in first_positions)


def test_ner_evaluation_is_entity_level(tokenizer):
    ex = NerExample(
        tokens=["Maria", "Lopez", "visited", "Berlin"], tags=["B-PER", "I-PER", "O", "B-LOC"]
    )
    labels = ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]
    features = NerTask().encode(tokenizer, [ex], labels, max_seq_len=32)
    logits = np.zeros((1, 32, len(labels)))
    # Predict PER only on "Maria" (B-PER) and "Lopez" as O: the PER entity is wrong as a whole.
    wanted = ["B-PER", "O", "O", "B-LOC"]
    for pos, word in first_subwords(features.meta["word_ids"][0]):
        logits[0, pos, labels.index(wanted[word])] = 5.0
    scores = NerTask().evaluate({"logits": logits}, features, [ex], labels)
    assert scores["precision"] == pytest.approx(0.5)  # 1 of 2 predicted entities right
    assert scores["recall"] == pytest.approx(0.5)  # 1 of 2 gold entities found


def test_extract_entities_gives_character_offsets(tokenizer):
    text = "Yesterday Maria Lopez flew to Berlin."
    enc = tokenizer.encode(text)
    labels = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
    word_ids = np.array([-1 if w is None else w for w in enc.word_ids])
    tag_of_word = {1: "B-PER", 2: "I-PER", 5: "B-LOC"}
    logits = np.zeros((len(enc.ids), len(labels)))
    for pos, word in enumerate(enc.word_ids):
        logits[pos, labels.index(tag_of_word.get(word, "O")) if word is not None else 0] = 5.0
    entities = extract_entities(text, [(logits, enc.offsets, word_ids)], labels)
    assert [(e["text"], e["label"]) for e in entities] == [
        ("Maria Lopez", "PER"),
        ("Berlin", "LOC"),
    ]
    for e in entities:
        assert text[e["start"] : e["end"]] == e["text"]
        assert 0 < e["score"] <= 1


def test_long_text_is_tagged_in_overlapping_windows(tokenizer):
    labels = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
    text = "Yesterday Maria Lopez flew to Berlin. " * 6 + "Unbelievably, Maria stayed in Oslo."
    inputs, offsets, word_ids, owners = encode_texts(tokenizer, [text], 16, 4)
    assert owners == [0] * len(owners) and len(owners) > 5  # one text, many windows
    assert inputs["input_ids"].shape[1] <= 16
    # Tag by word; each window sees only its own context, so a word on a window's edge
    # is tagged wrongly there ("O") and must be read from a window where it is central.
    spans: dict[int, list[int]] = {}
    for row in range(len(owners)):
        for pos in np.flatnonzero(word_ids[row] >= 0):
            start, end = offsets[row][pos]
            span = spans.setdefault(int(word_ids[row][pos]), [start, end])
            span[:] = [min(span[0], start), max(span[1], end)]
    tag_of = {"Maria": "B-PER", "Lopez": "I-PER", "Berlin": "B-LOC", "Oslo": "B-LOC"}
    windows = []
    for row in range(len(owners)):
        ids = word_ids[row]
        content = np.flatnonzero(ids >= 0)
        logits = np.zeros((len(ids), len(labels)))
        for pos in content:
            word = text[slice(*spans[int(ids[pos])])]
            edge = pos in (content[0], content[-1])
            logits[pos, labels.index("O" if edge else tag_of.get(word, "O"))] = 5.0
        windows.append((logits, offsets[row], ids))
    entities = extract_entities(text, windows, labels)
    expected = [("Maria Lopez", "PER"), ("Berlin", "LOC")] * 6 + [("Maria", "PER"), ("Oslo", "LOC")]
    assert [(e["text"], e["label"]) for e in entities] == expected
    starts = [m.start() for m in re.finditer(r"Maria Lopez|Berlin|Maria|Oslo", text)]
    assert [e["start"] for e in entities] == starts
    for e in entities:
        assert text[e["start"] : e["end"]] == e["text"]


def test_qa_token_span_maps_characters_to_tokens(tokenizer):
    context = "Reed Motors was founded in Brookfield in 1961 by Alan Reed."
    features = encode_pairs(tokenizer, ["Where was it founded?"], [context], 64, 16)
    start = context.index("Brookfield")
    s, e = token_span(features.meta["offsets"][0], start, start + len("Brookfield"))
    offsets = features.meta["offsets"][0]
    assert context[offsets[s][0] : offsets[e][1]] == "Brookfield"


def test_qa_long_context_is_read_in_windows_and_answer_found(tokenizer):
    filler = "The weather in Oslo was unbelievably cold. " * 12
    context = filler + "Reed Motors was founded in Brookfield in 1961 by Alan Reed."
    ex = QaExample(
        id="q1",
        question="Where?",
        context=context,
        answer_texts=["Brookfield"],
        answer_starts=[context.index("Brookfield")],
    )
    features = QaTask().encode(tokenizer, [ex], [], max_seq_len=48, doc_stride=12)
    assert len(features) > 3  # several windows
    windows_with_answer = np.flatnonzero(features.targets["start_positions"] > 0)
    assert len(windows_with_answer) >= 1
    # Put the model's confidence exactly on the labelled span of one window.
    starts = np.full((len(features), 48), -5.0)
    ends = np.full((len(features), 48), -5.0)
    row = windows_with_answer[0]
    starts[row, features.targets["start_positions"][row]] = 5.0
    ends[row, features.targets["end_positions"][row]] = 5.0
    [answer] = best_answers(starts, ends, features, [context], max_answer_len=10)
    assert answer["answer"] == "Brookfield"
    assert context[answer["start"] : answer["end"]] == "Brookfield"
    scores = QaTask().evaluate({"start_logits": starts, "end_logits": ends}, features, [ex], [])
    assert scores == {"exact_match": 1.0, "f1": 1.0}


def test_squad_metric_matches_the_official_definitions():
    # Articles, punctuation and case are ignored; F1 is token overlap; max over references.
    scores = squad_scores(
        ["The Eiffel tower!", "in Paris France", "nothing"],
        [["eiffel tower"], ["Paris", "Paris, France"], ["something else"]],
    )
    assert scores["exact_match"] == pytest.approx(1 / 3)
    # "in paris france" vs "paris france": P = 2/3, R = 1 -> F1 = 0.8
    assert scores["f1"] == pytest.approx((1.0 + 0.8 + 0.0) / 3)
    partial = squad_scores(["the big red barn"], [["red barn door"]])
    # pred tokens {big, red, barn} vs {red, barn, door}: overlap 2 -> P=R=2/3, F1=2/3
    assert partial["f1"] == pytest.approx(2 / 3)
    assert squad_scores([""], [[]]) == {"exact_match": 1.0, "f1": 1.0}  # v2 unanswerable


def test_classification_scores(tokenizer):
    from lmforge.tasks.classification import ClassificationTask

    task = ClassificationTask()
    examples = [
        ClassificationExample("good", "pos"),
        ClassificationExample("bad", "neg"),
        ClassificationExample("fine", "pos"),
    ]
    labels = task.label_list(examples)
    assert labels == ["neg", "pos"]
    features = task.encode(tokenizer, examples, labels, max_seq_len=16)
    logits = np.array([[0.0, 1.0], [0.0, 1.0], [0.0, 1.0]])  # always "pos"
    scores = task.evaluate({"logits": logits}, features, examples, labels)
    assert scores["accuracy"] == pytest.approx(2 / 3)
    assert scores["f1_macro"] == pytest.approx((0.0 + 0.8) / 2)


def test_trim_padding_cuts_only_all_padding_columns():
    batch = {
        "input_ids": np.array([[1, 2, 3, 0, 0], [1, 2, 0, 0, 0]]),
        "attention_mask": np.array([[1, 1, 1, 0, 0], [1, 1, 0, 0, 0]]),
        "labels": np.array([1, 0]),
    }
    trimmed = trim_padding(batch)
    assert trimmed["input_ids"].shape == (2, 3)
    assert trimmed["labels"].shape == (2,)
    assert isinstance(Features(inputs=batch), Features)
