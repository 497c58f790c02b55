"""Training throughput: lmforge's DeepSpeed engine against plain PyTorch loops, same model,
data, batch and masking, fp32, this machine's threads.

    python bench/train_throughput.py                 # under 3 minutes (--budget)
    python bench/train_throughput.py --steps 40 --budget 600 --threads 1

The variants are built side by side in one process and stepped in lockstep: step k of each,
in an order that rotates with k, then step k + 1. Background load on a shared machine comes
and goes within seconds, so lockstep steps see the same load; each variant's tokens/s is
its tokens per step over its median step time. Timing stops at --steps or --budget seconds.
  deepspeed     lmforge's Trainer (deepspeed.initialize, ZeRO 0, AdamW, clipping, LR schedule)
                on lmforge's MaskedPositionsMlm (vocabulary logits at masked positions only)
  torch         what a user would write: the Hugging Face model's forward with labels (full
                vocabulary logits), torch.optim.AdamW, clip_grad_norm_, a LambdaLR schedule
  torch_masked  the same loop on MaskedPositionsMlm: the engine's own overhead is
                deepspeed vs torch_masked, the head's saving is torch_masked vs torch
All see the same packed blocks (Python's own docs, tokenized with lmforge) and the same
masking (seeded by step), so every variant computes on identical batches.

Model FLOPs (comment, not code, is the definition):
  standard, per token = 6 * N + 12 * L * S * H
    N = non-embedding parameters that act on every token: the encoder layers and the MLM
        head's transform (dense + LayerNorm); not the embeddings, not the vocabulary
        projection tied to them, not the pooler (one vector per row)
    12 * L * S * H = attention scores and weighted sum (QK^T and AV, 2*S*H multiply-adds
        each per token and layer), times 3 for forward + backward
  mfu = standard FLOPs per token * tokens/s / peak, peak = best fp32 torch.matmul of
        2048^3 on this machine's threads. The same formula for every variant, so it does
        not credit the engine for skipping the vocabulary logits of unmasked positions.
  computed FLOPs (per variant) add the vocabulary head as each variant runs it:
        6 * V * H per token with full logits, 6 * V * H per masked token otherwise.
Prints a table and, as its last line, JSON; also writes bench/results/train_throughput.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
# DeepSpeed JIT-builds its CPU shared-memory op at start-up; a build folder of this venv's own
# keeps other Pythons on a shared machine from invalidating it (a one- to two-minute rebuild).
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path(sys.prefix) / "torch_extensions"))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from transformers import BertConfig, BertForMaskedLM, BertForPreTraining  # noqa: E402

from lmforge.config import load_params  # noqa: E402
from lmforge.data.corpus import write_corpus  # noqa: E402
from lmforge.engine import EngineSettings, StepBatches, Trainer, lr_multiplier  # noqa: E402
from lmforge.modeling import bert_config, masked_lm  # noqa: E402
from lmforge.pretrain import build_masking  # noqa: E402
from lmforge.tokenizer import load_tokenizer, run_tokenize  # noqa: E402
from lmforge.tokens import open_blocks  # noqa: E402

VARIANTS = ("deepspeed", "torch", "torch_masked")


# --- data and models ---------------------------------------------------------------------


def build_corpus(folder: Path, vocab_size: int, block_len: int) -> tuple[np.ndarray, object]:
    """Packed blocks of Python's own documentation, through lmforge's tokenize stage code."""
    import pydoc_data.topics

    docs = [p for text in pydoc_data.topics.topics.values() for p in text.split("\n\n")]
    docs = [d for d in docs if d.strip()]
    corpus = {"train": folder / "corpus.parquet"}
    write_corpus(corpus["train"], docs)
    run_tokenize(
        corpus, vocab_size=vocab_size, min_frequency=2, lowercase=True,
        block_len=block_len, tokenizer_dir=folder / "tokenizer", tokens_dir=folder / "tokens",
    )  # fmt: skip
    return open_blocks(folder / "tokens", "train")[0], load_tokenizer(folder / "tokenizer")


@dataclasses.dataclass
class Workload:
    """What every variant trains on: the model config, the step batches, the objective."""

    config: BertConfig
    batches: StepBatches
    sentence_order: bool  # params' pretrain.sentence_order: MLM + sentence-order prediction

    def model(self, masked_positions: bool) -> torch.nn.Module:
        """lmforge's training module, or the Hugging Face class with the same objective."""
        torch.manual_seed(0)
        if masked_positions:
            return masked_lm(self.config)
        return (BertForPreTraining if self.sentence_order else BertForMaskedLM)(self.config)


