"""Pretraining on packed token blocks: masked-language modelling of a BERT encoder, or
next-token prediction of a GPT-2 decoder (model.arch)."""

from __future__ import annotations

import dataclasses
import logging
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lmforge.artifacts import copy_files, publish_dir, read_json
from lmforge.checkpoints import MANIFEST, pretraining_model_from
from lmforge.config import ModelConfig, PretrainConfig
from lmforge.engine import (
    CheckpointSettings,
    EngineSettings,
    StepBatches,
    Trainer,
    fingerprint,
    init_distributed,
    load_override,
    resolve_precision,
    to_tensors,
)
from lmforge.errors import ConfigError
from lmforge.modeling import pretraining_model
from lmforge.tasks.base import IGNORE_INDEX
from lmforge.tokenizer import SPECIAL_TOKENS, load_tokenizer, unk_rate
from lmforge.tokens import open_blocks

log = logging.getLogger("lmforge.pretrain")

# Settings that change how often things happen, not what is trained: a run may resume
# from checkpoints written under other values of these.
_SCHEDULING_ONLY = ("checkpoint_every", "keep_checkpoints", "eval_every")


@dataclass
class MlmMasking:
    """BERT masking (80% [MASK], 10% random, 10% kept), seeded by (seed, step, position).

    `position` is the row's place in the step's global batch: every rank masks its own
    rows exactly as one rank would mask the whole batch. With `continuation` (True for
    "##" pieces) whole words are masked together.
    """

    mask_id: int
    vocab_size: int
    special_ids: np.ndarray
    probability: float
    seed: int
    continuation: np.ndarray | None = None
    sep_id: int | None = None  # set: also build sentence-order pairs (see split_segments)

    def __call__(self, batch: dict, step: int, positions: np.ndarray | None = None) -> dict:
        ids = batch["input_ids"]
        if positions is None:
            positions = np.arange(len(ids))
        rows = [
            self._row(row.astype(np.int64), np.random.default_rng([self.seed, step, int(p)]))
            for row, p in zip(ids, positions, strict=True)
        ]
        return {key: np.stack([row[key] for row in rows]) for key in rows[0]}

    def _row(self, ids: np.ndarray, rng: np.random.Generator) -> dict:
        extra = {}
        if self.sep_id is not None:
            ids, token_types, swapped = split_segments(ids, self.sep_id, rng)
            extra = {"token_type_ids": token_types, "sentence_order_label": np.int64(swapped)}
        draw = rng.random(ids.shape)
        if self.continuation is not None:
            draw = _share_with_word(draw[None], self.continuation[ids][None])[0]
        candidates = ~np.isin(ids, self.special_ids)
        selected = candidates & (draw < self.probability)
        labels = np.where(selected, ids, IGNORE_INDEX)
        action = rng.random(ids.shape)
        masked = ids.copy()
        masked[selected & (action < 0.8)] = self.mask_id
        randomize = selected & (action >= 0.8) & (action < 0.9)
        masked[randomize] = rng.integers(len(self.special_ids), self.vocab_size, randomize.sum())
        return {
            "input_ids": masked,
            "attention_mask": np.ones_like(ids),
            "token_type_ids": np.zeros_like(ids),
            "labels": labels,
            **extra,
        }


