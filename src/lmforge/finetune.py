"""Fine-tune the pretrained model (or a random one) on a task through the engine."""

from __future__ import annotations

import logging
import math
import shutil
from pathlib import Path

import torch

from lmforge.artifacts import copy_files, publish_dir, write_json
from lmforge.config import TaskTrainConfig
from lmforge.data.prepare import read_prepared
from lmforge.engine import StepBatches, Trainer, resolve_precision
from lmforge.modeling import task_model
from lmforge.pretrain import engine_settings
from lmforge.tasks.registry import get_task
from lmforge.tokenizer import load_tokenizer

log = logging.getLogger("lmforge.finetune")

EVAL_BATCH_SIZE = 64


def task_options(cfg: TaskTrainConfig) -> dict:
    """The encode/evaluate options of a task's params (QA adds its window settings)."""
    options = {"max_seq_len": cfg.max_seq_len}
    for name in ("doc_stride", "max_answer_len"):
        if hasattr(cfg, name):
            options[name] = getattr(cfg, name)
    return options


def run_finetune(
    task_name: str,
    cfg: TaskTrainConfig,
    seed: int,
    pretrained_dir: Path,
    prepared_dir: Path,
    out_dir: Path,
    curve_path: Path | None = None,
) -> dict:
    """Train and evaluate one task; save the model folder; return its metrics."""
    resolve_precision(cfg.precision, f"finetune.{task_name}")  # before any work
    task = get_task(task_name)
    train = read_prepared(prepared_dir, task_name, "train")
    validation = read_prepared(prepared_dir, task_name, "validation")
    labels = task.label_list(train)
    tokenizer = load_tokenizer(pretrained_dir)
    options = task_options(cfg)
    train_features = task.encode(tokenizer, train, labels, **options)
    val_features = task.encode(tokenizer, validation, labels, **options)
    log.info(
        "%s: %d train / %d validation examples -> %d / %d features",
        task_name, len(train), len(validation), len(train_features), len(val_features),
    )  # fmt: skip

    torch.manual_seed(seed)  # the random head (and, for init: random, the whole model)
    model = task_model(task.auto_model, cfg.init, pretrained_dir, labels, cfg.dropout)
    arrays = {**train_features.inputs, **train_features.targets}
    lengths = train_features.inputs["attention_mask"].sum(axis=1)  # batches of similar length
    batches = StepBatches(arrays, cfg.micro_batch_size * cfg.grad_accum, seed, lengths=lengths)
    total_steps = max(1, math.ceil(cfg.epochs * batches.steps_per_epoch))
    settings = engine_settings(cfg, total_steps, seed, f"finetune.{task_name}")
    trainer = Trainer(model, settings, batches, curve_path=curve_path)
    result = trainer.fit()

    outputs = trainer.predict(
        val_features.inputs, EVAL_BATCH_SIZE, task.output_names,
        reduce=lambda values, rows: task.reduce_outputs(values, val_features, rows),
    )  # fmt: skip
    metrics = task.evaluate(outputs, val_features, validation, labels, **options)
    metrics = {k: round(v, 5) for k, v in metrics.items()}
    log.info("%s: %s", task_name, metrics)

    staging = out_dir.with_name(f".{out_dir.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    trainer.save_pretrained(staging)
    copy_files(
        pretrained_dir,
        staging,
        ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"],
    )
    write_json(
        staging / "task.json", {"task": task_name, "labels": labels, "init": cfg.init, **options}
    )
    publish_dir(staging, out_dir)
    return {
        **metrics,
        "init": cfg.init,
        "train_examples": len(train),
        "validation_examples": len(validation),
        "steps": result.steps,
        "train_loss": round(result.final_loss, 5),
        "train_seconds": round(result.seconds, 1),
    }
