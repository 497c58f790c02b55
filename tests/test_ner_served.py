"""Served NER scores what evaluation scored: a small model fine-tuned on the shared CoNLL
data, served by the HTTP app (fp32, then int8), sent the validation sentences as raw text."""

from __future__ import annotations

import importlib.util
import sys

import pytest

from support import REPO, SHARED_DATA

CASES = {
    "english": ("conll2003/train.txt", "conll2003/valid.txt"),
    "chinese": ("zh/resume-ner/train.conll", "zh/resume-ner/dev.conll"),
}


def load_bench():
    spec = importlib.util.spec_from_file_location(
        "bench_ner_served", REPO / "bench" / "ner_served.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_gold_spans_are_character_offsets_of_the_joined_text():
    bench = load_bench()
    text, spans = bench.gold_spans(["U.S.", "troops", "in", "Iraq"], ["B-LOC", "O", "O", "B-LOC"])
    assert text == "U.S. troops in Iraq"
    assert {text[a:b] for a, b, _ in spans} == {"U.S.", "Iraq"}
    text, spans = bench.gold_spans(list("高勇，1966年"), ["B-NAME", "I-NAME", *"OOOOOO"])
    assert text == "高勇，1966年" and spans == {(0, 2, "NAME")}


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"{SHARED_DATA} not present")
@pytest.mark.parametrize("language", sorted(CASES))
def test_served_f1_equals_the_stage_f1(tmp_path, language):
    bench = load_bench()
    train_file, validation_file = (SHARED_DATA / name for name in CASES[language])
    train = bench.read_conll(train_file)[:400]
    # Long sentences too: with 32 positions, many are read in several windows.
    validation = bench.read_conll(validation_file)[:150]
    finetuned, metrics = bench.finetune_small(train, validation, tmp_path, 4.0, 32)
    assert metrics["f1"] > 0.05  # a model that finds entities, so agreement means something
    serving = tmp_path / "serving" / "ner"
    bench.export_serving(finetuned, serving)
    texts, gold = zip(*(bench.gold_spans(e.tokens, e.tags) for e in validation), strict=True)
    served = bench.span_f1(gold, bench.served_spans(serving, texts))
    assert served["f1"] == pytest.approx(metrics["f1"], abs=0.002)
    # int8: the service runs each row alone, unpadded, as compress evaluates int8 models,
    # so requests of 32 texts score exactly what the row-by-row evaluation scored.
    bench.quantize_serving(serving)
    served_int8 = bench.span_f1(gold, bench.served_spans(serving, texts))
    assert served_int8["f1"] == bench.stage_f1_of_onnx(serving, validation)