def split_segments(ids: np.ndarray, sep_id: int, rng: np.random.Generator) -> tuple:
    """[CLS] text [SEP] -> [CLS] A [SEP] B [SEP], with A and B swapped half the time.

    The cut falls at a random point in the middle half of the block; the label says
    whether the two segments were swapped (ALBERT's sentence-order prediction).
    """
    body = ids[1:-2]  # one token gives way to the separator between the segments
    cut = rng.integers(len(body) // 4, 3 * len(body) // 4 + 1)
    swapped = bool(rng.random() < 0.5)
    first, second = (body[cut:], body[:cut]) if swapped else (body[:cut], body[cut:])
    out = np.concatenate([ids[:1], first, [sep_id], second, [sep_id]])
    types = np.zeros_like(ids)
    types[len(first) + 2 :] = 1
    return out, types, swapped


def _share_with_word(draw: np.ndarray, is_continuation: np.ndarray) -> np.ndarray:
    """Give every "##" piece the random draw of the word-initial token before it."""
    positions = np.arange(draw.shape[1])[None, :].repeat(len(draw), 0)
    heads = np.where(is_continuation, 0, positions)
    heads = np.maximum.accumulate(heads, axis=1)
    return np.take_along_axis(draw, heads, axis=1)


def build_masking(tokenizer, cfg: PretrainConfig, seed: int) -> MlmMasking:
    vocab = tokenizer.get_vocab()
    continuation = None
    if cfg.whole_word_masking:
        continuation = np.zeros(tokenizer.get_vocab_size(), dtype=bool)
        for token, index in vocab.items():
            continuation[index] = token.startswith("##")
    return MlmMasking(
        mask_id=vocab["[MASK]"],
        vocab_size=tokenizer.get_vocab_size(),
        special_ids=np.array([vocab[t] for t in SPECIAL_TOKENS]),
        probability=cfg.mlm_probability,
        seed=seed,
        continuation=continuation,
        sep_id=vocab["[SEP]"] if cfg.sentence_order else None,
    )


def next_token_rows(batch: dict, step: int, positions: np.ndarray | None = None) -> dict:
    """Causal-LM rows: a block is its own labels (the model shifts them by one position).

    Nothing is random, so any rank and any step see the same rows alike.
    """
    ids = batch["input_ids"].astype(np.int64)
    return {"input_ids": ids, "attention_mask": np.ones_like(ids), "labels": ids}


def objective(arch: str, tokenizer, cfg: PretrainConfig, seed: int) -> tuple:
    """(rows to train on, rows to evaluate on, the evaluator's loss output and label shift)
    for model.arch: BERT's masked LM (+ sentence order) or GPT-2's next-token prediction.
    Evaluation masks with another seed than training, so its masked positions are new."""
    if arch == "gpt2":
        return next_token_rows, next_token_rows, "loss", 1
    train = build_masking(tokenizer, cfg, seed)
    return train, build_masking(tokenizer, cfg, seed + 1), "mlm_loss", 0


def engine_settings(cfg, total_steps: int, seed: int, where: str) -> EngineSettings:
    """Plain engine arguments from any params group that extends EngineConfig."""
    return EngineSettings(
        micro_batch_size=cfg.micro_batch_size,
        grad_accum=cfg.grad_accum,
        lr=cfg.lr,
        total_steps=total_steps,
        weight_decay=cfg.weight_decay,
        warmup_steps=int(cfg.warmup_ratio * total_steps),
        schedule=cfg.schedule,
        grad_clip=cfg.grad_clip,
        zero_stage=cfg.zero_stage,
        precision=cfg.precision,
        seed=seed,
        deepspeed_override=load_override(cfg.deepspeed_config, where),
        where=where,
    )


def run_pretrain(
    cfg: PretrainConfig,
    model_cfg: ModelConfig,
    seed: int,
    tokenizer_dir: Path,
    tokens_dir: Path,
    checkpoint_dir: Path,
    out_dir: Path,
    curve_path: Path | None = None,
    start_from: Path | None = None,
) -> dict:
    """Train, evaluate and save the model; returns metrics/pretrain.json's content.

    `start_from`: an imported checkpoint folder (lmforge.checkpoints) whose weights
    training continues from; with `max_steps` 0 it is published as it is.
    """
    resolve_precision(cfg.precision, "pretrain")  # refuse e.g. fp16 on CPU before any work
    if start_from is not None and cfg.max_steps == 0:
        # What DVC expects of any pretrain run: a checkpoint folder and a curve (no points).
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
        if curve_path is not None:
            curve_path.parent.mkdir(parents=True, exist_ok=True)
            curve_path.write_text("step,loss\n", encoding="utf-8")
        return publish_checkpoint(start_from, tokenizer_dir, out_dir)
    rank, world = init_distributed()
    # Memory-mapped: each rank reads the rows of its own micro-batches, nothing up front.
    train, header = open_blocks(tokens_dir, "train", random_access=True)
    validation, _ = open_blocks(tokens_dir, "validation")
    if header["block_len"] != model_cfg.max_seq_len:
        raise ConfigError(
            f"{tokens_dir}/train.bin holds blocks of {header['block_len']} tokens but "
            f"model.max_seq_len is {model_cfg.max_seq_len}; re-run the tokenize stage"
        )
    tokenizer = load_tokenizer(tokenizer_dir)
    train_rows, eval_rows, eval_loss, label_shift = objective(model_cfg.arch, tokenizer, cfg, seed)
    settings = engine_settings(cfg, cfg.max_steps, seed, "pretrain")
    global_batch = cfg.micro_batch_size * cfg.grad_accum * world
    batches = StepBatches({"input_ids": train}, global_batch, seed, train_rows)
    torch.manual_seed(seed)  # identical initial weights on every rank and every run
    if start_from is None:
        model = pretraining_model(model_cfg, tokenizer)
    else:
        model = pretraining_model_from(
            start_from, model_cfg.arch, model_cfg.dropout, model_cfg.attention_dropout
        )
        _check_vocab(tokenizer, model, tokenizer_dir)
    base = read_json(start_from / MANIFEST)["weights_sha256"] if start_from else None
    run_identity = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in _SCHEDULING_ONLY}
    checkpoint = CheckpointSettings(
        directory=checkpoint_dir,
        every=cfg.checkpoint_every,
        keep=cfg.keep_checkpoints,
        fingerprint=fingerprint(run_identity, model_cfg, seed, world, header["sha256"], base),
    )
    evaluator = HeldOutLoss(validation, eval_rows, cfg.micro_batch_size, eval_loss, label_shift)
    trainer = Trainer(
        model,
        settings,
        batches,
        checkpoint=checkpoint,
        evaluate=evaluator,
        eval_every=cfg.eval_every,
        curve_path=curve_path,
    )
    result = trainer.fit()
    final_eval = result.evals[-1] if result.evals else evaluator(trainer)
    save_model(trainer, tokenizer_dir, out_dir, rank)
    return {
        "eval_loss": final_eval["eval_loss"],
        "eval_perplexity": final_eval["eval_perplexity"],
        "tokens_per_second": round(result.tokens_per_second, 1),
        "steps": result.steps,
        "train_loss": result.final_loss,
        "resumed_from_step": result.resumed_from,
        "ranks": world,
        "validation_unk_rate": round(unk_rate(tokenizer, validation), 6),
    }


