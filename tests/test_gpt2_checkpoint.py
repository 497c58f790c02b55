"""Starting the GPT-2 branch from a GPT-2-family checkpoint: import, refusals, tokenize with
its own `<|endoftext|>`, next-token training continued from its weights (and resumed after a
kill -9), and `dvc repro` through /v1/generate.

The tiny checkpoint is built here as GPT-2 ships: a byte-level BPE whose `<|endoftext|>` is
appended last (id 50256 in GPT-2's, the last id here too, never 0), so any stage that
assumed id 0 for it would pack, score or stop at the wrong token.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast, PreTrainedTokenizerFast

from lmforge.checkpoints import (
    MANIFEST,
    causal_lm_from,
    import_checkpoint,
    pretraining_model_from,
    save_tokenizer_of,
    start_folder,
)
from lmforge.config import ModelConfig, PretrainConfig, deep_merge
from lmforge.engine import complete_tags
from lmforge.errors import ConfigError
from lmforge.pretrain import run_pretrain
from lmforge.tokenizer import EOS, load_tokenizer, run_tokenize
from lmforge.tokens import open_blocks
from support import REPO, TINY_MODEL, default_params, repo_copy, run_checked
from test_checkpoints import _docs, corpus_files, make_checkpoint
from test_engine import (
    CKPT,
    RUN,
    assert_same_weights,
    curve,
    kill_9_after_step_4,
    losses,
    metrics,
    stage,
)

WIDTH, POSITIONS, VOCAB = 32, 64, 400


def byte_bpe_eos_last(texts: list[str], with_eos: bool = True) -> Tokenizer:
    """GPT-2's layout: a byte-level BPE trained without special tokens, `<|endoftext|>` after."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB - 1,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer)
    if with_eos:
        tokenizer.add_special_tokens([EOS])
    return tokenizer


def make_gpt2(folder: Path, safe: bool = True, with_eos: bool = True) -> Path:
    """A save_pretrained folder: GPT2LMHeadModel (safetensors or pickle) + its tokenizer."""
    tokenizer = byte_bpe_eos_last(_docs(), with_eos)
    eos = tokenizer.token_to_id(EOS) if with_eos else tokenizer.get_vocab_size() - 1
    # GPT2TokenizerFast would add a missing <|endoftext|> (its default roles) itself.
    hf_class = GPT2TokenizerFast if with_eos else PreTrainedTokenizerFast
    hf_class(tokenizer_object=tokenizer).save_pretrained(str(folder))
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=tokenizer.get_vocab_size(), n_positions=POSITIONS, n_embd=WIDTH,
        n_layer=1, n_head=2, bos_token_id=eos, eos_token_id=eos,
    )  # fmt: skip
    model = GPT2LMHeadModel(config)
    model.save_pretrained(str(folder))
    if not safe:  # as older checkpoints ship it
        (folder / "model.safetensors").unlink()
        torch.save(model.state_dict(), folder / "pytorch_model.bin")
    return folder


@pytest.fixture(scope="module")
def gpt2_checkpoint(tmp_path_factory) -> Path:
    return make_gpt2(tmp_path_factory.mktemp("gpt2") / "tiny-gpt2")


def _eos_id(folder: Path) -> int:
    return load_tokenizer(folder).token_to_id(EOS)


# --- import ----------------------------------------------------------------------------------


def test_import_keeps_the_weights_and_the_tokenizers_own_eos(tmp_path, gpt2_checkpoint):
    out = tmp_path / "ckpt"
    manifest = import_checkpoint(str(gpt2_checkpoint), False, 32, out, "gpt2")
    assert manifest["model_type"] == "gpt2" and manifest["architecture"] == "GPT2LMHeadModel"
    assert manifest["max_position_embeddings"] == POSITIONS and manifest["hidden_size"] == WIDTH
    source_weights = (gpt2_checkpoint / "model.safetensors").read_bytes()
    assert (out / "model.safetensors").read_bytes() == source_weights
    assert _eos_id(out) == VOCAB - 1 != 0  # appended last, as in GPT-2 (50256)
    assert start_folder(out, str(gpt2_checkpoint), 32, "gpt2") == out
    with pytest.raises(ConfigError, match=r"\(model.arch bert\) but .* \(gpt2\); import it first"):
        start_folder(out, str(gpt2_checkpoint), 32, "bert")


