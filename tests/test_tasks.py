"""Task encoding and scoring: label alignment, span mapping, and the reference metrics."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from seqeval.metrics.sequence_labeling import get_entities
from transformers import BertForMaskedLM, GPT2LMHeadModel

from lmforge.config import ENCODER_TASKS, ModelConfig
from lmforge.config import TASKS as CONFIG_TASKS
from lmforge.data.records import ClassificationExample, NerExample, QaExample
from lmforge.modeling import bert_config, gpt2_config, task_model
from lmforge.tasks.base import IGNORE_INDEX, Features, trim_padding
from lmforge.tasks.ner import (
    NerTask,
    allowed_transitions,
    decode_bio,
    encode_texts,
    entities_of,
    tagged_words,
    word_spans,
)
from lmforge.tasks.qa import (
    QaTask,
    best_answers,
    cmrc_segments,
    encode_pairs,
    qa_scores,
    token_span,
)
from lmforge.tasks.registry import TASKS, get_task
from lmforge.tasks.script import join_tokens
from lmforge.tokenizer import train_tokenizer, unk_rate
from lmforge.tokens import open_blocks, pack_corpus
from support import TINY_MODEL

TEXTS = [
    "Maria Lopez flew from Paris to Berlin to meet the board of Acme Corporation.",
    "The weather in Oslo was unbelievably cold, said Johan Berg.",
    "Reed Motors was founded in Brookfield in 1961 by Alan Reed.",
] * 20


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(TEXTS, vocab_size=120, min_frequency=1, lowercase=True)


def test_registry_lists_the_encoder_and_decoder_tasks():
    assert tuple(TASKS) == CONFIG_TASKS == (*ENCODER_TASKS, "generation")
    assert get_task("generation").metric_name == "perplexity"


def first_positions(features: Features, row: int = 0) -> list[tuple[int, int]]:
    """(position, word) of every first subword in one window row."""
    windows = features.meta["windows"]
    return [(int(p), int(windows.word_ids[row, p])) for p in np.flatnonzero(windows.first[row])]


def test_ner_labels_go_on_first_subwords_only(tokenizer):
    ex = NerExample(
        tokens=["Maria", "Lopez", "flew", "to", "Berlin"],
        tags=["B-PER", "I-PER", "O", "O", "B-LOC"],
    )
    labels = NerTask().label_list([ex])
    assert labels == ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]  # every type has its I- tag
    features = NerTask().encode(tokenizer, [ex], labels, max_seq_len=32)
    targets = features.targets["labels"][0]
    firsts = first_positions(features)
    assert [w for _, w in firsts] == [0, 1, 2, 3, 4]
    assert [labels[targets[p]] for p, _ in firsts] == ex.tags
    # Every other position (specials, later subwords, padding) is ignored by the loss.
    positions = {p for p, _ in firsts}
    assert all(targets[p] == IGNORE_INDEX for p in range(len(targets)) if p not in positions)


def test_ner_evaluation_is_entity_level(tokenizer):
    ex = NerExample(
        tokens=["Maria", "Lopez", "visited", "Berlin"], tags=["B-PER", "I-PER", "O", "B-LOC"]
    )
    labels = ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]
    features = NerTask().encode(tokenizer, [ex], labels, max_seq_len=32)
    logits = np.zeros((*features.inputs["input_ids"].shape, len(labels)))
    # Predict PER only on "Maria" (B-PER) and "Lopez" as O: the PER entity is wrong as a whole.
    wanted = ["B-PER", "O", "O", "B-LOC"]
    for pos, word in first_positions(features):
        logits[0, pos, labels.index(wanted[word])] = 5.0
    scores = NerTask().evaluate({"logits": logits}, features, [ex], labels)
    assert scores["precision"] == pytest.approx(0.5)  # 1 of 2 predicted entities right
    assert scores["recall"] == pytest.approx(0.5)  # 1 of 2 gold entities found


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("Maria Lopez joined Acme Corp.", ["Maria", "Lopez", "joined", "Acme", "Corp", "."]),
        ("U.S.-based, 3.5%", ["U", ".", "S", ".", "-", "based", ",", "3", ".", "5", "%"]),
        ("Café naïve\u00a0déjà", ["Café", "naïve", "déjà"]),  # accents; no-break space
        ("I \u2764\ufe0f Oslo 👩\u200d💻!", ["I", "\u2764\ufe0f", "Oslo", "👩\u200d💻", "!"]),
        # Chinese: one word per character, Latin letters and digits too (as Resume NER).
        ("高勇：男，1966年生，MBA。", list("高勇：男，1966年生，MBA。")),
        ("我在 Acme 工作😀", ["我", "在", "A", "c", "m", "e", "工", "作", "😀"]),
        ("a\u200bb", ["a", "b"]),  # an invisible format character separates
    ],
)
def test_ner_words_of_raw_text(text, words):
    spans = word_spans(text)
    assert [text[a:b] for a, b in spans] == words


@pytest.mark.parametrize(
    ("tokens", "tags"),
    [
        (["U.S.", "troops", "left", "New", "York-based", "Acme", "."],
         ["B-LOC", "O", "O", "B-LOC", "I-LOC", "B-ORG", "O"]),
        (list("高勇，1966年就职于ABC公司"), ["B-NAME", "I-NAME", *"OOOOOOOOO", *["B-ORG"] + ["I-ORG"] * 4]),
    ],
)  # fmt: skip
def test_ner_training_words_are_the_words_of_the_sentence_text(tokens, tags):
    words, word_tags = tagged_words(tokens, tags)
    text = join_tokens(tokens)
    assert words == [text[a:b] for a, b in word_spans(text)]
    # A token cut into several words tags them as one entity: the same spans.
    assert len(word_tags) == len(words)
    assert get_entities(word_tags) != [] and [
        "".join(words[s : e + 1]) for _, s, e in get_entities(word_tags)
    ] == ["".join(tokens[s : e + 1]).replace(" ", "") for _, s, e in get_entities(tags)]


def test_ner_tokens_split_into_words_get_inside_tags():
    words, tags = tagged_words(["U.S.", "Army", "won"], ["B-ORG", "I-ORG", "O"])
    assert words == ["U", ".", "S", ".", "Army", "won"]
    assert tags == ["B-ORG", "I-ORG", "I-ORG", "I-ORG", "I-ORG", "O"]


def test_bio_decoding_keeps_a_valid_argmax_and_repairs_an_invalid_one():
    labels = ("O", "B-PER", "I-PER", "B-LOC", "I-LOC")
    allowed = allowed_transitions(labels)
    valid = np.array([[0.1, 0.8, 0.1, 0, 0], [0.1, 0.1, 0.8, 0, 0], [0.9, 0, 0, 0.1, 0]])
    assert list(decode_bio(valid, allowed)) == [1, 2, 0]
    # Argmax O I-PER I-PER: an I- after O is invalid. B-PER I-PER I-PER
    # (0.4 * 0.6 * 0.7) beats O O O (0.5 * 0.3 * 0.2).
    fragment = np.array([[0.5, 0.4, 0.1, 0, 0], [0.3, 0.1, 0.6, 0, 0], [0.2, 0.1, 0.7, 0, 0]])
    assert list(decode_bio(fragment, allowed)) == [1, 2, 2]
    # B-PER I-LOC: the type may not change inside an entity.
    switch = np.array([[0.1, 0.9, 0, 0, 0], [0.1, 0, 0.3, 0, 0.6]])
    assert [labels[i] for i in decode_bio(switch, allowed)] == ["B-PER", "I-PER"]


def test_bio_decoding_is_the_best_valid_sequence():
    import itertools

    labels = ("O", "B-A", "I-A", "B-B", "I-B")
    allowed = allowed_transitions(labels)
    rng = np.random.default_rng(0)
    for _ in range(30):
        probs = rng.dirichlet(np.ones(len(labels)) * 0.5, size=4)
        best = max(
            (
                path
                for path in itertools.product(range(len(labels)), repeat=4)
                if allowed[0, path[0]]
                and all(allowed[a + 1, b] for a, b in itertools.pairwise(path))
            ),
            key=lambda path: np.prod(probs[np.arange(4), path]),
        )
        assert tuple(decode_bio(probs, allowed)) == best


def oracle_logits(windows, words, tag_of, labels, edge_tag="O"):
    """Logits that tag each word by `tag_of` where it is read, but "O" at a window's edges
    (no context there): a word must be read from a window where it is central."""
    logits = np.zeros((*windows.word_ids.shape, len(labels)))
    for row in range(len(windows.word_ids)):
        content = np.flatnonzero(windows.word_ids[row] >= 0)
        for pos in content:
            word = words[windows.owners[row]][windows.word_ids[row, pos]]
            edge = pos in (content[0], content[-1])
            logits[row, pos, labels.index(edge_tag if edge else tag_of.get(word, "O"))] = 5.0
    return logits


def test_extract_entities_gives_character_offsets(tokenizer):
    labels = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
    texts = ["Yesterday  Maria Lopez flew to Berlin.", "I \u2764\ufe0f Berlin 👩\u200d💻 Maria!"]
    inputs, state = encode_texts(tokenizer, texts, 32)
    spans, windows = state
    words = [[t[a:b] for a, b in s] for t, s in zip(texts, spans, strict=True)]
    tag_of = {"Maria": "B-PER", "Lopez": "I-PER", "Berlin": "B-LOC"}
    logits = oracle_logits(windows, words, tag_of, labels, edge_tag="O")
    first, second = entities_of(texts, logits, state, labels)
    assert [(e["text"], e["label"], e["start"]) for e in first] == [
        ("Maria Lopez", "PER", 11),
        ("Berlin", "LOC", 31),
    ]
    assert [(e["text"], e["label"]) for e in second] == [("Berlin", "LOC"), ("Maria", "PER")]
    for text, entities in zip(texts, (first, second), strict=True):
        for e in entities:
            assert text[e["start"] : e["end"]] == e["text"]
            assert 0 < e["score"] <= 1


def test_chinese_entities_are_character_offsets_into_the_text(tokenizer):
    # Full-width punctuation, Latin letters, digits and an emoji inside Chinese text.
    text = "😀高勇，男，1966年生，现任ABC公司（北京）总经理。"
    labels = ["O", "B-NAME", "I-NAME", "B-ORG", "I-ORG", "B-LOC", "I-LOC"]
    inputs, state = encode_texts(tokenizer, [text], 64)
    spans, windows = state
    assert len(spans[0]) == len(text)  # one word per character
    wanted = {"高勇": "NAME", "ABC公司": "ORG", "北京": "LOC"}
    tags = ["O"] * len(text)
    for entity, kind in wanted.items():
        start = text.index(entity)
        tags[start : start + len(entity)] = [f"B-{kind}"] + [f"I-{kind}"] * (len(entity) - 1)
    logits = np.zeros((*windows.word_ids.shape, len(labels)))
    for pos in np.flatnonzero(windows.word_ids[0] >= 0):
        logits[0, pos, labels.index(tags[windows.word_ids[0, pos]])] = 5.0
    [entities] = entities_of([text], logits, state, labels)
    assert [(e["text"], e["label"]) for e in entities] == [(t, k) for t, k in wanted.items()]
    assert [e["start"] for e in entities] == [text.index(t) for t in wanted]


def test_long_text_is_tagged_in_overlapping_windows(tokenizer):
    labels = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
    text = "Yesterday Maria Lopez flew to Berlin. " * 6 + "Unbelievably, Maria stayed in Oslo."
    inputs, state = encode_texts(tokenizer, [text], 16)
    spans, windows = state
    assert list(windows.owners) == [0] * len(windows.owners) and len(windows.owners) > 5
    assert inputs["input_ids"].shape[1] <= 16
    words = [[text[a:b] for a, b in spans[0]]]
    tag_of = {"Maria": "B-PER", "Lopez": "I-PER", "Berlin": "B-LOC", "Oslo": "B-LOC"}
    [entities] = entities_of([text], oracle_logits(windows, words, tag_of, labels), state, labels)
    expected = [("Maria Lopez", "PER"), ("Berlin", "LOC")] * 6 + [("Maria", "PER"), ("Oslo", "LOC")]
    assert [(e["text"], e["label"]) for e in entities] == expected
    starts = [m.start() for m in re.finditer(r"Maria Lopez|Berlin|Maria|Oslo", text)]
    assert [e["start"] for e in entities] == starts
    # Training reads long sentences in the same windows: every word gets its label once
    # or more, from the first subword of each window that holds it.
    ex = NerExample(tokens=text.split(), tags=["O"] * len(text.split()))
    features = NerTask().encode(tokenizer, [ex], labels, max_seq_len=16)
    seen = {int(w) for w in features.meta["windows"].word_ids[features.meta["windows"].first]}
    assert seen == set(range(len(tagged_words(ex.tokens, ex.tags)[0])))


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
    scores = qa_scores(
        ["The Eiffel tower!", "in Paris France", "nothing"],
        [["eiffel tower"], ["Paris", "Paris, France"], ["something else"]],
    )
    assert scores["exact_match"] == pytest.approx(1 / 3)
    # "in paris france" vs "paris france": P = 2/3, R = 1 -> F1 = 0.8
    assert scores["f1"] == pytest.approx((1.0 + 0.8 + 0.0) / 3)
    partial = qa_scores(["the big red barn"], [["red barn door"]])
    # pred tokens {big, red, barn} vs {red, barn, door}: overlap 2 -> P=R=2/3, F1=2/3
    assert partial["f1"] == pytest.approx(2 / 3)
    assert qa_scores([""], [[]]) == {"exact_match": 1.0, "f1": 1.0}  # v2 unanswerable


def test_cmrc_segments_chinese_by_character_and_latin_runs_as_words():
    # Lower case; CMRC's punctuation (full-width comma, book-title marks) dropped; ASCII
    # brackets stay, as nltk.word_tokenize keeps them in the official script.
    assert cmrc_segments("《跑跑卡丁车》由韩国Nexon(2004)开发，2V2") == [
        *"跑跑卡丁车由韩国", "nexon", "(", "2004", ")", "开", "发", "2v2",
    ]  # fmt: skip


def test_cmrc_metric_hand_computed():
    # EM ignores CMRC punctuation and case; F1 is the longest common run of segments.
    scores = qa_scores(
        ["《北京大学》", "韩国Nexon开发", "上海", "1966年"],
        [["北京大学"], ["Nexon开发与发行"], ["北京"], ["1966年出生", "生于1966年"]],
    )
    # 2: pred [韩 国 nexon 开 发] vs [nexon 开 发 与 发 行]: run 3 -> P 3/5, R 3/6, F1 6/11
    # 3: no common segment -> 0;  4: best of [1966 年 出 生] (2/2, 2/4 -> 2/3) and
    #    [生 于 1966 年] (the same run, 2/3)
    assert scores["exact_match"] == pytest.approx(1 / 4)
    assert scores["f1"] == pytest.approx((1 + 6 / 11 + 0 + 2 / 3) / 4)


def test_cmrc_f1_counts_a_contiguous_run_not_a_bag_of_characters():
    # Same characters, other order: SQuAD's bag would score 1.0, CMRC's run only 2 of 4.
    assert qa_scores(["大学北京"], [["北京大学"]])["f1"] == pytest.approx(0.5)
    # English references keep SQuAD's rule in the same call.
    mixed = qa_scores(["大学北京", "in Paris France"], [["北京大学"], ["Paris, France"]])
    assert mixed["f1"] == pytest.approx((0.5 + 0.8) / 2)


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


def test_unk_rate_counts_unknown_characters_among_text_tokens(tmp_path):
    tokenizer = train_tokenizer(["高勇在北京工作", "北京大学"] * 3, 100, 1, lowercase=True)
    pack_corpus(tokenizer, [["北京工作", "上海工作"]], 6, tmp_path, "validation")  # 上, 海 unseen
    blocks, _ = open_blocks(tmp_path, "validation")
    # Blocks of 4: 北 京 工 作 | [SEP] [UNK] [UNK] 工: 7 text tokens, 2 of them [UNK]
    assert unk_rate(tokenizer, blocks) == pytest.approx(2 / 7)


def test_split_cjk_false_learns_chinese_words_and_still_reads_characters():
    texts = ["房间很干净，服务不错", "酒店不错，房间很大"] * 5
    by_char = train_tokenizer(texts, 200, 2, lowercase=True)
    by_word = train_tokenizer(texts, 200, 2, lowercase=True, split_cjk=False)
    assert by_char.encode("房间不错", add_special_tokens=False).tokens == list("房间不错")
    pieces = by_word.encode("房间不错", add_special_tokens=False).tokens
    assert len(pieces) < 4 and "".join(t.removeprefix("##") for t in pieces) == "房间不错"
    # NER's words are characters: each is one token of its own, as with split_cjk true.
    chars = by_word.encode(list("房间不错"), is_pretokenized=True, add_special_tokens=False)
    assert chars.tokens == list("房间不错")
    # A run of CJK characters longer than WordPiece's default 100-character word is read,
    # not turned into one [UNK].
    long_run = by_word.encode("很" * 150, add_special_tokens=False).tokens
    assert "[UNK]" not in long_run and len(long_run) == 150


# --- the task model's dropout ---------------------------------------------------------------


@pytest.mark.parametrize("arch", ["bert", "gpt2"])
@pytest.mark.parametrize("init", ["pretrained", "random"])
def test_finetune_dropout_replaces_the_pretrained_models(tmp_path, init, arch):
    """finetune.<task>.dropout sets every hidden-layer dropout of the task model (the
    classifier's, GPT-2's embedding dropout too); null keeps the pretrained config's;
    attention dropout is untouched."""
    shape = ModelConfig(**{**TINY_MODEL, "dropout": 0.1, "attention_dropout": 0.05})
    if arch == "bert":
        BertForMaskedLM(bert_config(shape, vocab_size=100)).save_pretrained(tmp_path)
        auto_model, labels = "AutoModelForTokenClassification", ["O", "B-X"]
    else:
        GPT2LMHeadModel(gpt2_config(shape, vocab_size=100, eos_id=1)).save_pretrained(tmp_path)
        auto_model, labels = "AutoModelForCausalLM", []

    def rates(dropout):
        model = task_model(auto_model, init, tmp_path, labels, dropout)
        if labels:
            assert model.config.id2label == {0: "O", 1: "B-X"}
        return sorted({m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)})

    assert rates(None) == [0.05, 0.1]
    assert rates(0.3) == [0.05, 0.3]
