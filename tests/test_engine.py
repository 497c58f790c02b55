"""The DeepSpeed engine: config, schedules, batches, masking, and pretrain runs end to end.

Unit tests run in-process. The stage tests run `python -m stages.pretrain` as a user
would, on a tiny model, and compare what it writes (metrics/pretrain.json, plots/
pretrain.csv, checkpoints/, artifacts/pretrained) between runs: uninterrupted vs killed
and resumed, 1 rank vs 2, one node vs two simulated nodes, ZeRO 0 vs 1-3.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import BertForMaskedLM

from lmforge.config import ModelConfig, deep_merge, load_params
from lmforge.engine import (
    EngineSettings,
    StepBatches,
    build_deepspeed_config,
    complete_tags,
    lr_multiplier,
    own_tags,
    param_groups,
    resolve_precision,
)
from lmforge.errors import ConfigError
from lmforge.modeling import bert_config, masked_lm
from lmforge.pretrain import MlmMasking, build_masking
from lmforge.tasks.base import IGNORE_INDEX
from lmforge.tokenizer import load_tokenizer
from lmforge.tokens import open_blocks
from support import REPO, TINY_MODEL, default_params

# 12 steps of a global batch of 16 blocks (1 rank: micro 8 x accum 2), checkpoints at 4, 8, 12.
RUN = {
    "model": TINY_MODEL,
    "pretrain": {
        "max_steps": 12, "micro_batch_size": 8, "grad_accum": 2, "lr": 2.0e-3,
        "warmup_ratio": 0.25, "checkpoint_every": 4, "keep_checkpoints": 2, "eval_every": 4,
    },
    "finetune": {
        "classification": {"max_seq_len": 32}, "ner": {"max_seq_len": 32},
        "qa": {"max_seq_len": 32, "doc_stride": 8},
    },
}  # fmt: skip
CKPT = Path("checkpoints/pretrain")
MLM_INPUTS = ("input_ids", "attention_mask", "token_type_ids", "labels")
# 1 rank x accum 2 averages the two micro-batch gradients as g1/2 + g2/2, 2 ranks as
# (g1 + g2)/2: halving is exact in fp32 and a sum of two is order-free, so the runs are the
# same numbers (observed: bit-identical). ZeRO 1-3 keep fp32 master weights in flat buffers
# and take the clipping norm over them in another order: ~1 ulp per step, observed 3e-7 on
# the weights after 12 steps and no change in the 5-decimal loss curve. The bounds below are
# two units of the curve's last printed decimal, and 30x the observed weight drift; a real
# mistake (a wrong row, scale, clip or learning rate) moves the loss by 1e-3 or more.
LOSS_TOL = 2e-5
WEIGHT_TOL = {"ranks": 1e-6, "zero": 1e-5}

# Runs the stage with every step after step 4 slowed down, so that kill -9 lands mid-run
# after checkpoint 4 is complete rather than racing a run that takes a fraction of a second.
SLOW_AFTER_STEP_4 = """
import runpy, sys, time
from lmforge import engine
train_step = engine.Trainer._train_step
def slow(self, step):
    if step >= 4:
        time.sleep(2.0)
    return train_step(self, step)
