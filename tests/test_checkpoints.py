"""Starting from a pretrained checkpoint: import, refusals, heads, continued pretraining.

Tiny checkpoints are built here with `save_pretrained`: a bare `BertModel` (as
sentence-embedding models ship) with an uncased tokenizer and a `BertForMaskedLM` with a
cased one. Their shape (48 wide, 64 positions) differs from params.yaml's model keys, so a
run that takes its shape from params instead of the checkpoint fails.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import (
    BertConfig,
    BertForMaskedLM,
    BertModel,
    BertTokenizer,
    GPT2Config,
    GPT2LMHeadModel,
)

from lmforge.checkpoints import MANIFEST, import_checkpoint, masked_lm_from, start_folder
from lmforge.config import deep_merge, load_params
from lmforge.data.corpus import write_corpus
from lmforge.engine import complete_tags
from lmforge.errors import ConfigError
from lmforge.tokenizer import load_tokenizer, run_tokenize, train_tokenizer
from support import REPO, default_params, repo_copy, run_checked
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

WIDTH, POSITIONS = 48, 64
KINDS = {"bare_uncased": (BertModel, True), "mlm_cased": (BertForMaskedLM, False)}


def _docs() -> list[str]:
    import pydoc_data.topics

    docs = [p for text in pydoc_data.topics.topics.values() for p in text.split("\n\n")]
    return [d for d in docs if d.strip()][:600]


def make_checkpoint(folder: Path, kind: str, safe: bool = True) -> Path:
    """A save_pretrained folder: config, weights and a BERT WordPiece tokenizer."""
    model_class, lowercase = KINDS[kind]
    vocab = train_tokenizer(_docs(), 600, 2, lowercase).get_vocab()
    BertTokenizer(vocab=vocab, do_lower_case=lowercase).save_pretrained(str(folder))
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(vocab), hidden_size=WIDTH, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=96, max_position_embeddings=POSITIONS,
    )  # fmt: skip
    model = model_class(config)
    model.save_pretrained(str(folder))
    if not safe:  # transformers 5 no longer writes pickle: as older checkpoints ship it
        (folder / "model.safetensors").unlink()
        torch.save(model.state_dict(), folder / "pytorch_model.bin")
    return folder


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("checkpoints")
    return {kind: make_checkpoint(root / kind, kind) for kind in KINDS}


# --- import: both kinds, tokenizers as the checkpoint defines them -------------------------


@pytest.mark.parametrize("kind", list(KINDS))
def test_import_copies_weights_and_keeps_the_tokenizers_casing(tmp_path, checkpoints, kind):
    source = checkpoints[kind]
    manifest = import_checkpoint(str(source), False, 32, tmp_path / "ckpt")
    out = tmp_path / "ckpt"
    assert manifest["source"] == str(source) and manifest["hidden_size"] == WIDTH
    assert (out / "model.safetensors").read_bytes() == (source / "model.safetensors").read_bytes()
    assert start_folder(out, str(source), 32) == out
    assert start_folder(out, None, 32) is None
    tokenizer = load_tokenizer(out)
    assert tokenizer.truncation is None and tokenizer.padding is None
    upper, lower = (tokenizer.encode(t).ids for t in ("The Function", "the function"))
    assert (upper == lower) is KINDS[kind][1]  # uncased lowercases, cased keeps capitals


def corpus_files(folder: Path, docs: list[str]) -> dict[str, Path]:
    """The prepared corpus (Parquet, as prepare writes it): 540 train documents, the rest validation."""
    files = {"train": folder / "train.parquet", "validation": folder / "validation.parquet"}
    write_corpus(files["train"], docs[:540])
    write_corpus(files["validation"], docs[540:])
    return files


def test_tokenize_packs_the_corpus_with_the_checkpoints_tokenizer(tmp_path, checkpoints):
    source = checkpoints["mlm_cased"]
    import_checkpoint(str(source), False, 32, tmp_path / "ckpt")
    docs = _docs()
    summary = run_tokenize(
        corpus_files(tmp_path / "corpus", docs), 800, 2, True, 32,
        tmp_path / "tokenizer", tmp_path / "tokens", checkpoint_dir=tmp_path / "ckpt",
    )  # fmt: skip
    ours = BertTokenizer.from_pretrained(str(source)).get_vocab()
    assert load_tokenizer(tmp_path / "tokenizer").get_vocab() == ours  # not trained: the same
    assert summary["vocab_size"] == len(ours) and summary["block_len"] == 32


# --- refusals: one line naming the key and the limit, before any work ----------------------


def _gpt2(folder: Path) -> Path:
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, n_positions=64)).save_pretrained(
        str(folder)
    )
    return folder


@pytest.mark.parametrize(
    ("make", "max_seq_len", "message"),
    [
        (
            lambda d: make_checkpoint(d, "bare_uncased"),
            128,
            "model.max_seq_len (128) is above the checkpoint's position limit "
            "(max_position_embeddings 64",
        ),
        (
            _gpt2,
            32,
            "is a gpt2 model (GPT2LMHeadModel); with model.arch bert lmforge starts only from "
            "BERT-family encoders (model_type bert); set model.arch: gpt2",
        ),
        (
            lambda d: make_checkpoint(d, "bare_uncased", safe=False),
            32,
            "pytorch_model.bin is pickle, and unpickling a file can run code; lmforge loads "
            "safetensors only (set model.trust_pickle: true",
        ),
        (lambda d: d / "nowhere", 32, "model.checkpoint: no such directory"),
        # a hub id: offline here, and unknown on the hub where there is a network
        (
            lambda d: "lmforge-tests/no-such-checkpoint",
            32,
            "is not a local directory and could not be downloaded from the Hugging Face hub",
        ),
    ],
    ids=["position_limit", "gpt2", "pickle", "missing", "hub_id"],
)
def test_refused_with_one_line_before_any_work(tmp_path, make, max_seq_len, message):
    source = make(tmp_path / "source")
    with pytest.raises(ConfigError) as caught:
        import_checkpoint(str(source), False, max_seq_len, tmp_path / "ckpt")
    assert message in str(caught.value) and "\n" not in str(caught.value)
    assert not (tmp_path / "ckpt").exists()


def test_trust_pickle_opts_in_and_converts_to_safetensors(tmp_path):
    source = make_checkpoint(tmp_path / "source", "bare_uncased", safe=False)
    import_checkpoint(str(source), True, 32, tmp_path / "ckpt")
    assert not (tmp_path / "ckpt" / "pytorch_model.bin").exists()
    expected = BertModel.from_pretrained(str(source), use_safetensors=False).state_dict()
    got = load_file(tmp_path / "ckpt" / "model.safetensors")
    for name, value in got.items():
        torch.testing.assert_close(value, expected[name], rtol=0, atol=0)


def test_checkpoint_preset_starts_from_minilm_without_continued_pretraining():
    params = load_params(REPO / "params-checkpoint.yaml")
    assert params.model.checkpoint == "checkpoints/all-MiniLM-L6-v2"
    assert params.pretrain.max_steps == 0 and not params.model.trust_pickle


def test_max_steps_0_needs_a_checkpoint(tmp_path, write_params):
    write_params(tmp_path, {"pretrain": {"max_steps": 0}})
    with pytest.raises(ConfigError, match=r"only with model.checkpoint\), got 0"):
        load_params(tmp_path / "params.yaml")
    write_params(tmp_path, {"pretrain": {"max_steps": 0}, "model": {"checkpoint": "x"}})
    assert load_params(tmp_path / "params.yaml").pretrain.max_steps == 0


# --- heads: a bare encoder gets a fresh tied MLM head, an MLM checkpoint keeps its own -----


def test_bare_encoder_gets_a_fresh_mlm_head_tied_to_its_embeddings(tmp_path, checkpoints):
    import_checkpoint(str(checkpoints["bare_uncased"]), False, 32, tmp_path / "ckpt")
    model = masked_lm_from(tmp_path / "ckpt", 0.0, 0.0).hf_model
    source = BertModel.from_pretrained(str(checkpoints["bare_uncased"]))
    torch.testing.assert_close(model.bert.encoder.state_dict(), source.encoder.state_dict())
    assert model.cls.predictions.decoder.weight.data_ptr() == (
        model.bert.embeddings.word_embeddings.weight.data_ptr()
    )
    assert (
        model.config.hidden_dropout_prob == 0.0
    )  # dropouts from params, shape from the checkpoint


def test_mlm_checkpoint_keeps_its_head(tmp_path, checkpoints):
    import_checkpoint(str(checkpoints["mlm_cased"]), False, 32, tmp_path / "ckpt")
    model = masked_lm_from(tmp_path / "ckpt", 0.1, 0.1).hf_model
    source = BertForMaskedLM.from_pretrained(str(checkpoints["mlm_cased"]))
    torch.testing.assert_close(
        model.cls.predictions.transform.state_dict(), source.cls.predictions.transform.state_dict()
    )


# --- the pretrain stage from a checkpoint: continue, resume, max_steps 0 -------------------


def new_checkpoint_run(folder: Path, source: Path, override: dict) -> Path:
    """artifacts/checkpoint, artifacts/tokenizer and data/tokens (blocks of 32) from `source`."""
    docs = _docs()
    import_checkpoint(str(source), False, 32, folder / "artifacts/checkpoint")
    run_tokenize(
        corpus_files(folder / "data/prepared/corpus", docs), 800, 2, True, 32,
        folder / "artifacts/tokenizer", folder / "data/tokens",
        checkpoint_dir=folder / "artifacts/checkpoint",
    )  # fmt: skip
    run = deep_merge(RUN, {"model": {"checkpoint": str(source)}, **override})
    (folder / "params.yaml").write_text(yaml.safe_dump(deep_merge(default_params(), run)))
    return folder


@pytest.fixture(scope="module")
def continued(tmp_path_factory, checkpoints) -> Path:
    """An uninterrupted 12-step continued pretraining run from the bare uncased checkpoint."""
    folder = new_checkpoint_run(
        tmp_path_factory.mktemp("continued"), checkpoints["bare_uncased"], {}
    )
    stage(folder)
    return folder


def test_continued_pretraining_starts_from_the_checkpoint(continued, checkpoints):
    assert metrics(continued)["steps"] == 12
    assert losses(continued)[-1] < losses(continued)[0]
    out = BertForMaskedLM.from_pretrained(continued / "artifacts/pretrained")
    assert out.config.hidden_size == WIDTH and out.config.max_position_embeddings == POSITIONS
    source = BertModel.from_pretrained(str(checkpoints["bare_uncased"]))
    with torch.no_grad():
        moved = (
            out.bert.embeddings.word_embeddings.weight - source.embeddings.word_embeddings.weight
        )
    assert 0 < float(moved.abs().max()) < 0.1  # trained onwards from the checkpoint, not anew
    assert (continued / "artifacts/pretrained/tokenizer.json").is_file()


def test_kill_9_then_rerun_resumes_continued_pretraining(tmp_path, continued, checkpoints):
    folder = new_checkpoint_run(tmp_path / "killed", checkpoints["bare_uncased"], {})
    kill_9_after_step_4(folder)
    assert complete_tags(folder / CKPT) == ["step_00000004"]
    stage(folder)
    assert metrics(folder)["resumed_from_step"] == 4
    assert curve(folder) == curve(continued)
    assert_same_weights(folder, continued, atol=0.0)


def test_max_steps_0_publishes_the_checkpoint_itself(tmp_path, checkpoints):
    source = checkpoints["mlm_cased"]
    folder = new_checkpoint_run(tmp_path / "run", source, {"pretrain": {"max_steps": 0}})
    stage(folder)
    out = folder / "artifacts/pretrained"
    assert (out / "model.safetensors").read_bytes() == (source / "model.safetensors").read_bytes()
    assert (out / "tokenizer.json").is_file() and not (out / MANIFEST).exists()
    assert metrics(folder)["steps"] == 0
    assert list((folder / CKPT).iterdir()) == []  # an empty DVC out: no step, no checkpoint
    assert (folder / "plots/pretrain.csv").read_text() == "step,loss\n"  # a curve, no points


def test_stage_refuses_an_import_of_another_checkpoint(tmp_path, checkpoints):
    folder = new_checkpoint_run(tmp_path / "run", checkpoints["mlm_cased"], {})
    shutil.rmtree(folder / "artifacts/checkpoint")
    import_checkpoint(str(checkpoints["bare_uncased"]), False, 32, folder / "artifacts/checkpoint")
    done = stage(folder, expect_ok=False)
    assert done.returncode == 2 and "import it first: python -m stages.checkpoint" in done.stderr
    assert not (folder / "artifacts/pretrained").exists()


# --- the whole pipeline from a tiny checkpoint, through DVC, to the service ---------------

PIPELINE = {
    "data": {"sample": {"classification_examples": 300, "ner_sentences": 300, "qa_examples": 200}},
    "model": {"max_seq_len": 64},
    "pretrain": {
        "max_steps": 6, "micro_batch_size": 8, "checkpoint_every": 3, "eval_every": 3,
    },
    "finetune": {
        "classification": {"epochs": 2, "max_seq_len": 32},
        "ner": {"epochs": 2, "max_seq_len": 32},
        "qa": {"epochs": 2, "max_seq_len": 64, "doc_stride": 16},
    },
    "compress": {"latency_runs": 5, "quant_search": False},
}  # fmt: skip


@pytest.mark.slow
def test_dvc_repro_from_a_checkpoint_through_serving(tmp_path, checkpoints):
    from fastapi.testclient import TestClient

    from serve.app import create_app
    from serve.settings import Settings
    from test_pipeline_e2e import _wait_ready

    root = tmp_path / "repo"
    env = repo_copy(root)
    source = checkpoints["mlm_cased"]
    run = deep_merge(PIPELINE, {"model": {"checkpoint": str(source)}})
    (root / "params.yaml").write_text(yaml.safe_dump(deep_merge(default_params(), run)))
    run_checked(["dvc", "repro"], root, env)
    tokenizer = (root / "artifacts/tokenizer/tokenizer.json").read_text()
    assert tokenizer == (root / "artifacts/checkpoint/tokenizer.json").read_text()
    for task in ("classification", "ner", "qa"):
        served = root / "artifacts/serving" / task / "tokenizer.json"
        assert served.read_text() == tokenizer  # the checkpoint's tokenizer, end to end
    config = yaml.safe_load((root / "artifacts/pretrained/config.json").read_text())
    assert config["hidden_size"] == WIDTH and config["max_position_embeddings"] == POSITIONS
    assert "Data and pipelines are up to date" in run_checked(["dvc", "status"], root, env)

    app = create_app(Settings(artifacts=root / "artifacts/serving"))
    with TestClient(app) as client:
        assert _wait_ready(client), client.get("/readyz").json()
        assert client.post("/v1/classify", json={"texts": ["Fine."]}).status_code == 200
        text = "Maria Lopez flew to Paris."
        got = client.post("/v1/ner", json={"texts": [text]}).json()["results"][0]["entities"]
        assert all(text[e["start"] : e["end"]] == e["text"] for e in got)
        context = "Alan Reed was born in Brookfield in 1961."
        span = client.post(
            "/v1/qa", json={"question": "Where was Alan Reed born?", "context": context}
        ).json()["results"][0]
        assert context[span["start"] : span["end"]] == span["answer"]