def flops_per_token(config, mask_fraction: float) -> dict[str, float]:
    h, layers, seq, vocab = (
        config.hidden_size, config.num_hidden_layers, config.max_position_embeddings,
        config.vocab_size,
    )  # fmt: skip
    model = BertForMaskedLM(config)
    encoder = sum(p.numel() for p in model.bert.encoder.parameters())
    transform = sum(p.numel() for p in model.cls.predictions.transform.parameters())
    attention = 12 * layers * seq * h
    standard = 6 * (encoder + transform) + attention
    head = 6 * vocab * h
    return {
        "standard": standard,
        "torch": standard + head,
        "masked": standard - 6 * transform * (1 - mask_fraction) + head * mask_fraction,
        "non_embedding_params": encoder + transform,
    }


# --- the three training loops, one optimizer step at a time --------------------------------


class ShiftedBatches:
    """The batches of step `offset + k` for a fit() that runs step k: lets the bench run
    the engine's own fit() loop one step per call, on the same batches as the others."""

    def __init__(self, batches: StepBatches):
        self.batches = batches
        self.offset = 0

    def micro_batches(self, step: int, rank: int, world: int, accum: int) -> list[dict]:
        return self.batches.micro_batches(self.offset + step, rank, world, accum)


def engine_stepper(work: Workload, settings: EngineSettings) -> Callable[[int], None]:
    """One step of lmforge's Trainer.fit() per call (with fit's per-call setup, too)."""
    batches = ShiftedBatches(work.batches)
    one_step = dataclasses.replace(settings, total_steps=1)
    trainer = Trainer(work.model(masked_positions=True), one_step, batches, progress=False)

    def step(k: int) -> None:
        batches.offset = k
        trainer.fit()

    return step


def torch_stepper(
    work: Workload, settings: EngineSettings, masked_positions: bool
) -> Callable[[int], None]:
    """One step of the training loop a PyTorch user would write."""
    model = work.model(masked_positions)
    model.train()
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay
    )
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_multiplier(settings.schedule, settings.warmup_steps, settings.total_steps)
    )

    def step(k: int) -> None:
        torch.manual_seed(k)  # dropout
        (batch,) = work.batches.micro_batches(k, rank=0, world=1, accum=1)
        if not masked_positions and "sentence_order_label" in batch:  # HF's name for it
            batch["next_sentence_label"] = batch.pop("sentence_order_label")
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        loss.item()

    return step


