"""The GPT-2 branch in-process: params, the byte-level BPE tokenizer, eos packing, the
generation data reader, and the completion-only scoring rule of tasks/generation.py."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml

from lmforge.config import load_params
from lmforge.data.generation import read_generation
from lmforge.data.prepare import prepare, read_prepared
from lmforge.data.records import GenerationExample
from lmforge.errors import ConfigError, DataError
from lmforge.modeling import gpt2_config
from lmforge.tasks.base import IGNORE_INDEX
from lmforge.tasks.generation import (
    GenerationTask,
    completion_nll,
    context_ids,
    encode_example,
    encode_examples,
    perplexity,
)
from lmforge.tokenizer import EOS, save_tokenizer, train_byte_bpe, unk_rate
from lmforge.tokens import BLOCK_LAYOUTS, open_blocks, pack_corpus
from support import REPO, TINY_MODEL

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Python's syntax is clear; indentation matters.",
    "数据管道把原始文本变成可以服务的模型。",
    "Emoji too: 🙂👍🏽 and flags 🇫🇷.",
] * 30
EOS_ID = 0  # train_byte_bpe gives its one special token the first id (a checkpoint's: any)
ODD = "中文测试，emoji 🙂👍🏽🇫🇷, tabs\tand\nnewlines, accents é, a rare 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 run, <html>"


def gpt2_params() -> dict:
    return yaml.safe_load((REPO / "params-gpt2.yaml").read_text())


def load(tmp_path, raw: dict):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return load_params(path)


@pytest.fixture(scope="module")
def tokenizer():
    return train_byte_bpe(TEXTS, vocab_size=400, min_frequency=2)


# --- params ------------------------------------------------------------------------------


def test_preset_loads_and_lists_only_generation():
    params = load_params(REPO / "params-gpt2.yaml")
    assert params.model.arch == "gpt2" and params.finetune.tasks == ["generation"]
    assert load_params(REPO / "params.yaml").finetune.tasks == ["classification", "ner", "qa"]


def _lookup(raw: dict, path: str):
    for key in path.split("."):
        raw = raw[key]
    return dict(raw)


def _edit(raw: dict, path: str, value) -> dict:
    *parents, last = path.split(".")
    node = raw
    for key in parents:
        node = node[key]
    if value is None:
        del node[last]
    else:
        node[last] = value
    return raw


@pytest.mark.parametrize(
    ("base", "edits", "message"),
    [
        ("gpt2", {"finetune.ner": "=finetune.generation"},
         "finetune.ner: model.arch gpt2 fine-tunes only generation"),
        ("bert", {"finetune.generation": "=finetune.classification"},
         "finetune.generation: model.arch bert fine-tunes only classification, ner, qa"),
        ("gpt2", {"finetune.generation": None}, "finetune must list at least one task (generation)"),
        ("gpt2", {"tokenize.lowercase": True}, "tokenize.lowercase must be false with model.arch gpt2"),
        ("gpt2", {"data.source": "local", "data.local.generation": None},
         "data.local.generation is missing: finetune.generation needs its data"),
        ("bert", {"data.source": "hf", "data.hf.qa": None},
         "data.hf.qa is missing: finetune.qa needs its data"),
        ("gpt2", {"model.arch": "gpt3"}, "model.arch must be one of bert, gpt2"),
        ("gpt2", {"finetune.generation.max_seq_len": 512},
         "finetune.generation.max_seq_len must be between 16 and model.max_seq_len"),
    ],
)  # fmt: skip
def test_bad_task_sets_name_the_key(tmp_path, base, edits, message):
    raw = gpt2_params() if base == "gpt2" else yaml.safe_load((REPO / "params.yaml").read_text())
    for path, value in edits.items():
        if isinstance(value, str) and value.startswith("="):  # a copy of another entry
            value = _lookup(raw, value[1:])
        _edit(raw, path, value)
    with pytest.raises(ConfigError) as err:
        load(tmp_path, raw)
    assert message in str(err.value)


# --- tokenizer -----------------------------------------------------------------------------


def test_byte_bpe_round_trips_any_text_and_has_no_unknowns(tokenizer):
    assert tokenizer.token_to_id(EOS) == EOS_ID == 0
    encoding = tokenizer.encode(ODD)
    assert tokenizer.decode(encoding.ids) == ODD
    assert EOS_ID not in encoding.ids  # no post-processor adds tokens
    assert tokenizer.decode(tokenizer.encode("中文").ids) == "中文"
    assert tokenizer.decode(tokenizer.encode("🙂").ids) == "🙂"
    assert unk_rate(tokenizer, np.array([encoding.ids])) == 0.0


def test_saved_tokenizer_loads_in_transformers_with_eos_roles(tokenizer, tmp_path):
    from transformers import AutoTokenizer

    save_tokenizer(tokenizer, tmp_path, model_max_length=64, arch="gpt2")
    fast = AutoTokenizer.from_pretrained(tmp_path)
    assert fast.eos_token == fast.bos_token == fast.pad_token == fast.unk_token == EOS
    assert fast.eos_token_id == fast.pad_token_id == 0 and fast.model_max_length == 64
    ids = fast(ODD)["input_ids"]
    assert ids == tokenizer.encode(ODD).ids and fast.decode(ids) == ODD


TRAIN_IN_A_PROCESS = """
import sys
from lmforge.tokenizer import train_byte_bpe
texts = [line for line in sys.stdin.read().split("\\n") if line]
sys.stdout.write(train_byte_bpe(texts, vocab_size=300, min_frequency=1).to_str())
"""


def test_byte_bpe_training_is_deterministic_across_processes():
    """Many equally frequent pairs (each text once): ties must not fall in hash-map order."""
    texts = "\n".join(f"w{i} x{i % 7} 词{i % 5} ab ba" for i in range(200))
    outputs = {
        subprocess.run(
            [sys.executable, "-c", TRAIN_IN_A_PROCESS],
            input=texts, capture_output=True, text=True, check=True,
            env={"PYTHONPATH": str(REPO / "src"), "PYTHONHASHSEED": str(seed)},
        ).stdout
        for seed in (1, 2, 3)
    }  # fmt: skip
    assert len(outputs) == 1
    assert json.loads(outputs.pop())["model"]["type"] == "BPE"


def test_packing_puts_eos_after_every_document_in_plain_blocks(tokenizer, tmp_path):
    docs = ["first document", "second one 中文", "third 🙂", "and a fourth, longer document"]
    header = pack_corpus(tokenizer, [docs[:2], docs[2:]], 8, tmp_path, "train",
                         layout=BLOCK_LAYOUTS["gpt2"])  # fmt: skip
    blocks, _ = open_blocks(tmp_path, "train")
    stream = [i for doc in docs for i in [*tokenizer.encode(doc).ids, EOS_ID]]
    assert header["blocks"] == len(stream) // 8 and blocks.shape == (len(stream) // 8, 8)
    np.testing.assert_array_equal(blocks.reshape(-1), stream[: blocks.size])
    assert header["dtype"] == "uint16"


# --- data ----------------------------------------------------------------------------------


def test_reader_takes_prompt_completion_text_and_plain_text(tmp_path):
    jsonl = tmp_path / "g.jsonl"
    jsonl.write_text(
        '{"prompt": "Q: 2+2?", "completion": " 4"}\n\n{"completion": "no prompt"}\n'
        '{"text": "just text 中文"}\n',
        encoding="utf-8",
    )
    assert read_generation(jsonl) == [
        GenerationExample("Q: 2+2?", " 4"),
        GenerationExample("", "no prompt"),
        GenerationExample("", "just text 中文"),
    ]
    plain = tmp_path / "g.txt"
    plain.write_text("First paragraph\nwraps here.\n\nSecond one.\n", encoding="utf-8")
    assert read_generation(plain) == [
        GenerationExample("", "First paragraph\nwraps here."),
        GenerationExample("", "Second one."),
    ]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"prompt": "p", "answer": "a"}', "g.jsonl:2: no field 'completion' or 'text' (fields found: prompt, answer)"),
        ('{"prompt": "p", "completion": 3}', "g.jsonl:2: field 'completion' is int; expected a string"),
        ('{"prompt": null, "completion": "c"}', "g.jsonl:2: field 'prompt' is NoneType"),
        ('{"completion": "  "}', "g.jsonl:2: field 'completion' is empty"),
        ('{"completion": "c"', "g.jsonl:2: not valid JSON"),
        ('["c"]', "g.jsonl:2: expected a JSON object, got list"),
    ],
)  # fmt: skip
def test_reader_errors_name_file_line_and_field(tmp_path, line, message):
    path = tmp_path / "g.jsonl"
    path.write_text('{"completion": "fine"}\n' + line + "\n", encoding="utf-8")
    with pytest.raises(DataError) as err:
        read_generation(path)
    assert message in str(err.value)


def test_prepare_writes_generation_records_and_only_the_listed_tasks(tmp_path):
    from lmforge.data.sample import write_sample_data

    params = load_params(REPO / "params-gpt2.yaml")
    write_sample_data(tmp_path / "sample", params.data.sample, params.seed)
    summary = prepare(params.data, tmp_path / "out", tmp_path / "sample", task_names=["generation"])
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "corpus", "generation", "summary.json",
    ]  # fmt: skip
    assert summary["counts"]["generation"] == {"train": 480, "validation": 60}
    validation = read_prepared(tmp_path / "out", "generation", "validation")
    assert validation[0].completion and all(isinstance(e.prompt, str) for e in validation)
    train_text = (tmp_path / "sample/generation/train.jsonl").read_text(encoding="utf-8")
    assert not any(e.completion.strip() in train_text for e in validation)


# --- scoring rule ----------------------------------------------------------------------------


def test_only_completion_and_its_eos_are_labelled(tokenizer):
    record = GenerationExample("The quick brown", " fox jumps")
    ids, labels = encode_example(tokenizer, record, max_len=64)
    prompt = tokenizer.encode("The quick brown").ids
    completion = tokenizer.encode(" fox jumps").ids
    assert ids.tolist() == prompt + completion + [EOS_ID]
    assert labels.tolist() == [IGNORE_INDEX] * len(prompt) + completion + [EOS_ID]
    assert tokenizer.decode(ids[labels != IGNORE_INDEX].tolist()) == " fox jumps"


def test_an_empty_prompt_reads_eos_as_its_context(tokenizer):
    ids, labels = encode_example(tokenizer, {"prompt": "", "completion": "中文"}, max_len=64)
    assert context_ids(tokenizer, "") == [EOS_ID]
    assert ids[0] == EOS_ID and labels[0] == IGNORE_INDEX
    assert (labels[1:] != IGNORE_INDEX).all()  # every completion token is predicted


def test_too_long_examples_cut_the_prompt_start_then_the_completion_end(tokenizer):
    prompt, completion = "one two three four five six", " seven eight"
    target = [*tokenizer.encode(completion).ids, EOS_ID]
    keep = 2  # prompt tokens that still fit
    ids, labels = encode_example(
        tokenizer, GenerationExample(prompt, completion), max_len=len(target) + keep
    )
    assert ids[keep:].tolist() == target and (labels[:keep] == IGNORE_INDEX).all()
    assert ids[:keep].tolist() == tokenizer.encode(prompt).ids[-keep:]
    long = " ".join(["word"] * 40)
    ids, labels = encode_example(tokenizer, GenerationExample(prompt, long), max_len=8)
    assert len(ids) == 8 and labels[0] == IGNORE_INDEX and (labels[1:] != IGNORE_INDEX).all()


def test_numpy_scoring_equals_the_models_own_loss(tokenizer):
    """completion_nll over a batch's logits gives the loss GPT-2 computes from the labels."""
    from lmforge.config import ModelConfig

    torch.manual_seed(0)
    from transformers import GPT2LMHeadModel

    model = GPT2LMHeadModel(
        gpt2_config(ModelConfig(**TINY_MODEL), tokenizer.get_vocab_size(), EOS_ID)
    )
    model.eval()
    examples = [
        GenerationExample("The quick brown", " fox jumps over"),
        GenerationExample("", "数据管道 🙂"),
        GenerationExample("Python's", " syntax is clear; indentation matters."),
    ]
    features = encode_examples(tokenizer, examples, max_len=32)
    assert set(features.inputs) == {"input_ids", "attention_mask"}  # no token_type_ids
    inputs = {k: torch.from_numpy(v) for k, v in features.inputs.items()}
    labels = torch.from_numpy(features.targets["labels"])
    with torch.no_grad():
        out = model(**inputs, labels=labels)
    nll, tokens = completion_nll(out.logits.numpy(), features.targets["labels"])
    assert nll.sum() / tokens.sum() == pytest.approx(float(out.loss), rel=1e-5)
    # Padding is masked: a row scores the same alone as in a padded batch.
    alone = encode_examples(tokenizer, examples[:1], max_len=32)
    with torch.no_grad():
        logits = model(**{k: torch.from_numpy(v) for k, v in alone.inputs.items()}).logits
    single, _ = completion_nll(logits.numpy(), alone.targets["labels"])
    assert single[0] == pytest.approx(nll[0], rel=1e-5)

    task = GenerationTask()
    reduced = task.reduce_outputs({"logits": out.logits.numpy()}, features, slice(0, 3))
    metrics = task.evaluate(reduced, features, examples, [])
    assert metrics["eval_loss"] == pytest.approx(float(out.loss), rel=1e-5)
    assert metrics["perplexity"] == pytest.approx(math.exp(float(out.loss)), rel=1e-5)
    assert perplexity(float(nll.sum()), int(tokens.sum())) == pytest.approx(metrics["perplexity"])


def test_hub_texts_become_completions_of_an_empty_prompt():
    from datasets import Dataset

    from lmforge.data.hub import generation_from_hub

    rows = Dataset.from_dict({"text": ["Once upon a time.", "  ", "中文故事 🙂\n"]})
    assert generation_from_hub(rows, "text", "hf:x[train]") == [
        GenerationExample("", "Once upon a time."),
        GenerationExample("", "中文故事 🙂"),
    ]
    with pytest.raises(DataError, match=r"^hf:x\[train\]: no column 'story'"):
        generation_from_hub(rows, "story", "hf:x[train]")
