"""The plain Hugging Face `Trainer` recipe from the same checkpoint, on the same data.

The peer lmforge's fine-tune is measured against: `Trainer` with its defaults (AdamW, batch
8, linear decay, no warmup, no weight decay) at lr 5e-5 for one epoch, as the
`run_glue.py` / `run_ner.py` / `run_qa.py` examples run it. Features and metrics are
lmforge's own (same tokenizer, windows, label alignment, scorer), so only the training
recipe differs; batches are padded to their longest row, as HF's collators do.

    python bench/hf_trainer_peer.py ner --pretrained WORK/artifacts/pretrained \
        --prepared WORK/data/prepared --max-seq-len 128 [--fraction 0.25]

`--fraction` trains on that random share of the training examples (one epoch of it):
the amount of data an lmforge run of `epochs: <fraction>` sees. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from lmforge.config import TASKS  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("task", choices=TASKS)
    parser.add_argument("--pretrained", type=Path, required=True, help="checkpoint + tokenizer")
    parser.add_argument("--prepared", type=Path, required=True)
    parser.add_argument("--max-seq-len", type=int, required=True)
    parser.add_argument("--doc-stride", type=int, default=64)
    parser.add_argument("--max-answer-len", type=int, default=30)
    parser.add_argument("--fraction", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args()
    if importlib.util.find_spec("accelerate") is None:  # transformers' Trainer needs it
        sys.exit("bench/hf_trainer_peer.py needs accelerate: pip install -e '.[bench]'")
    result = run_peer(args)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))


def run_peer(args) -> dict:
    import torch
    from transformers import Trainer, TrainingArguments

    from lmforge.data.prepare import read_prepared
    from lmforge.finetune import EVAL_BATCH_SIZE
    from lmforge.modeling import task_model
    from lmforge.tasks.base import trim_padding
    from lmforge.tasks.registry import get_task
    from lmforge.tokenizer import load_tokenizer

    began = time.perf_counter()
    task = get_task(args.task)
    train = read_prepared(args.prepared, args.task, "train")
    validation = read_prepared(args.prepared, args.task, "validation")
    labels = task.label_list(train)
    if args.fraction < 1:
        keep = np.random.default_rng(args.seed).permutation(len(train))
        train = [train[i] for i in sorted(keep[: round(args.fraction * len(train))])]
    options = {"max_seq_len": args.max_seq_len}
    if args.task == "qa":
        options |= {"doc_stride": args.doc_stride, "max_answer_len": args.max_answer_len}
    tokenizer = load_tokenizer(args.pretrained)
    train_features = task.encode(tokenizer, train, labels, **options)
    val_features = task.encode(tokenizer, validation, labels, **options)
    arrays = {**train_features.inputs, **train_features.targets}
    rows = [{k: v[i] for k, v in arrays.items()} for i in range(len(train_features))]

    def collate(batch: list[dict]) -> dict:
        stacked = trim_padding({k: np.stack([row[k] for row in batch]) for k in batch[0]})
        return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in stacked.items()}

    torch.manual_seed(args.seed)
    model = task_model(task.auto_model, "pretrained", args.pretrained, labels)
    with tempfile.TemporaryDirectory() as scratch:
        training = TrainingArguments(
            output_dir=scratch, learning_rate=5e-5, num_train_epochs=1, seed=args.seed,
            save_strategy="no", report_to=[], use_cpu=True, disable_tqdm=True,
        )  # fmt: skip
        trainer = Trainer(model=model, args=training, train_dataset=rows, data_collator=collate)
        train_began = time.perf_counter()
        fit = trainer.train()
        train_seconds = time.perf_counter() - train_began

    model.eval()
    outputs = {name: [] for name in task.output_names}
    with torch.no_grad():
        for start in range(0, len(val_features), EVAL_BATCH_SIZE):
            chunk = {k: v[start : start + EVAL_BATCH_SIZE] for k, v in val_features.inputs.items()}
            seq = chunk["input_ids"].shape[1]
            result = model(**{k: torch.from_numpy(v) for k, v in trim_padding(chunk).items()})
            for name in task.output_names:
                value = result[name].float().numpy()
                if value.ndim >= 2 and value.shape[1] < seq:  # restore trimmed columns
                    pad = [(0, 0)] * value.ndim
                    pad[1] = (0, seq - value.shape[1])
                    value = np.pad(value, pad, constant_values=-1e4)
                outputs[name].append(value)
    outputs = {name: np.concatenate(parts) for name, parts in outputs.items()}
    metrics = task.evaluate(outputs, val_features, validation, labels, **options)
    return {
        "task": args.task,
        **{k: round(v, 5) for k, v in metrics.items()},
        "recipe": "HF Trainer defaults, lr 5e-5, 1 epoch, batch 8",
        "fraction": args.fraction,
        "train_examples": len(train),
        "steps": fit.global_step,
        "train_loss": round(fit.training_loss, 5),
        "train_seconds": round(train_seconds, 1),
        "seconds": round(time.perf_counter() - began, 1),
    }


if __name__ == "__main__":
    main()