def matmul_peak(size: int = 2048, repeats: int = 5) -> float:
    """Best fp32 FLOP/s of a size^3 torch.matmul on this machine's threads."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.matmul(a, b)
    best = float("inf")
    for _ in range(repeats):
        began = time.perf_counter()
        torch.matmul(a, b)
        best = min(best, time.perf_counter() - began)
    return 2 * size**3 / best


# --- measuring -----------------------------------------------------------------------------


def time_lockstep(steppers: dict, warmup: int, steps: int, budget: float) -> dict:
    """Per-step seconds of each variant, stepped in lockstep after `warmup` untimed steps."""
    for k in range(warmup):  # allocator, oneDNN kernels, DeepSpeed's first step
        for name in VARIANTS:
            steppers[name](k)
    seconds: dict[str, list[float]] = {name: [] for name in VARIANTS}
    began = time.perf_counter()
    for k in range(warmup, warmup + steps):
        shift = k % len(VARIANTS)
        for name in VARIANTS[shift:] + VARIANTS[:shift]:
            step_began = time.perf_counter()
            steppers[name](k)
            seconds[name].append(time.perf_counter() - step_began)
        if time.perf_counter() - began > budget:
            break
    return seconds


def summarize(speed: dict, flops: dict, peak: float, seconds: dict) -> dict:
    computed = {"deepspeed": "masked", "torch": "torch", "torch_masked": "masked"}
    return {
        "deepspeed_tokens_per_s": round(speed["deepspeed"], 1),
        "torch_tokens_per_s": round(speed["torch"], 1),
        "ratio": round(speed["deepspeed"] / speed["torch"], 3),
        "mfu": round(speed["deepspeed"] * flops["standard"] / peak, 4),
        "torch_masked_tokens_per_s": round(speed["torch_masked"], 1),
        "ratio_vs_torch_masked": round(speed["deepspeed"] / speed["torch_masked"], 3),
        "mfu_torch": round(speed["torch"] * flops["standard"] / peak, 4),
        "mfu_torch_masked": round(speed["torch_masked"] * flops["standard"] / peak, 4),
        "computed_gflops_per_s": {
            name: round(speed[name] * flops[computed[name]] / 1e9, 2) for name in VARIANTS
        },
        "peak_fp32_matmul_gflops": round(peak / 1e9, 2),
        "flops_per_token": {k: int(v) for k, v in flops.items()},
        "step_seconds": {name: [round(x, 4) for x in seconds[name]] for name in VARIANTS},
    }


# --- main ----------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30, help="timed steps of each variant")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps of each first")
    parser.add_argument("--budget", type=float, default=100, help="seconds of timed steps")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--out", type=Path, default=REPO / "bench/results/train_throughput.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.disable(logging.WARNING)
    warnings.filterwarnings("ignore")

    params = load_params(REPO / "params.yaml")
    cfg = params.pretrain
    sentence_order = bool(getattr(cfg, "sentence_order", False))
    with tempfile.TemporaryDirectory() as tmp:
        blocks, tokenizer = build_corpus(
            Path(tmp), params.tokenize.vocab_size, params.model.max_seq_len
        )
    config = bert_config(params.model, tokenizer.get_vocab_size())
    masking = build_masking(tokenizer, cfg, params.seed)
    batches = StepBatches({"input_ids": blocks}, cfg.micro_batch_size, params.seed, masking)

    total = args.warmup + args.steps
    settings = EngineSettings(
        micro_batch_size=cfg.micro_batch_size, grad_accum=1, lr=cfg.lr, total_steps=total,
        weight_decay=cfg.weight_decay, warmup_steps=int(cfg.warmup_ratio * total),
        schedule=cfg.schedule, grad_clip=cfg.grad_clip, zero_stage=0, precision="fp32",
        seed=params.seed, where="bench",
    )  # fmt: skip
    work = Workload(config, batches, sentence_order)
    steppers = {
        "deepspeed": engine_stepper(work, settings),
        "torch": torch_stepper(work, settings, masked_positions=False),
        "torch_masked": torch_stepper(work, settings, masked_positions=True),
    }
    load_before = os.getloadavg()
    peak = matmul_peak()
    seconds = time_lockstep(steppers, args.warmup, args.steps, args.budget)
    peak = max(peak, matmul_peak())  # the best of before and after: load only lowers it

    labels = np.stack([masking({"input_ids": blocks[:256]}, s)["labels"] for s in range(4)])
    flops = flops_per_token(config, mask_fraction=float((labels != -100).mean()))
    tokens = cfg.micro_batch_size * params.model.max_seq_len  # per step: packed, no padding
    speed = {name: tokens / statistics.median(seconds[name]) for name in VARIANTS}
    result = summarize(speed, flops, peak, seconds)
    result["setup"] = {
        "model": dataclasses.asdict(params.model),
        "vocab_size": config.vocab_size,
        "micro_batch_size": cfg.micro_batch_size,
        "tokens_per_step": cfg.micro_batch_size * params.model.max_seq_len,
        "timed_steps": len(seconds["torch"]),
        "sentence_order": sentence_order,
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "load_average_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        "torch": torch.__version__,
    }
    for name in VARIANTS:
        print(f"{name:>13}: {speed[name]:10.1f} tokens/s, median step {tokens / speed[name]:.3f} s")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