engine.Trainer._train_step = slow
sys.argv = ["stages.pretrain"]
runpy.run_module("stages.pretrain", run_name="__main__", alter_sys=True)
"""


# --- helpers -----------------------------------------------------------------------------


def env() -> dict:
    """Like conftest's stage_env, plus one thread per rank: the test machine has 2 shared
    cores, and oversubscribed OpenMP threads make a tiny step 50x slower."""
    out = dict(os.environ)
    out["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), out.get("PYTHONPATH")]))
    out.update(DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    # DeepSpeed JIT-builds its CPU shared-memory op at start-up. A build folder of this venv's
    # own keeps other Pythons on the machine (other torch, other flags) from invalidating it
    # between runs, which costs a one- to two-minute rebuild each time.
    out.setdefault("TORCH_EXTENSIONS_DIR", str(Path(sys.prefix) / "torch_extensions"))
    out.pop("RANK", None)
    return out


def kill_9_after_step_4(folder: Path) -> None:
    """Run the pretrain stage in `folder` until checkpoint step 4 is complete, then SIGKILL it."""
    marker = folder / CKPT / "step_00000004" / "COMPLETE"
    with (folder / "stage.log").open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-c", SLOW_AFTER_STEP_4], cwd=folder, env=env(), stdout=log, stderr=log
        )
        deadline = time.monotonic() + 180
        while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        still_running = proc.poll() is None
        proc.kill()  # SIGKILL: no cleanup, no atexit
        proc.wait()
    assert marker.exists() and still_running, (folder / "stage.log").read_text()[-3000:]


def new_run(folder: Path, corpus: Path, override: dict) -> Path:
    shutil.copytree(corpus, folder)
    (folder / "params.yaml").write_text(
        yaml.safe_dump(deep_merge(default_params(), deep_merge(RUN, override)))
    )
    return folder


def stage(folder: Path, expect_ok: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(
        [sys.executable, "-m", "stages.pretrain"],
        cwd=folder, env=env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    if expect_ok:
        assert done.returncode == 0, done.stderr[-3000:]
    return done


def metrics(folder: Path) -> dict:
    return json.loads((folder / "metrics/pretrain.json").read_text())


def curve(folder: Path) -> list[dict]:
    """The loss curve without its timing column (tokens/s differs between any two runs)."""
    with (folder / "plots/pretrain.csv").open() as f:
        rows = list(csv.DictReader(f))
    return [{k: v for k, v in row.items() if k != "tokens_per_second"} for row in rows]


def losses(folder: Path) -> np.ndarray:
    return np.array([float(row["loss"]) for row in curve(folder)])


def assert_same_weights(folder: Path, reference: Path, atol: float) -> None:
    """The two runs' exported model.safetensors hold the same tensors, within atol."""
    ours, theirs = (
        load_file(f / "artifacts/pretrained/model.safetensors") for f in (folder, reference)
    )
    assert ours.keys() == theirs.keys()
    for name, value in theirs.items():
        torch.testing.assert_close(ours[name], value, rtol=0, atol=atol, msg=name)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("runs")


@pytest.fixture(scope="module")
def reference(runs, tiny_corpus_dirs) -> Path:
    """One uninterrupted 1-rank ZeRO-0 run that the other runs are compared with."""
    folder = new_run(runs / "reference", tiny_corpus_dirs, {})
    stage(folder)
    return folder


# --- DeepSpeed config, precision, schedule, optimizer groups ----------------------------


def settings(**kw) -> EngineSettings:
    return EngineSettings(
        **{"micro_batch_size": 8, "grad_accum": 2, "lr": 1e-3, "total_steps": 10, **kw}
    )


def test_deepspeed_config_batch_sizes_and_override_merged_on_top():
    override = {
        "zero_optimization": {"overlap_comm": True},
        "gradient_clipping": 0.5,
        "optimizer": {"type": "Adam", "params": {"lr": 1e-4}},
    }
    s = settings(zero_stage=2, deepspeed_override=override)
    config = build_deepspeed_config(s, world_size=3, precision="fp32")
    assert config["train_micro_batch_size_per_gpu"] == 8
    assert config["gradient_accumulation_steps"] == 2
    assert config["train_batch_size"] == 8 * 2 * 3
    assert config["zero_optimization"] == {"stage": 2, "overlap_comm": True}  # merged, not replaced
    assert config["gradient_clipping"] == 0.5
    assert config["optimizer"]["type"] == "Adam"
    assert "bf16" not in config and "fp16" not in config
    assert override["zero_optimization"] == {"overlap_comm": True}  # the user's dict is untouched
    assert build_deepspeed_config(s, 1, "bf16")["bf16"] == {"enabled": True}
    assert build_deepspeed_config(s, 1, "fp16")["fp16"]["enabled"] is True


