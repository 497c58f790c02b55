"""The compress stage for one task: fine-tuned folder in, self-contained serving folder out.

export (parity-checked) -> graph optimization (parity-checked) -> int8 chosen by measured
accuracy -> metric, latency and size of PyTorch fp32, ONNX fp32 and ONNX int8. Latencies
are reported only: no file written here depends on a timing.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import transformers

from lmforge.artifacts import atomic_dir, read_json, write_json
from lmforge.compress.choose import Evaluation, choose_quantization
from lmforge.compress.export import check_parity, export_onnx, max_abs_diff, sequence_outputs
from lmforge.compress.generation import TASK as CAUSAL_TASK
from lmforge.compress.generation import compress_generation
from lmforge.compress.manifest import provenance
from lmforge.compress.measure import latency, size_mb, timing_inputs
from lmforge.compress.optimize import optimize_graph
from lmforge.compress.quantize import QuantOptions
from lmforge.compress.runtime import (
    ort_runner,
    ort_session,
    run_batched,
    torch_runner,
    torch_threads,
)
from lmforge.config import CompressConfig
from lmforge.data.prepare import read_prepared
from lmforge.errors import LmforgeError
from lmforge.tasks.base import MODEL_INPUTS, Features, Task, pad_id, run_in_parts, single_rows
from lmforge.tasks.registry import get_task
from lmforge.tokenizer import load_tokenizer

log = logging.getLogger("lmforge.compress")

EVAL_BATCH_SIZE = 32
TOKENIZER_FILES = ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"]
TASK_OPTIONS = ("max_seq_len", "doc_stride", "max_answer_len")


@dataclass
class Validation:
    """The validation set of one task, encoded, with PyTorch's outputs on it."""

    task: Task
    examples: list
    features: Features
    labels: list[str]
    options: dict  # max_seq_len (+ doc_stride, max_answer_len for QA)
    reference: dict[str, np.ndarray]  # PyTorch fp32 outputs
    threads: int
    per_token: set[str] = field(default_factory=set)  # outputs with a sequence axis (set by export)

    def score(self, outputs: dict[str, np.ndarray]) -> dict[str, float]:
        return self.task.evaluate(
            outputs, self.features, self.examples, self.labels, **self.options
        )

    def run_onnx(self, path: Path, int8: bool = False) -> dict[str, np.ndarray]:
        """The ONNX model's outputs on the validation set; an int8 one's row by row,
        unpadded, as the service runs it (lmforge.tasks.base.single_rows says why)."""
        run = ort_runner(ort_session(path, self.threads))
        if int8:
            rows = len(self.features)
            return run_in_parts(run, self.features.inputs, single_rows(rows), self.per_token)
        return run_batched(run, self.features.inputs, EVAL_BATCH_SIZE)

    def diff(self, outputs: dict[str, np.ndarray], against: dict[str, np.ndarray]) -> float:
        mask = self.features.inputs["attention_mask"]
        return max_abs_diff(against, outputs, mask, self.per_token)

    def evaluate(self, path: Path, fp32: dict[str, np.ndarray]) -> Evaluation:
        """Metric of the ONNX model at `path`, run row by row as an int8 model is (the
        chooser also scores the fp32 graph this way), and its mean output error against
        `fp32`."""
        outputs = self.run_onnx(path, int8=True)
        mask = self.features.inputs["attention_mask"].astype(bool)
        errors = []
        for name, want in fp32.items():
            err = np.abs(outputs[name] - want)
            errors.append(err[mask] if name in self.per_token else err)
        error = float(np.mean(np.concatenate([e.ravel() for e in errors])))
        return Evaluation(self.score(outputs)[self.task.metric_name], error)


@dataclass
class Timing:
    """What every latency measurement uses: the same inputs and threads for all runtimes."""

    inputs: dict[int, dict[str, np.ndarray]]  # batch size -> rows padded to max_seq_len
    threads: int
    runs: int