class HeldOutLoss:
    """Loss per predicted token over held-out blocks, shared out over the ranks.

    `rows` turns blocks into model inputs (fixed MLM masking, or next-token rows);
    `loss_name` is the model output averaged over the predicted tokens (BERT's MLM loss
    alone: perplexity is of the MLM, not of sentence order); a causal LM predicts every
    label but the first (`label_shift` 1).
    """

    def __init__(self, blocks: np.ndarray, rows, batch_size: int, loss_name: str, label_shift: int):
        self.blocks = blocks
        self.rows = rows
        self.batch_size = batch_size
        self.loss_name = loss_name
        self.label_shift = label_shift

    @torch.no_grad()
    def __call__(self, trainer: Trainer) -> dict:
        trainer.engine.eval()
        loss_sum = torch.zeros(2, dtype=torch.float64)  # (sum of token losses, tokens)
        for index, start in enumerate(range(0, len(self.blocks), self.batch_size)):
            if index % trainer.world != trainer.rank:
                continue
            batch = self.rows({"input_ids": self.blocks[start : start + self.batch_size]}, index)
            tensors = {k: v.to(trainer.device) for k, v in to_tensors(batch).items()}
            predicted = int((tensors["labels"][:, self.label_shift :] != IGNORE_INDEX).sum())
            if predicted:
                loss = getattr(trainer.engine(**tensors), self.loss_name)
                loss_sum += torch.tensor([float(loss) * predicted, predicted])
        if trainer.world > 1:
            torch.distributed.all_reduce(loss_sum)
        loss = float(loss_sum[0] / max(loss_sum[1], 1))
        return {"eval_loss": round(loss, 5), "eval_perplexity": round(math.exp(min(loss, 50)), 3)}


def publish_checkpoint(start_from: Path, tokenizer_dir: Path, out_dir: Path) -> dict:
    """`max_steps: 0`: artifacts/pretrained is the checkpoint itself (+ its tokenizer)."""
    staging = out_dir.with_name(f".{out_dir.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    copy_files(start_from, staging)  # config, safetensors weights, tokenizer
    (staging / MANIFEST).unlink()
    copy_files(tokenizer_dir, staging)  # the tokenize stage's copy (model_max_length set)
    publish_dir(staging, out_dir)
    log.info("pretrain.max_steps 0: %s published as it is", start_from)
    return {
        "eval_loss": None, "eval_perplexity": None, "tokens_per_second": 0.0, "steps": 0,
        "train_loss": None, "resumed_from_step": 0, "ranks": 1,
    }  # fmt: skip


def _check_vocab(tokenizer, model, tokenizer_dir: Path) -> None:
    """The tokenizer must be the checkpoint's: ids beyond its embeddings would crash later."""
    rows = getattr(model, "hf_model", model).config.vocab_size  # MaskedPositionsMlm wraps
    if tokenizer.get_vocab_size() > rows:
        raise ConfigError(
            f"{tokenizer_dir} has {tokenizer.get_vocab_size()} tokens but the checkpoint "
            f"embeds {rows}; re-run the tokenize stage"
        )


def save_model(trainer: Trainer, tokenizer_dir: Path, out_dir: Path, rank: int) -> None:
    """Consolidated model + tokenizer, published atomically (rank 0 writes)."""
    staging = out_dir.with_name(f".{out_dir.name}.partial")
    if rank == 0:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
    trainer.save_pretrained(staging)
    if rank == 0:
        copy_files(tokenizer_dir, staging)
        publish_dir(staging, out_dir)
