"""Served vs evaluated NER: the service's entity F1 on raw text against the stage's F1.

Fine-tunes a model on a CoNLL file (or takes a serving folder the pipeline wrote), serves
it with the HTTP app, sends the validation sentences as raw text (English tokens joined
by spaces, Chinese characters joined with nothing) and scores the returned character
spans against the gold entities' spans. The stage's F1 is what `finetune` reports for
the same model; a serving folder is scored against the same ONNX model evaluated the
way the stages evaluate it. Both must agree (lmforge reads words one way from training
to serving).

    python bench/ner_served.py --train T.conll --validation V.conll   # tiny fine-tune
    python bench/ner_served.py --serving artifacts/serving/ner --validation V.conll

Prints one JSON line: stage F1, served F1 and their difference.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO))

from lmforge.data.conll import read_conll  # noqa: E402
from lmforge.data.records import NerExample, to_json  # noqa: E402
from lmforge.tasks.script import join_tokens  # noqa: E402

# A small model: the check is about agreement, not quality.
SMALL_MODEL = {"hidden_size": 64, "num_layers": 2, "num_heads": 2, "intermediate_size": 128}


def gold_spans(tokens: Sequence[str], tags: Sequence[str]) -> tuple[str, set]:
    """The sentence as raw text and its entities as (start, end, type) character spans."""
    from seqeval.metrics.sequence_labeling import get_entities

    text = join_tokens(tokens)
    sep = 0 if text == "".join(tokens) else 1
    starts, position = [], 0
    for token in tokens:
        starts.append(position)
        position += len(token) + sep
    spans = {
        (starts[first], starts[last] + len(tokens[last]), kind)
        for kind, first, last in get_entities(list(tags))
    }
    return text, spans


def span_f1(gold: Sequence[set], predicted: Sequence[set]) -> dict[str, float]:
    """Entity-level precision, recall and F1 on exact (start, end, type) matches."""
    hits = sum(len(g & p) for g, p in zip(gold, predicted, strict=True))
    n_gold, n_pred = sum(map(len, gold)), sum(map(len, predicted))
    precision, recall = hits / max(n_pred, 1), hits / max(n_gold, 1)
    f1 = 2 * precision * recall / (precision + recall) if hits else 0.0
    return {"f1": f1, "precision": precision, "recall": recall}


def served_spans(serving_dir: Path, texts: Sequence[str], batch: int = 32) -> list[set]:
    """Entities the HTTP service returns for each text, as (start, end, label) spans."""
    from fastapi.testclient import TestClient

    from serve.app import create_app
    from serve.settings import Settings

    settings = Settings(artifacts=serving_dir.parent, tasks="ner", max_items=batch)
    spans = []
    with TestClient(create_app(settings)) as client:
        for _ in range(600):  # the app loads models in the background
            ready = client.get("/readyz")
            if ready.status_code == 200 or "failed" in ready.text:
                break
            time.sleep(0.1)
        if ready.status_code != 200:
            raise RuntimeError(f"service not ready: {ready.text}")
        for i in range(0, len(texts), batch):
            response = client.post("/v1/ner", json={"texts": list(texts[i : i + batch])})
            response.raise_for_status()
            for result in response.json()["results"]:
                spans.append({(e["start"], e["end"], e["label"]) for e in result["entities"]})
    return spans


def export_serving(finetuned_dir: Path, serving_dir: Path) -> None:
    """fp32 ONNX of a fine-tuned folder with the files the service reads (no int8: the
    comparison is with the PyTorch model the stage scored)."""
    import shutil

    from transformers import AutoModelForTokenClassification

    from lmforge.compress.export import export_onnx

    task = json.loads((finetuned_dir / "task.json").read_text(encoding="utf-8"))
    model = AutoModelForTokenClassification.from_pretrained(str(finetuned_dir))
    serving_dir.mkdir(parents=True, exist_ok=True)
    sample = {name: np.ones((1, 8), np.int64) for name in ("input_ids", "attention_mask")}
    sample["token_type_ids"] = np.zeros((1, 8), np.int64)
    export_onnx(model, serving_dir / "model.onnx", ("logits",), sample, 17)
    shutil.copyfile(finetuned_dir / "tokenizer.json", serving_dir / "tokenizer.json")
    manifest = {
        "task": "ner",
        "labels": task["labels"],
        "max_seq_len": task["max_seq_len"],
        "model_file": "model.onnx",
        "quantized": False,
        "version": "bench",
    }
    (serving_dir / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")


def quantize_serving(serving_dir: Path) -> None:
    """Add model.int8.onnx (the compress stage's default int8 format) and serve it."""
    from lmforge.compress.quantize import QuantOptions, quantize

    quantize(serving_dir / "model.onnx", serving_dir / "model.int8.onnx", QuantOptions())
    manifest = json.loads((serving_dir / "manifest.json").read_text(encoding="utf-8"))
    manifest |= {"model_file": "model.int8.onnx", "quantized": True}
    (serving_dir / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")


def finetune_small(
    train: list[NerExample],
    validation: list[NerExample],
    work: Path,
    epochs: float,
    max_seq_len: int,
) -> tuple[Path, dict]:
    """Tokenizer, random-init small BERT and a fine-tune through the library's stage code."""
    from lmforge.config import ModelConfig, TaskTrainConfig
    from lmforge.finetune import run_finetune
    from lmforge.modeling import bert_config
    from lmforge.tokenizer import save_tokenizer, train_tokenizer

    prepared = work / "prepared"
    for split, examples in (("train", train), ("validation", validation)):
        path = prepared / "ner" / f"{split}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        lines = (json.dumps(to_json(e), ensure_ascii=False) for e in examples)
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    init = work / "init"
    init.mkdir(parents=True, exist_ok=True)
    texts = [join_tokens(e.tokens) for e in train]
    tokenizer = train_tokenizer(texts, vocab_size=4000, min_frequency=2, lowercase=False)
    save_tokenizer(tokenizer, init, max_seq_len)
    model = ModelConfig(**SMALL_MODEL, max_seq_len=max_seq_len, dropout=0.0, attention_dropout=0.0)
    bert_config(model, tokenizer.get_vocab_size()).save_pretrained(init)
    cfg = TaskTrainConfig(
        micro_batch_size=32, grad_accum=1, lr=2e-3, init="random", epochs=epochs,
        max_seq_len=max_seq_len,
    )  # fmt: skip
    out = work / "finetuned"
    metrics = run_finetune("ner", cfg, 0, init, prepared, out)
    return out, metrics


def stage_f1_of_onnx(serving_dir: Path, validation: list[NerExample]) -> float:
    """The ONNX model scored as the compress stage scores it (task encode + evaluate; an
    int8 model row by row, unpadded)."""
    import onnxruntime as ort

    from lmforge.tasks.base import run_in_parts, single_rows
    from lmforge.tasks.registry import get_task
    from lmforge.tokenizer import load_tokenizer

    manifest = json.loads((serving_dir / "manifest.json").read_text(encoding="utf-8"))
    task = get_task("ner")
    tokenizer = load_tokenizer(serving_dir)
    labels = manifest["labels"]
    options = {"max_seq_len": manifest["max_seq_len"]}
    features = task.encode(tokenizer, validation, labels, **options)
    session = ort.InferenceSession(str(serving_dir / manifest["model_file"]))
    names = [i.name for i in session.get_inputs()]

    def run(inputs: dict) -> dict:
        return {"logits": session.run(["logits"], {n: inputs[n] for n in names})[0]}

    rows = len(features)
    batches = [np.arange(i, min(i + 64, rows)) for i in range(0, rows, 64)]
    parts = single_rows(rows) if manifest.get("quantized") else batches
    logits = run_in_parts(run, features.inputs, parts, {"logits"})["logits"]
    return task.evaluate({"logits": logits}, features, validation, labels, **options)["f1"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--validation", type=Path, required=True, help="CoNLL file scored")
    parser.add_argument("--train", type=Path, help="CoNLL file to fine-tune a small model on")
    parser.add_argument("--serving", type=Path, help="a serving folder (instead of --train)")
    parser.add_argument("--sentences", type=int, default=0, help="first N train sentences (0: all)")
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--max-seq-len", type=int, default=64)
    args = parser.parse_args()
    if (args.train is None) == (args.serving is None):
        parser.error("give --train or --serving")
    validation = read_conll(args.validation)
    began = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        if args.train is not None:
            train = read_conll(args.train)[: args.sentences or None]
            finetuned, metrics = finetune_small(
                train, validation, Path(tmp), args.epochs, args.max_seq_len
            )
            serving = Path(tmp) / "serving" / "ner"
            export_serving(finetuned, serving)
            stage = {"stage_f1": metrics["f1"], "stage": "finetune (PyTorch)"}
        else:
            serving = args.serving.resolve()
            stage = {"stage_f1": stage_f1_of_onnx(serving, validation), "stage": "ONNX, evaluate"}
        texts, gold = zip(*(gold_spans(e.tokens, e.tags) for e in validation), strict=True)
        served = span_f1(gold, served_spans(serving, texts))
    result = {
        **stage,
        "served_f1": round(served["f1"], 5),
        "served_precision": round(served["precision"], 5),
        "served_recall": round(served["recall"], 5),
        "difference": round(served["f1"] - stage["stage_f1"], 5),
        "validation_sentences": len(validation),
        "seconds": round(time.perf_counter() - began, 1),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