def compress_task(
    task_name: str, finetuned_dir: Path, prepared_dir: Path, out_dir: Path, cfg: CompressConfig
) -> dict:
    """Build `out_dir` (atomically) for one task and return its compress metrics."""
    if task_name == CAUSAL_TASK:  # a decoder: exported with its cache, scored by perplexity
        return compress_generation(finetuned_dir, prepared_dir, out_dir, cfg)
    finetuned_dir = Path(finetuned_dir)
    val, model, pad = load_validation(get_task(task_name), finetuned_dir, prepared_dir)
    timing = Timing(
        {b: timing_inputs(val.features.inputs, b, val.options["max_seq_len"], pad) for b in (1, 8)},
        cfg.latency_threads or torch.get_num_threads(),
        cfg.latency_runs,
    )
    with atomic_dir(out_dir) as staging, tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        exported, export_diff = export_checked(val, finetuned_dir, timing.inputs[8], cfg, work)
        files = {"torch": finetuned_dir / "model.safetensors", "onnx_fp32": staging / "model.onnx"}
        parity, graph = optimize_checked(val, exported, files["onnx_fp32"], model.config, cfg)
        quantization = None
        if cfg.quantize:
            files["onnx_int8"] = staging / "model.int8.onnx"
            quantization = quantize_checked(val, files["onnx_fp32"], files["onnx_int8"], cfg, work)
        results = measure(val, model, files, timing)
        write_serving_files(finetuned_dir, staging, val, cfg)
    return {
        "metric_name": val.task.metric_name,
        "max_abs_diff": parity["max_abs_diff"],
        "torch": results.pop("torch"),
        "onnx_fp32": results.pop("onnx_fp32"),
        "onnx_int8": results.pop("onnx_int8", None),  # None when cfg.quantize is false
        **results,
        "parity": {**parity, "export_max_abs_diff": export_diff},
        "graph": graph,
        "quantization": quantization,
        "validation_examples": len(val.examples),
    }


def load_validation(task: Task, finetuned_dir: Path, prepared_dir: Path):
    """The encoded validation set with PyTorch's outputs, the PyTorch model, the pad id."""
    for name in ("task.json", "model.safetensors", "tokenizer.json"):
        if not (finetuned_dir / name).is_file():
            raise LmforgeError(f"{finetuned_dir / name} not found; run the finetune stage first")
    info = read_json(finetuned_dir / "task.json")
    labels, options = list(info["labels"]), {k: info[k] for k in TASK_OPTIONS if k in info}
    tokenizer = load_tokenizer(finetuned_dir)
    examples = read_prepared(prepared_dir, task.name, "validation")
    features = task.encode(tokenizer, examples, labels, **options)
    log.info("%s: %d validation examples -> %d features", task.name, len(examples), len(features))
    auto_class = getattr(transformers, task.auto_model)
    model = auto_class.from_pretrained(str(finetuned_dir)).eval()  # as a PyTorch user runs it
    runner = torch_runner(model, task.output_names)
    reference = run_batched(runner, features.inputs, EVAL_BATCH_SIZE)
    threads = torch.get_num_threads()
    val = Validation(task, examples, features, labels, options, reference, threads)
    return val, model, pad_id(tokenizer)


def export_checked(
    val: Validation, finetuned_dir: Path, sample: dict, cfg: CompressConfig, work: Path
) -> tuple[Path, float]:
    """Export the model with eager attention and check the raw graph against PyTorch."""
    auto_class = getattr(transformers, val.task.auto_model)
    # Eager attention traces to plain MatMul/Softmax, which the optimizer fuses into Attention.
    eager = auto_class.from_pretrained(str(finetuned_dir), attn_implementation="eager").eval()
    path = work / "model.export.onnx"
    export_onnx(eager, path, val.task.output_names, sample, cfg.opset)
    val.per_token = sequence_outputs(path)
    diff = val.diff(val.run_onnx(path), val.reference)
    log.info("%s: exported ONNX vs PyTorch: max abs diff %.3g", val.task.name, diff)
    check_parity(val.task.name, "the exported ONNX model", diff, cfg.parity_tolerance)
    return path, diff


def optimize_checked(
    val: Validation, exported: Path, dst: Path, config, cfg: CompressConfig
) -> tuple[dict, dict]:
    """Write model.onnx (fused with cfg.graph_profile when cfg.optimize_graph), checked."""
    graph: dict = {"profile": "none", "fused_operators": {}}
    if cfg.optimize_graph:
        heads, hidden = config.num_attention_heads, config.hidden_size
        fused = optimize_graph(exported, dst, heads, hidden, cfg.graph_profile)
        graph = {"profile": cfg.graph_profile, "fused_operators": fused}
    else:
        shutil.copyfile(exported, dst)
    diff = val.diff(val.run_onnx(dst), val.reference)
    log.info("%s: model.onnx vs PyTorch: max abs diff %.3g", val.task.name, diff)
    check_parity(val.task.name, "model.onnx", diff, cfg.parity_tolerance)
    return {"max_abs_diff": diff, "tolerance": cfg.parity_tolerance}, graph