def test_tokenize_packs_with_the_checkpoints_eos(tmp_path, gpt2_checkpoint):
    import_checkpoint(str(gpt2_checkpoint), False, 32, tmp_path / "ckpt", "gpt2")
    docs = _docs()
    summary = run_tokenize(
        corpus_files(tmp_path / "corpus", docs), 800, 2, False, 32, tmp_path / "tokenizer",
        tmp_path / "tokens", checkpoint_dir=tmp_path / "ckpt", arch="gpt2",
    )  # fmt: skip
    tokenizer = load_tokenizer(tmp_path / "tokenizer")
    assert tokenizer.get_vocab() == load_tokenizer(gpt2_checkpoint).get_vocab()  # not trained
    assert summary["vocab_size"] == VOCAB
    blocks, _ = open_blocks(tmp_path / "tokens", "train")
    eos = tokenizer.token_to_id(EOS)
    stream = [i for doc in docs[:540] for i in [*tokenizer.encode(doc).ids, eos]]
    np.testing.assert_array_equal(blocks.reshape(-1), stream[: blocks.size])
    assert (blocks == eos).sum() > 0


def test_the_decoder_starts_from_the_checkpoints_weights(tmp_path, gpt2_checkpoint):
    import_checkpoint(str(gpt2_checkpoint), False, 32, tmp_path / "ckpt", "gpt2")
    model = pretraining_model_from(tmp_path / "ckpt", "gpt2", 0.0, 0.2)
    assert isinstance(model, GPT2LMHeadModel)
    assert model.config.resid_pdrop == 0.0 and model.config.attn_pdrop == 0.2  # from model.*
    source = GPT2LMHeadModel.from_pretrained(str(gpt2_checkpoint))
    torch.testing.assert_close(model.state_dict(), source.state_dict(), rtol=0, atol=0)
    assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()


def test_a_bare_gpt2model_gets_its_tied_head(tmp_path, gpt2_checkpoint):
    from transformers import GPT2Model

    bare = tmp_path / "bare"
    GPT2Model.from_pretrained(str(gpt2_checkpoint)).save_pretrained(str(bare))
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (bare / name).write_bytes((gpt2_checkpoint / name).read_bytes())
    import_checkpoint(str(bare), False, 32, tmp_path / "ckpt", "gpt2")
    model = causal_lm_from(tmp_path / "ckpt", 0.0, 0.0)
    source = GPT2LMHeadModel.from_pretrained(str(gpt2_checkpoint))
    torch.testing.assert_close(model.lm_head.weight, source.lm_head.weight, rtol=0, atol=0)


def test_max_steps_0_publishes_the_checkpoint_itself(tmp_path, gpt2_checkpoint):
    ckpt = tmp_path / "ckpt"
    import_checkpoint(str(gpt2_checkpoint), False, 32, ckpt, "gpt2")
    cfg = PretrainConfig(micro_batch_size=8, grad_accum=1, lr=1e-3, max_steps=0)
    model = ModelConfig(**{**TINY_MODEL, "arch": "gpt2", "checkpoint": str(gpt2_checkpoint)})
    tokenizer, out = tmp_path / "tokenizer", tmp_path / "pretrained"
    save_tokenizer_of(ckpt, tokenizer, 32, "gpt2")  # as the tokenize stage takes it
    run_pretrain(cfg, model, 0, tokenizer, tmp_path / "tokens", tmp_path / "steps", out, None, ckpt)
    assert (out / "model.safetensors").read_bytes() == (ckpt / "model.safetensors").read_bytes()
    assert not (out / MANIFEST).exists() and _eos_id(out) == VOCAB - 1