def test_precision_on_cpu():
    assert resolve_precision("auto", "pretrain") == "fp32"
    assert resolve_precision("fp32", "pretrain") == "fp32"
    with pytest.raises(ConfigError, match=r"pretrain\.precision: fp16 is not supported"):
        resolve_precision("fp16", "pretrain")


def test_lr_multiplier_warmup_then_linear_or_cosine_to_zero():
    linear = lr_multiplier("linear", warmup=4, total=20)
    assert [linear(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert linear(4) == 1.0
    assert linear(12) == pytest.approx(0.5)
    assert linear(20) == 0.0
    assert linear(25) == 0.0  # never negative past the end
    cosine = lr_multiplier("cosine", warmup=4, total=20)
    assert cosine(3) == 1.0 and cosine(4) == 1.0
    assert cosine(12) == pytest.approx(0.5)
    assert cosine(20) == pytest.approx(0.0, abs=1e-12)
    assert lr_multiplier("constant", warmup=2, total=20)(15) == 1.0
    assert lr_multiplier("linear", warmup=0, total=10)(0) == 1.0


def test_param_groups_no_decay_on_biases_and_layernorm():
    torch.manual_seed(0)
    model = masked_lm(bert_config(ModelConfig(**TINY_MODEL), 100))
    decay, no_decay = param_groups(model, weight_decay=0.01)
    assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    kept = {names[id(p)] for p in no_decay["params"]}
    assert decayed.isdisjoint(kept) and decayed | kept == set(names.values())
    assert kept == {n for n in names.values() if n.endswith("bias") or "LayerNorm" in n}
    assert "hf_model.bert.embeddings.word_embeddings.weight" in decayed
    assert "hf_model.bert.encoder.layer.0.attention.self.query.weight" in decayed


# --- StepBatches -------------------------------------------------------------------------


def rows_of(chunks: list[dict]) -> list[int]:
    return [int(r) for chunk in chunks for r in chunk["input_ids"][:, 0]]


def test_step_batches_same_rows_for_any_split_of_the_global_batch():
    arrays = {
        "input_ids": np.arange(96)[:, None].repeat(4, axis=1),
        "attention_mask": np.ones((96, 4)),
    }
    batches = StepBatches(arrays, global_batch=16, seed=7)
    for step in (0, 3, 11):
        one_rank = rows_of(batches.micro_batches(step, rank=0, world=1, accum=2))
        two_ranks = [rows_of(batches.micro_batches(step, r, world=2, accum=1)) for r in (0, 1)]
        four = [rows_of(batches.micro_batches(step, r, world=2, accum=2)) for r in (0, 1)]
        assert one_rank == two_ranks[0] + two_ranks[1] == four[0] + four[1]
        assert len(one_rank) == 16
        assert one_rank == rows_of(StepBatches(arrays, 16, seed=7).micro_batches(step, 0, 1, 2))


def test_step_batches_every_row_once_per_epoch():
    arrays = {"input_ids": np.arange(96)[:, None]}
    batches = StepBatches(arrays, global_batch=16, seed=3)
    assert batches.steps_per_epoch == 6
    for epoch in (0, 1):
        seen = np.concatenate([batches.global_rows(epoch * 6 + k) for k in range(6)])
        assert sorted(seen) == list(range(96))
    assert not np.array_equal(batches.global_rows(0), batches.global_rows(6))  # reshuffled
    # With a tail (100 rows, 6 batches of 16), each epoch drops 4 rows, never repeats one.
    tail = StepBatches({"input_ids": np.arange(100)[:, None]}, 16, seed=3)
    seen = np.concatenate([tail.global_rows(k) for k in range(6)])
    assert len(set(seen.tolist())) == 96


def test_step_batches_grouped_by_length():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 200, size=1000)
    arrays = {"input_ids": np.arange(1000)[:, None]}
    batches = StepBatches(arrays, global_batch=10, seed=3, lengths=lengths)
    plain = StepBatches(arrays, global_batch=10, seed=3)
    assert batches.steps_per_epoch == 100
    for epoch in (0, 1):
        steps = [batches.global_rows(epoch * 100 + k) for k in range(100)]
        assert sorted(np.concatenate(steps)) == list(range(1000))  # every row once
        # Computed positions (each batch cut to its longest row) shrink several-fold.
        grouped = sum(lengths[rows].max() for rows in steps)
        random = sum(lengths[plain.global_rows(epoch * 100 + k)].max() for k in range(100))
        assert grouped < random / 1.5  # uniform lengths: ~105 vs ~183 a batch
    # The batches come in shuffled order, not longest first, and epochs differ.
    longest = [lengths[batches.global_rows(k)].max() for k in range(100)]
    assert longest != sorted(longest, reverse=True)
    assert not np.array_equal(batches.global_rows(0), batches.global_rows(100))
    # A pure function of (seed, step): a fresh object (a resumed run) sees the same rows.
    again = StepBatches(arrays, global_batch=10, seed=3, lengths=lengths)
    assert np.array_equal(again.global_rows(137), batches.global_rows(137))


def test_step_batches_read_only_the_ranks_rows_and_give_their_positions():
    calls = []

    def transform(batch, step, positions):
        calls.append((batch["input_ids"][:, 0].tolist(), step, positions.tolist()))
        return batch

    class Recording(np.ndarray):  # remembers which rows were read
        def __getitem__(self, index):
            read.append(np.asarray(index).tolist())
            return super().__getitem__(index)

    read: list = []
    ids = np.arange(40)[:, None].repeat(4, 1)
    arrays = {"input_ids": ids.view(Recording), "attention_mask": np.ones_like(ids)}
    batches = StepBatches(arrays, 16, 0, transform)
    batches.micro_batches(5, rank=1, world=2, accum=2)
    rows = batches.global_rows(5)[8:].tolist()
    assert read == [rows]  # one read, of this rank's 8 rows only
    assert calls == [(rows, 5, list(range(8, 16)))]
    with pytest.raises(ConfigError, match="fewer than one global batch"):
        StepBatches({"input_ids": np.zeros((10, 4))}, 16, 0)


# --- MLM masking ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def blocks_and_tokenizer(tiny_corpus_dirs):
    blocks = np.asarray(open_blocks(tiny_corpus_dirs / "data/tokens", "train")[0])
    return blocks, load_tokenizer(tiny_corpus_dirs / "artifacts/tokenizer")


def masking_for(tokenizer, whole_words: bool, sentence_order: bool = False) -> MlmMasking:
    cfg = load_params(REPO / "params.yaml").pretrain
    cfg = dataclasses.replace(cfg, whole_word_masking=whole_words, sentence_order=sentence_order)
    return build_masking(tokenizer, cfg, seed=42)


@pytest.mark.parametrize("whole_words", [False, True])
def test_masking_deterministic_about_15_percent_specials_untouched(
    blocks_and_tokenizer, whole_words
):
    blocks, tokenizer = blocks_and_tokenizer
    masking = masking_for(tokenizer, whole_words)
    out = masking({"input_ids": blocks}, step=3)
    again = masking({"input_ids": blocks}, step=3)
    other = masking({"input_ids": blocks}, step=4)
    for key in out:
        np.testing.assert_array_equal(out[key], again[key])
    assert not np.array_equal(out["labels"], other["labels"])

    special = np.isin(blocks, masking.special_ids)
    assert special.any()
    selected = out["labels"] != IGNORE_INDEX
    assert not selected[special].any()
    np.testing.assert_array_equal(out["input_ids"][special], blocks[special])
    np.testing.assert_array_equal(out["labels"][selected], blocks[selected])
    np.testing.assert_array_equal(out["input_ids"][~selected], blocks[~selected])
    assert selected[~special].mean() == pytest.approx(0.15, abs=0.01)

    replaced = out["input_ids"][selected]
    mask_id = tokenizer.token_to_id("[MASK]")
    assert (replaced == mask_id).mean() == pytest.approx(0.8, abs=0.03)
    assert (replaced == blocks[selected]).mean() == pytest.approx(0.1, abs=0.03)
    assert not np.isin(replaced[replaced != mask_id], masking.special_ids).any()


def test_masking_with_sentence_order_pairs(blocks_and_tokenizer):
    """[CLS] A [SEP] B [SEP] rows: the [SEP]s are never masked, segments are typed 0/1."""
    blocks, tokenizer = blocks_and_tokenizer
    masking = masking_for(tokenizer, whole_words=False, sentence_order=True)
    out = masking({"input_ids": blocks}, step=3)
    np.testing.assert_array_equal(out["labels"], masking({"input_ids": blocks}, step=3)["labels"])
    selected = out["labels"] != IGNORE_INDEX
    text = np.where(selected, out["labels"], out["input_ids"])  # the rows before masking
    special = np.isin(text, masking.special_ids)
    assert not selected[special].any()
    assert selected[~special].mean() == pytest.approx(0.15, abs=0.01)
    sep = tokenizer.token_to_id("[SEP]")
    for row, types in zip(text[:50], out["token_type_ids"][:50], strict=True):
        middle = int(np.argmax(types)) - 1  # the [SEP] that ends segment A
        assert row[middle] == sep and row[-1] == sep and types[-1] == 1
    assert 0.4 < out["sentence_order_label"].mean() < 0.6


def test_whole_word_masking_masks_every_piece_of_a_word(blocks_and_tokenizer):
    blocks, tokenizer = blocks_and_tokenizer
    masking = masking_for(tokenizer, whole_words=True)
    vocab = tokenizer.get_vocab()
    assert masking.continuation[vocab["[CLS]"]] == False  # noqa: E712
    pieces = [i for t, i in vocab.items() if t.startswith("##")]
    assert pieces and masking.continuation[pieces].all()
    assert masking.continuation.sum() == len(pieces)

    selected = masking({"input_ids": blocks}, step=0)["labels"] != IGNORE_INDEX
    special = np.isin(blocks, masking.special_ids)
    words = 0
    for row, chosen, skip in zip(blocks, selected, special, strict=True):
        head = None
        for j, token in enumerate(row):
            if not masking.continuation[token]:
                head = j
            elif head is not None and not skip[head]:
                assert chosen[j] == chosen[head], (row[head : j + 1], chosen[head : j + 1])
                words += chosen[head]
    assert words > 20  # the check above was exercised on masked multi-piece words


def test_whole_word_masking_on_a_synthetic_vocabulary():
    """ids 5..49 start a word, 50..99 continue one: groups are selected all or nothing."""
    continuation = np.zeros(100, dtype=bool)
    continuation[50:] = True
    masking = MlmMasking(4, 100, np.arange(5), 0.15, seed=1, continuation=continuation)
    rng = np.random.default_rng(0)
    ids = np.where(
        rng.random((200, 64)) < 0.5,
        rng.integers(5, 50, (200, 64)),
        rng.integers(50, 100, (200, 64)),
    )
    ids[:, 0] = rng.integers(5, 50, 200)
    labels = masking({"input_ids": ids}, step=0)["labels"]
    word = np.maximum.accumulate(np.where(continuation[ids], 0, np.arange(64)), axis=1)
    head_selected = np.take_along_axis(labels != IGNORE_INDEX, word, axis=1)
    np.testing.assert_array_equal(labels != IGNORE_INDEX, head_selected)


# --- checkpoint bookkeeping -------------------------------------------------------------


def test_complete_tags_ignore_half_written_ones(tmp_path):
    for tag, done in [("step_00000004", True), ("step_00000008", True), ("step_00000012", False)]:
        (tmp_path / tag).mkdir()
        if done:
            (tmp_path / tag / "COMPLETE").write_text("abc")
    (tmp_path / "latest").write_text("step_00000012")
    assert complete_tags(tmp_path) == ["step_00000004", "step_00000008"]
    assert complete_tags(tmp_path / "missing") == []
    (tmp_path / "step_00000008" / "COMPLETE").write_text("other settings")
    assert own_tags(tmp_path, "abc") == ["step_00000004"]


# --- guard rails: the stage says what is wrong before it does any work ---------------------


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"pretrain": {"zero_stage": 5}}, "pretrain.zero_stage must be 0-3, got 5"),
        ({"pretrain": {"micro_batch_size": 0}}, "pretrain.micro_batch_size must be positive"),
        (
            {"finetune": {"ner": {"max_seq_len": 64}}},
            "finetune.ner.max_seq_len must be between 16 and model.max_seq_len (32",
        ),
        # blocks of 32 tokens from the tokenize stage, but a model with 16 positions
        (
            {
                "model": {"max_seq_len": 16},
                "finetune": {
                    "classification": {"max_seq_len": 16}, "ner": {"max_seq_len": 16},
                    "qa": {"max_seq_len": 16, "doc_stride": 4},
                },
            },
            "holds blocks of 32 tokens but model.max_seq_len is 16",
        ),
        ({"pretrain": {"precision": "fp16"}}, "pretrain.precision: fp16 is not supported"),
    ],
    ids=["zero_stage", "micro_batch", "finetune_seq_len", "block_len", "fp16_on_cpu"],
)  # fmt: skip
def test_stage_rejects_bad_settings_before_any_work(tmp_path, tiny_corpus_dirs, override, message):
    folder = new_run(tmp_path / "run", tiny_corpus_dirs, override)
    done = stage(folder, expect_ok=False)
    assert done.returncode == 2, done.stderr[-3000:]
    assert message in done.stderr
    assert "Traceback" not in done.stderr
    for output in ("checkpoints", "artifacts/pretrained", "metrics", "plots"):
        assert not (folder / output).exists(), output


