"""The DeepSpeed engine on the GPT-2 decoder (model.arch gpt2): the pretrain stage's
guarantees hold for next-token prediction too.

Same runs as tests/test_engine.py, on a tiny decoder: an uninterrupted reference, a run
killed after its step-4 checkpoint and rerun, 2 ranks against 1 rank with accumulation,
and ZeRO 3 (partitioned parameters, gathered for the export).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM, GPT2LMHeadModel

from lmforge.config import deep_merge
from lmforge.engine import complete_tags
from lmforge.pretrain import next_token_rows
from lmforge.tokens import open_blocks
from support import TINY_MODEL, default_params
from test_engine import (
    CKPT,
    LOSS_TOL,
    RUN,
    WEIGHT_TOL,
    assert_same_weights,
    curve,
    kill_9_after_step_4,
    losses,
    metrics,
    stage,
)

DECODER = {
    "model": {**TINY_MODEL, "arch": "gpt2"},
    "tokenize": {"lowercase": False},
}


def new_decoder_run(folder: Path, corpus: Path, override: dict) -> Path:
    shutil.copytree(corpus, folder)
    raw = deep_merge(default_params(), deep_merge(RUN, deep_merge(DECODER, override)))
    raw["finetune"] = {"generation": {**raw["finetune"]["classification"], "max_seq_len": 32}}
    (folder / "params.yaml").write_text(yaml.safe_dump(raw))
    return folder


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("decoder_runs")


@pytest.fixture(scope="module")
def reference(runs, tiny_gpt2_corpus_dirs) -> Path:
    folder = new_decoder_run(runs / "reference", tiny_gpt2_corpus_dirs, {})
    stage(folder)
    return folder


def assert_export_is_the_trained_decoder(folder: Path) -> None:
    """transformers loads a tied GPT-2 from artifacts/pretrained and reproduces the eval loss."""
    out = folder / "artifacts/pretrained"
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    assert isinstance(model, GPT2LMHeadModel)
    assert model.config.n_positions == TINY_MODEL["max_seq_len"]
    assert model.config.eos_token_id == model.config.pad_token_id == 0  # the trained BPE's
    assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()
    validation = open_blocks(folder / "data/tokens", "validation")[0]
    size = yaml.safe_load((folder / "params.yaml").read_text())["pretrain"]["micro_batch_size"]
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(validation), size):
            batch = next_token_rows({"input_ids": validation[start : start + size]}, 0)
            tensors = {k: torch.from_numpy(v) for k, v in batch.items()}
            predicted = tensors["labels"][:, 1:].numel()
            total += float(model(**tensors).loss) * predicted
            count += predicted
    assert total / count == pytest.approx(metrics(folder)["eval_loss"], abs=2e-5)


def test_decoder_reference_run_learns_and_exports_a_plain_gpt2(reference):
    m = metrics(reference)
    assert m["steps"] == 12 and m["ranks"] == 1 and m["validation_unk_rate"] == 0.0
    assert m["eval_perplexity"] == pytest.approx(np.exp(m["eval_loss"]), rel=1e-4)
    assert losses(reference)[-1] < losses(reference)[0]
    assert complete_tags(reference / CKPT) == ["step_00000008", "step_00000012"]
    assert_export_is_the_trained_decoder(reference)


def test_decoder_kill_9_then_rerun_matches_an_uninterrupted_run(
    reference, runs, tiny_gpt2_corpus_dirs
):
    folder = new_decoder_run(runs / "killed", tiny_gpt2_corpus_dirs, {})
    kill_9_after_step_4(folder)
    assert complete_tags(folder / CKPT) == ["step_00000004"]
    stage(folder)
    assert metrics(folder)["resumed_from_step"] == 4
    assert metrics(folder)["eval_loss"] == metrics(reference)["eval_loss"]
    assert curve(folder) == curve(reference)
    assert_same_weights(folder, reference, atol=0.0)


def test_decoder_two_ranks_match_one_rank_with_accumulation(reference, runs, tiny_gpt2_corpus_dirs):
    folder = new_decoder_run(
        runs / "two_ranks", tiny_gpt2_corpus_dirs, {"pretrain": {"num_procs": 2, "grad_accum": 1}}
    )
    stage(folder)
    assert metrics(folder)["ranks"] == 2
    np.testing.assert_allclose(losses(folder), losses(reference), rtol=0, atol=LOSS_TOL)
    assert metrics(folder)["eval_loss"] == pytest.approx(
        metrics(reference)["eval_loss"], abs=LOSS_TOL
    )
    assert_same_weights(folder, reference, atol=WEIGHT_TOL["ranks"])


def test_decoder_zero_3_trains_like_stage_0(reference, runs, tiny_gpt2_corpus_dirs):
    folder = new_decoder_run(runs / "zero3", tiny_gpt2_corpus_dirs, {"pretrain": {"zero_stage": 3}})
    stage(folder)
    np.testing.assert_allclose(losses(folder), losses(reference), rtol=0, atol=LOSS_TOL)
    assert_same_weights(folder, reference, atol=WEIGHT_TOL["zero"])
    assert_export_is_the_trained_decoder(folder)  # partitioned parameters were gathered