def test_trust_pickle_converts_a_gpt2_checkpoint(tmp_path):
    source = make_gpt2(tmp_path / "source", safe=False)
    import_checkpoint(str(source), True, 32, tmp_path / "ckpt", "gpt2")
    expected = GPT2LMHeadModel.from_pretrained(str(source), use_safetensors=False).state_dict()
    for name, value in load_file(tmp_path / "ckpt" / "model.safetensors").items():
        torch.testing.assert_close(value, expected[name], rtol=0, atol=0)


# --- the pretrain stage from the checkpoint: continue next-token training, resume --------


def new_gpt2_run(folder: Path, source: Path) -> Path:
    """artifacts/checkpoint, artifacts/tokenizer, data/tokens (blocks of 32) and params."""
    import_checkpoint(str(source), False, 32, folder / "artifacts/checkpoint", "gpt2")
    run_tokenize(
        corpus_files(folder / "data/prepared/corpus", _docs()), 800, 2, False, 32,
        folder / "artifacts/tokenizer", folder / "data/tokens",
        checkpoint_dir=folder / "artifacts/checkpoint", arch="gpt2",
    )  # fmt: skip
    gpt2 = {"model": {"arch": "gpt2", "checkpoint": str(source)}, "tokenize": {"lowercase": False}}
    raw = deep_merge(default_params(), deep_merge(RUN, gpt2))
    raw["finetune"] = {"generation": {**raw["finetune"]["classification"], "max_seq_len": 32}}
    (folder / "params.yaml").write_text(yaml.safe_dump(raw))
    return folder


@pytest.fixture(scope="module")
def continued(tmp_path_factory, gpt2_checkpoint) -> Path:
    """An uninterrupted 12-step run of next-token training from the checkpoint."""
    folder = new_gpt2_run(tmp_path_factory.mktemp("continued"), gpt2_checkpoint)
    stage(folder)
    return folder


def test_continued_pretraining_starts_from_the_checkpoint(continued, gpt2_checkpoint):
    assert metrics(continued)["steps"] == 12
    assert losses(continued)[-1] < losses(continued)[0]
    out = GPT2LMHeadModel.from_pretrained(continued / "artifacts/pretrained")
    assert out.config.n_embd == WIDTH and out.config.n_positions == POSITIONS
    assert out.config.eos_token_id == _eos_id(continued / "artifacts/pretrained") == VOCAB - 1
    source = GPT2LMHeadModel.from_pretrained(str(gpt2_checkpoint))
    with torch.no_grad():
        moved = out.transformer.wte.weight - source.transformer.wte.weight
    assert 0 < float(moved.abs().max()) < 0.1  # trained onwards from the checkpoint, not anew


def test_kill_9_then_rerun_resumes_continued_pretraining(tmp_path, continued, gpt2_checkpoint):
    folder = new_gpt2_run(tmp_path / "killed", gpt2_checkpoint)
    kill_9_after_step_4(folder)
    assert complete_tags(folder / CKPT) == ["step_00000004"]
    stage(folder)
    assert metrics(folder)["resumed_from_step"] == 4
    assert curve(folder) == curve(continued)
    assert_same_weights(folder, continued, atol=0.0)


# --- refusals: one line naming the key, before any work --------------------------------------


def _wordpiece_gpt2(folder: Path) -> Path:
    """A GPT-2 model with a BERT WordPiece tokenizer (not byte-level)."""
    make_checkpoint(folder, "mlm_cased")
    config = GPT2Config(n_positions=POSITIONS, n_embd=WIDTH, n_layer=1, n_head=2, vocab_size=600)
    GPT2LMHeadModel(config).save_pretrained(str(folder))  # replaces the BERT config and weights
    return folder


def _eos_mismatch(folder: Path) -> Path:
    make_gpt2(folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "eos_token_id": 0}))
    return folder