def test_diverging_loss_stops_with_the_step(tmp_path, tiny_corpus_dirs):
    folder = new_run(tmp_path / "run", tiny_corpus_dirs, {"pretrain": {"lr": 1.0e30}})
    done = stage(folder, expect_ok=False)
    assert done.returncode == 2, done.stderr[-3000:]
    assert "pretrain: loss became" in done.stderr
    assert "at step 2; try a lower pretrain.lr" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (folder / "metrics/pretrain.json").exists()
    assert not (folder / "artifacts/pretrained").exists()


# --- runs: resume, checkpoints, ranks, ZeRO stages, export ------------------------------------


def test_reference_run_keeps_the_last_checkpoints_and_exports_a_plain_hf_model(reference):
    m = metrics(reference)
    assert m["steps"] == 12 and m["resumed_from_step"] == 0 and m["ranks"] == 1
    assert [r["step"] for r in curve(reference)] == [str(s) for s in range(1, 13)]
    assert losses(reference)[-1] < losses(reference)[0]
    assert complete_tags(reference / CKPT) == ["step_00000008", "step_00000012"]
    assert sorted(p.name for p in (reference / CKPT).iterdir()) == [
        "latest", "step_00000008", "step_00000012",
    ]  # fmt: skip
    assert (reference / CKPT / "latest").read_text() == "step_00000012"
    assert_export_is_the_trained_model(reference)