def quantize_checked(
    val: Validation, fp32_path: Path, dst: Path, cfg: CompressConfig, work: Path
) -> dict:
    """Write model.int8.onnx in the format (and with the fp32 nodes) chosen by measurement."""
    fp32_outputs = val.run_onnx(fp32_path)
    report = choose_quantization(
        fp32_path,
        dst,
        lambda path: val.evaluate(path, fp32_outputs),
        cfg.max_metric_drop,
        QuantOptions("int8", cfg.per_channel, cfg.reduce_range),
        cfg.quant_search,
        work,
    )
    log.info("%s: int8 format %s", val.task.name, report["chosen"])
    if not report["within_budget"]:
        log.warning(
            "%s: int8 %s is %.4f below fp32 even with nodes kept in fp32 (budget %g)",
            val.task.name, val.task.metric_name,
            report["reference_metric"] - report["chosen"]["metric"], cfg.max_metric_drop,
        )  # fmt: skip
    return report


def measure(
    val: Validation,
    model: torch.nn.Module,
    files: dict[str, Path],
    timing: Timing,
) -> dict:
    """Metric (full validation set), latency p50/p95 at batch 1 and 8, and size per runtime."""
    results = {}
    for name, path in files.items():
        outputs = val.reference if name == "torch" else val.run_onnx(path, name == "onnx_int8")
        scores = val.score(outputs)
        metrics = {k: round(v, 5) for k, v in scores.items()}
        results[name] = {
            "metric": metrics[val.task.metric_name],
            "metrics": metrics,
            "size_mb": round(size_mb(path), 3),
        }
    runners = {"torch": torch_runner(model, val.task.output_names)}
    for name, path in files.items():
        if name != "torch":
            runners[name] = ort_runner(ort_session(path, timing.threads))
    with torch_threads(timing.threads):
        for batch, inputs in timing.inputs.items():
            calls = {name: (lambda r=run, x=inputs: r(x)) for name, run in runners.items()}
            for name, t in latency(calls, timing.runs).items():
                key = "" if batch == 1 else f"_b{batch}"
                results[name][f"latency{key}_ms"] = round(t["p50"], 3)
                results[name][f"latency{key}_p95_ms"] = round(t["p95"], 3)
    for name, entry in results.items():
        log.info(
            "%s: %s %s", val.task.name, name, {k: v for k, v in entry.items() if k != "metrics"}
        )
    if "onnx_int8" in results:
        torch_fp32, int8 = results["torch"], results["onnx_int8"]
        results["speedup_int8_vs_torch"] = round(torch_fp32["latency_ms"] / int8["latency_ms"], 2)
        results["size_ratio_torch_vs_int8"] = round(torch_fp32["size_mb"] / int8["size_mb"], 2)
    results["latency_setup"] = {
        "seq_len": val.options["max_seq_len"],
        "runs": timing.runs,
        "threads": timing.threads,
    }
    return results


def write_serving_files(
    finetuned_dir: Path, staging: Path, val: Validation, cfg: CompressConfig
) -> None:
    """Tokenizer, model config (label map) and manifest beside the ONNX models."""
    for name in [*TOKENIZER_FILES, "config.json"]:
        if (finetuned_dir / name).is_file():
            shutil.copyfile(finetuned_dir / name, staging / name)
    model_file = "model.int8.onnx" if cfg.quantize else "model.onnx"
    manifest = {
        "task": val.task.name,
        "labels": val.labels,
        **val.options,
        "model_file": model_file,
        "fp32_model_file": "model.onnx",
        "quantized": cfg.quantize,
        "inputs": list(MODEL_INPUTS),
        "outputs": list(val.task.output_names),
        **provenance(staging, model_file, finetuned_dir / "model.safetensors", cfg.opset),
    }
    write_json(staging / "manifest.json", manifest)