@pytest.mark.parametrize(
    ("make", "max_seq_len", "message"),
    [
        (
            lambda d: make_checkpoint(d, "mlm_cased"),
            32,
            "model.checkpoint: {} is a bert model (BertForMaskedLM); with model.arch gpt2 "
            "lmforge starts only from GPT-2-family decoders (model_type gpt2); "
            "set model.arch: bert",
        ),
        (
            make_gpt2,
            128,
            "model.max_seq_len (128) is above the checkpoint's position limit "
            "(n_positions 64 in {}); set model.max_seq_len <= 64",
        ),
        (
            lambda d: make_gpt2(d, with_eos=False),
            32,
            "model.checkpoint: the tokenizer of {} lacks <|endoftext|>",
        ),
        (_wordpiece_gpt2, 32, "is not a byte-level BPE with all 256 bytes (GPT-2's)"),
        (_eos_mismatch, 32, f"has eos_token_id 0 but its tokenizer has {EOS} at id {VOCAB - 1}"),
        (
            lambda d: make_gpt2(d, safe=False),
            32,
            "pytorch_model.bin is pickle, and unpickling a file can run code; lmforge loads "
            "safetensors only (set model.trust_pickle: true",
        ),
    ],
    ids=["bert_checkpoint", "positions", "no_eos", "not_byte_level", "eos_mismatch", "pickle"],
)
def test_refused_with_one_line_before_any_work(tmp_path, make, max_seq_len, message):
    source = make(tmp_path / "source")
    with pytest.raises(ConfigError) as caught:
        import_checkpoint(str(source), False, max_seq_len, tmp_path / "ckpt", "gpt2")
    assert message.format(source) in str(caught.value) and "\n" not in str(caught.value)
    assert not (tmp_path / "ckpt").exists()


# --- the whole GPT-2 branch from the checkpoint, through DVC, to /v1/generate ---------------


@pytest.mark.slow
def test_dvc_repro_from_a_gpt2_checkpoint_through_serving(tmp_path, gpt2_checkpoint):
    from fastapi.testclient import TestClient

    from serve.app import create_app
    from serve.settings import Settings
    from test_generation_pipeline import TINY_GPT2
    from test_pipeline_e2e import _wait_ready

    root = tmp_path / "repo"
    env = repo_copy(root)
    run = deep_merge(
        TINY_GPT2,
        {
            "model": {"checkpoint": str(gpt2_checkpoint)},
            "pretrain": {"max_steps": 2, "checkpoint_every": 2, "eval_every": 2},
            "compress": {"latency_runs": 5, "quant_search": False},
        },
    )
    raw = deep_merge(yaml.safe_load((REPO / "params-gpt2.yaml").read_text()), run)
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    run_checked(["dvc", "repro"], root, env)

    eos = VOCAB - 1
    tokenizer = (root / "artifacts/tokenizer/tokenizer.json").read_text()
    assert tokenizer == (root / "artifacts/checkpoint/tokenizer.json").read_text()
    assert (root / "artifacts/serving/generation/tokenizer.json").read_text() == tokenizer
    config = json.loads((root / "artifacts/pretrained/config.json").read_text())
    assert config["n_embd"] == WIDTH and config["n_positions"] == POSITIONS  # the checkpoint's
    assert json.loads((root / "metrics/pretrain.json").read_text())["steps"] == 2
    manifest = json.loads((root / "artifacts/serving/generation/manifest.json").read_text())
    assert manifest["eos_token_id"] == eos and manifest["vocab_size"] == VOCAB

    settings = Settings(artifacts=root / "artifacts/serving", tasks="generation")
    with TestClient(create_app(settings)) as client:
        assert _wait_ready(client), client.get("/readyz").json()
        body = {"prompt": "The river", "max_new_tokens": 8, "temperature": 0.8, "seed": 3}
        got = client.post("/v1/generate", json=body)
        assert got.status_code == 200, got.text
        assert got.json()["prompt_tokens"] > 0 and 1 <= got.json()["completion_tokens"] <= 8