def assert_export_is_the_trained_model(folder: Path) -> None:
    """Plain transformers loads artifacts/pretrained and reproduces the reported eval loss."""
    out = folder / "artifacts/pretrained"
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    model = BertForMaskedLM.from_pretrained(out).eval()
    assert model.config.max_position_embeddings == TINY_MODEL["max_seq_len"]
    assert model.cls.predictions.decoder.weight.data_ptr() == (
        model.bert.embeddings.word_embeddings.weight.data_ptr()
    )  # tied, as in BERT
    params = load_params(folder / "params.yaml")
    tokenizer = load_tokenizer(out)
    # Same held-out masking as the stage's evaluator: seed + 1, batch index as the step.
    masking = build_masking(tokenizer, params.pretrain, params.seed + 1)
    validation = open_blocks(folder / "data/tokens", "validation")[0]
    size = params.pretrain.micro_batch_size
    total, count = 0.0, 0
    with torch.no_grad():
        for index, start in enumerate(range(0, len(validation), size)):
            batch = masking({"input_ids": validation[start : start + size]}, index)
            tensors = {k: torch.from_numpy(batch[k]).long() for k in MLM_INPUTS}
            masked = int((tensors["labels"] != IGNORE_INDEX).sum())
            total += float(model(**tensors).loss) * masked
            count += masked
    assert total / count == pytest.approx(metrics(folder)["eval_loss"], abs=2e-5)


