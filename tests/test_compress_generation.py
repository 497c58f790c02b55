"""compress@generation on a small fitted GPT-2 (tests/generation_fixture.py): the cached ONNX
decoder against PyTorch over a multi-step decode, batched rows against single ones, int8,
metrics in the contract's shape, and the serving folder the service reads.
"""

from __future__ import annotations

import json
import math

import numpy as np
import onnxruntime as ort
import pytest
import torch
import transformers
from tokenizers import Tokenizer

from lmforge.compress.decoder_export import torch_greedy
from lmforge.decoder import Cache, Decoder, DecoderShape
from lmforge.tasks.generation import context_ids

PROMPTS = ["The quick brown fox", "今天天气", "Emoji travel well: 🚀"]


@pytest.fixture(scope="module")
def folders(generation_workspace):
    return (
        generation_workspace / "finetuned" / "generation",
        generation_workspace / "serving" / "generation",
    )


@pytest.fixture(scope="module")
def metrics(generation_workspace) -> dict:
    return json.loads((generation_workspace / "metrics.json").read_text())


def decoder_of(serving, name: str) -> Decoder:
    manifest = json.loads((serving / "manifest.json").read_text())
    return Decoder(ort.InferenceSession(str(serving / name)), DecoderShape.from_manifest(manifest))


def prompt_ids(serving, text: str) -> list[int]:
    return context_ids(Tokenizer.from_file(str(serving / "tokenizer.json")), text)


def test_cached_decode_matches_pytorch(folders):
    finetuned, serving = folders
    model = transformers.AutoModelForCausalLM.from_pretrained(str(finetuned)).eval()
    decoder = decoder_of(serving, "model.onnx")
    for text in PROMPTS:
        ids = prompt_ids(serving, text)
        want_ids, want = torch_greedy(model, ids, 20)
        got_ids, got = decoder.greedy(ids, 20)
        assert got_ids == want_ids
        assert max(float(np.abs(a - b).max()) for a, b in zip(got, want, strict=True)) < 1e-4
    assert model.training is False


def test_batched_rows_decode_as_alone(folders):
    """Rows of different lengths, left-padded into one cache, joined and dropped mid-way."""
    _, serving = folders
    decoder = decoder_of(serving, "model.onnx")
    shape = decoder.shape
    alone = {text: decoder.greedy(prompt_ids(serving, text), 10)[0] for text in PROMPTS}
    caches, last, out = [], [], {text: [] for text in PROMPTS}
    for text in PROMPTS:
        logits, cache = decoder.forward(
            np.array([prompt_ids(serving, text)]), Cache.empty(shape, 1)
        )
        caches.append(cache)
        last.append(int(logits[0, -1].argmax()))
    cache, rows = Cache.concat(caches), list(PROMPTS)
    for step in range(10):
        for text, token in zip(rows, last, strict=True):
            out[text].append(token)
        if step == 4:  # the first row leaves; its padding-only columns go with it
            cache, rows, last = cache.select([1, 2]), rows[1:], last[1:]
        logits, cache = decoder.forward(np.array([[t] for t in last]), cache)
        last = [int(row.argmax()) for row in logits[:, -1]]
    assert out[PROMPTS[0]] == alone[PROMPTS[0]][:5]
    for text in PROMPTS[1:]:
        assert out[text] == alone[text], text


def test_metrics_follow_the_contract(metrics):
    assert metrics["metric_name"] == "perplexity"
    assert metrics["max_abs_diff"] <= 1e-4
    assert metrics["parity"]["greedy_tokens_agree"] is True
    for name in ("torch", "onnx_fp32", "onnx_int8"):
        entry = metrics[name]
        assert set(entry) >= {"metric", "latency_ms", "size_mb"}
        assert math.isfinite(entry["metric"]) and entry["metric"] > 1
        assert entry["latency_ms"] > 0 and entry["size_mb"] > 0
    assert abs(metrics["onnx_fp32"]["metric"] / metrics["torch"]["metric"] - 1) < 1e-4
    assert metrics["int8_ppl_ratio"] <= 1.02  # within max_perplexity_increase
    assert metrics["quantization"]["within_budget"] is True
    assert metrics["latency_setup"]["context_tokens"] == 64
    assert metrics["graph"]["fused_operators"]["SkipLayerNormalization"] == 4  # 2 per layer


def test_serving_folder_is_self_contained(folders):
    _, serving = folders
    names = {p.name for p in serving.iterdir()}
    assert {"model.onnx", "model.int8.onnx", "tokenizer.json", "manifest.json"} <= names
    manifest = json.loads((serving / "manifest.json").read_text())
    assert manifest["task"] == "generation" and manifest["model_file"] == "model.int8.onnx"
    assert (manifest["n_layer"], manifest["n_head"], manifest["head_dim"]) == (2, 2, 32)
    assert manifest["eos_token_id"] == 0
    assert manifest["max_positions"] == 128
    session = ort.InferenceSession(str(serving / "model.int8.onnx"))
    assert [i.name for i in session.get_inputs()] == DecoderShape.from_manifest(
        manifest
    ).input_names()
    # One graph for the prompt and the steps: batch, new tokens and past length are dynamic.
    dims = {i.name: i.shape for i in session.get_inputs()}
    assert dims["input_ids"] == ["batch", "new"] and dims["past_key_0"][2] == "past"


def test_export_leaves_the_model_in_eval_mode(tmp_path):
    from generation_fixture import gpt2
    from lmforge.compress.decoder_export import export_decoder

    model = gpt2(50, layers=1, width=16, heads=2, positions=16)
    export_decoder(model, tmp_path / "m.onnx", 17)
    assert not any(m.training for m in model.modules())
    with torch.inference_mode():
        a = model(input_ids=torch.tensor([[1, 2, 3]])).logits
        b = model(input_ids=torch.tensor([[1, 2, 3]])).logits
    assert torch.equal(a, b)  # dropout off