def test_kill_9_after_a_checkpoint_then_rerun_matches_an_uninterrupted_run(
    reference, runs, tiny_corpus_dirs
):
    folder = new_run(runs / "killed", tiny_corpus_dirs, {})
    kill_9_after_step_4(folder)
    assert not (folder / "metrics/pretrain.json").exists()
    assert complete_tags(folder / CKPT) == ["step_00000004"]

    stage(folder)
    assert metrics(folder)["resumed_from_step"] == 4
    assert metrics(folder)["eval_loss"] == metrics(reference)["eval_loss"]
    assert metrics(folder)["train_loss"] == pytest.approx(
        metrics(reference)["train_loss"], abs=1e-6
    )
    assert curve(folder) == curve(reference)
    assert_same_weights(folder, reference, atol=0.0)


def test_half_written_checkpoints_are_never_resumed_from(reference, runs):
    """Newest tag lost its COMPLETE marker mid-write; `latest` points at a tag of garbage."""
    folder = runs / "half_written"
    shutil.copytree(reference, folder)
    for output in ("metrics", "plots", "artifacts/pretrained"):
        shutil.rmtree(folder / output)
    ckpt = folder / CKPT
    (ckpt / "step_00000012" / "COMPLETE").unlink()
    for state in (ckpt / "step_00000012").glob("*.pt"):
        state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])
    (ckpt / "step_00000016").mkdir()
    (ckpt / "step_00000016" / "mp_rank_00_model_states.pt").write_bytes(b"not a checkpoint")
    (ckpt / "latest").write_text("step_00000016")

    stage(folder)
    assert metrics(folder)["resumed_from_step"] == 8
    assert metrics(folder)["eval_loss"] == metrics(reference)["eval_loss"]
    assert curve(folder) == curve(reference)
    assert (ckpt / "latest").read_text() == "step_00000012"
    assert complete_tags(ckpt) == ["step_00000008", "step_00000012"]


def test_checkpoints_of_other_params_are_not_resumed_from(reference, runs):
    """Another lr starts fresh; stale tags never push out the run's own or vouch for its files."""
    folder = runs / "other_params"
    shutil.copytree(reference, folder)
    shutil.rmtree(folder / "metrics")
    params = yaml.safe_load((folder / "params.yaml").read_text())
    params["pretrain"].update(lr=1.0e-3, max_steps=8)
    (folder / "params.yaml").write_text(yaml.safe_dump(params))
    ckpt = folder / CKPT
    stale = (ckpt / "step_00000008" / "COMPLETE").read_text()

    stage(folder)
    assert metrics(folder)["resumed_from_step"] == 0
    assert float(curve(folder)[0]["loss"]) == float(curve(reference)[0]["loss"])  # same init
    assert float(curve(folder)[3]["loss"]) != float(curve(reference)[3]["loss"])  # other lr
    # step_8 of the old settings was replaced by this run's own, step_4 was kept beside it
    assert (ckpt / "latest").read_text() == "step_00000008"
    own = (ckpt / "step_00000004" / "COMPLETE").read_text()
    assert own != stale and (ckpt / "step_00000008" / "COMPLETE").read_text() == own

    # A rerun with these params finds the run's own final checkpoint and reports the same.
    first = metrics(folder)
    stage(folder)
    assert metrics(folder)["resumed_from_step"] == 8
    assert metrics(folder)["eval_loss"] == first["eval_loss"]
    # (read back from the curve, which rounds to 5 decimals)
    assert metrics(folder)["train_loss"] == pytest.approx(first["train_loss"], abs=1e-5)


@pytest.fixture(scope="module")
def two_ranks(runs, tiny_corpus_dirs) -> Path:
    """Global batch 16 on one node: 2 ranks x micro 8 x accum 1 (the stage's own torchrun)."""
    folder = new_run(
        runs / "two_ranks", tiny_corpus_dirs, {"pretrain": {"num_procs": 2, "grad_accum": 1}}
    )
    stage(folder)
    return folder


def test_two_ranks_match_one_rank_with_accumulation(reference, two_ranks):
    """Global batch 16 either way: 1 rank x micro 8 x accum 2 vs 2 ranks x micro 8 x accum 1."""
    folder = two_ranks
    assert metrics(folder)["ranks"] == 2
    np.testing.assert_allclose(losses(folder), losses(reference), rtol=0, atol=LOSS_TOL)
    assert metrics(folder)["eval_loss"] == pytest.approx(
        metrics(reference)["eval_loss"], abs=LOSS_TOL
    )
    assert complete_tags(folder / CKPT) == ["step_00000008", "step_00000012"]
    assert_same_weights(folder, reference, atol=WEIGHT_TOL["ranks"])


def test_two_simulated_nodes_match_one_node_with_two_ranks(two_ranks, runs, tiny_corpus_dirs):
    """torchrun --nnodes 2 --node-rank 0/1, one process each, c10d rendezvous on 127.0.0.1:
    a two-node cluster with a shared file system, as far as one machine can play one."""
    folder = new_run(runs / "two_nodes", tiny_corpus_dirs, {"pretrain": {"grad_accum": 1}})
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    launch = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
        "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}",
        "--rdzv-id", "lmforge-two-nodes",
    ]  # fmt: skip
    logs = [(folder / f"node{rank}.log").open("w") for rank in (0, 1)]
    nodes = [
        subprocess.Popen(
            [*launch, "--node-rank", str(rank), "-m", "stages.pretrain"],
            cwd=folder,
            env=env(),
            stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        for rank, log in zip((0, 1), logs, strict=True)
    ]
    try:
        codes = [node.wait(timeout=300) for node in nodes]
    finally:
        for node, log in zip(nodes, logs, strict=True):
            node.kill()
            log.close()
    output = "".join((folder / f"node{rank}.log").read_text()[-2000:] for rank in (0, 1))
    assert codes == [0, 0], output
    assert metrics(folder)["ranks"] == 2
    assert curve(folder) == curve(two_ranks)
    assert metrics(folder)["eval_loss"] == metrics(two_ranks)["eval_loss"]
    assert_same_weights(folder, two_ranks, atol=0.0)


@pytest.mark.parametrize("zero_stage", [1, 2, 3])
def test_zero_stages_train_like_stage_0(reference, runs, tiny_corpus_dirs, zero_stage):
    folder = new_run(
        runs / f"zero{zero_stage}", tiny_corpus_dirs, {"pretrain": {"zero_stage": zero_stage}}
    )
    stage(folder)
    np.testing.assert_allclose(losses(folder), losses(reference), rtol=0, atol=LOSS_TOL)
    assert metrics(folder)["eval_loss"] == pytest.approx(
        metrics(reference)["eval_loss"], abs=LOSS_TOL
    )
    assert_same_weights(folder, reference, atol=WEIGHT_TOL["zero"])
    if zero_stage == 3:  # parameters are partitioned: the export must gather them
        assert_export_is_the_trained_model(folder)
