"""The compress stage for the causal LM: fine-tuned folder in, serving folder out.

export with the key/value cache -> LayerNorm/GELU fusion (parity-checked over a multi-step
greedy decode) -> int8
chosen by measured perplexity -> perplexity, per-token latency (batch 1, with the cache)
and size of PyTorch fp32, ONNX fp32 and ONNX int8. As for the encoder tasks, no file
written here depends on a timing.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
import transformers
from tokenizers import Tokenizer

from lmforge.artifacts import atomic_dir, write_json
from lmforge.compress.choose import Evaluation, choose_quantization
from lmforge.compress.decoder_export import export_decoder, torch_greedy
from lmforge.compress.export import check_parity
from lmforge.compress.manifest import provenance
from lmforge.compress.measure import latency, size_mb
from lmforge.compress.optimize import optimize_graph
from lmforge.compress.quantize import QuantOptions
from lmforge.compress.runtime import ort_session, torch_threads
from lmforge.config import CompressConfig
from lmforge.data.prepare import read_prepared
from lmforge.decoder import Cache, Decoder, DecoderShape
from lmforge.errors import LmforgeError
from lmforge.tasks.base import IGNORE_INDEX
from lmforge.tasks.generation import completion_nll, encode_examples

log = logging.getLogger("lmforge.compress")

TASK = "generation"
TOKENIZER_FILES = ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"]
EVAL_BATCH_SIZE = 16
PARITY_PROMPTS = 4  # validation prompts decoded greedily by PyTorch and ONNX, step by step
PARITY_STEPS = 16
LATENCY_CONTEXT = 64  # cached tokens before the timed step


# --- the validation set -----------------------------------------------------------------


class Validation:
    """The validation examples encoded as fine-tuning encodes them (lmforge.tasks.generation:
    context, completion, `<|endoftext|>`; only the completion and that end scored), in
    right-padded batches, scored by any logits function."""

    def __init__(self, tokenizer: Tokenizer, examples: list, max_len: int) -> None:
        self.batches = []  # (input ids, attention mask, labels)
        self.prompts = []  # each example's context: what the parity decode starts from
        for first in range(0, len(examples), EVAL_BATCH_SIZE):
            part = encode_examples(tokenizer, examples[first : first + EVAL_BATCH_SIZE], max_len)
            ids, labels = part.inputs["input_ids"], part.targets["labels"]
            self.batches.append((ids, part.inputs["attention_mask"], labels))
            for row_ids, row_labels in zip(ids, labels, strict=True):
                self.prompts.append(row_ids[: int(np.argmax(row_labels != IGNORE_INDEX))].tolist())

    def logits(self, run) -> list[np.ndarray]:
        return [run(ids, mask) for ids, mask, _ in self.batches]

    def mean_nll(self, logits: list[np.ndarray]) -> float:
        nll = tokens = 0.0
        for out, (_, _, labels) in zip(logits, self.batches, strict=True):
            row_nll, row_tokens = completion_nll(out, labels)
            nll, tokens = nll + row_nll.sum(), tokens + row_tokens.sum()
        return float(nll / max(tokens, 1))


def torch_scorer(model: torch.nn.Module):
    def run(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            out = model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask))
        return out.logits.float().numpy()

    return run


def onnx_decoder(path: Path, shape: DecoderShape, threads: int) -> Decoder:
    return Decoder(ort_session(path, threads), shape)


# --- the stage ----------------------------------------------------------------------------


def compress_generation(
    finetuned_dir: Path, prepared_dir: Path, out_dir: Path, cfg: CompressConfig
) -> dict:
    """Build `out_dir` (atomically) for the causal LM and return its compress metrics."""
    finetuned_dir = Path(finetuned_dir)
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        if not (finetuned_dir / name).is_file():
            raise LmforgeError(f"{finetuned_dir / name} not found; run the finetune stage first")
    tokenizer = Tokenizer.from_file(str(finetuned_dir / "tokenizer.json"))
    # Eager attention traces to plain MatMul/Softmax with the padding mask as an input.
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(finetuned_dir), attn_implementation="eager"
    ).eval()
    threads = cfg.latency_threads or torch.get_num_threads()
    with atomic_dir(out_dir) as staging, tempfile.TemporaryDirectory() as tmp:
        files = {"torch": finetuned_dir / "model.safetensors", "onnx_fp32": staging / "model.onnx"}
        exported = Path(tmp) / "model.export.onnx"
        shape = export_decoder(model, exported, cfg.opset)
        graph = fuse(exported, files["onnx_fp32"], model.config, cfg)
        examples = read_prepared(Path(prepared_dir), TASK, "validation")
        val = Validation(tokenizer, examples, encode_length(finetuned_dir, shape))
        log.info("%s: %d validation sequences", TASK, sum(len(b[0]) for b in val.batches))
        parity = decode_parity(model, files["onnx_fp32"], shape, val.prompts, cfg, threads)
        quantization = None
        if cfg.quantize:
            files["onnx_int8"] = staging / "model.int8.onnx"
            quantization = quantize_checked(val, files, shape, cfg, threads, Path(tmp))
        results = measure(val, model, files, shape, cfg, threads)
        write_serving_files(finetuned_dir, staging, shape, tokenizer, cfg)
    return {
        "metric_name": "perplexity",
        "max_abs_diff": parity["max_abs_diff"],
        "torch": results.pop("torch"),
        "onnx_fp32": results.pop("onnx_fp32"),
        "onnx_int8": results.pop("onnx_int8", None),  # None when cfg.quantize is false
        **results,
        "parity": parity,
        "graph": graph,
        "quantization": quantization,
        "validation_examples": len(val.prompts),
    }


def encode_length(finetuned_dir: Path, shape: DecoderShape) -> int:
    """The sequence length fine-tuning evaluated at (its task.json), within the positions."""
    task = json.loads((finetuned_dir / "task.json").read_text(encoding="utf-8"))
    return min(int(task.get("max_seq_len", shape.max_positions)), shape.max_positions)


def fuse(exported: Path, dst: Path, config, cfg: CompressConfig) -> dict:
    """model.onnx: the exported graph with LayerNorm/GELU fusion (cfg.optimize_graph)."""
    if not cfg.optimize_graph:
        shutil.copyfile(exported, dst)
        return {"profile": "none", "fused_operators": {}}
    fused = optimize_graph(exported, dst, config.n_head, config.n_embd, "decoder", "gpt2")
    return {"profile": "decoder", "fused_operators": fused}


def decode_parity(
    model: torch.nn.Module,
    path: Path,
    shape: DecoderShape,
    prompts: list[list[int]],
    cfg: CompressConfig,
    threads: int,
) -> dict:
    """Greedy decode of the first validation prompts by PyTorch and by the graph, each with
    its own cache: the largest logit difference over every step, and whether the tokens
    agree. The graph is fed PyTorch's tokens, so one near tie cannot derail the comparison."""
    decoder = onnx_decoder(path, shape, threads)
    worst, agree = 0.0, True
    for prompt in prompts[:PARITY_PROMPTS]:
        steps = min(PARITY_STEPS, shape.max_positions - len(prompt))
        want_ids, want = torch_greedy(model, prompt, steps)
        logits, cache = decoder.forward(np.array([prompt]), Cache.empty(shape, 1))
        for step, token in enumerate(want_ids):
            got = logits[0, -1]
            worst = max(worst, float(np.abs(got - want[step]).max()))
            agree = agree and int(np.argmax(got)) == token
            logits, cache = decoder.forward(np.array([[token]]), cache)
    log.info("%s: ONNX vs PyTorch over a cached decode: max abs diff %.3g", TASK, worst)
    check_parity(TASK, "the exported ONNX decoder", worst, cfg.parity_tolerance)
    return {
        "max_abs_diff": worst,
        "tolerance": cfg.parity_tolerance,
        "greedy_tokens_agree": agree,
        "prompts": min(PARITY_PROMPTS, len(prompts)),
        "steps": PARITY_STEPS,
    }


def quantize_checked(
    val: Validation, files: dict, shape: DecoderShape, cfg: CompressConfig, threads, work: Path
) -> dict:
    """Write model.int8.onnx in the format (and with the fp32 nodes) chosen by perplexity.

    choose_quantization keeps a metric that must not drop; here it is -log(perplexity), so
    that `int8 perplexity <= (1 + max_perplexity_increase) * fp32 perplexity` is the budget.
    """
    fp32 = val.logits(onnx_decoder(files["onnx_fp32"], shape, threads).score)

    def evaluate(path: Path) -> Evaluation:
        logits = val.logits(onnx_decoder(path, shape, threads).score)
        error = np.mean([np.abs(a - b).mean() for a, b in zip(logits, fp32, strict=True)])
        return Evaluation(-val.mean_nll(logits), float(error))

    report = choose_quantization(
        files["onnx_fp32"],
        files["onnx_int8"],
        evaluate,
        math.log1p(cfg.max_perplexity_increase),
        QuantOptions("int8", cfg.per_channel, cfg.reduce_range),
        cfg.quant_search,
        work,
    )
    report["selection_metric"] = "-log(perplexity)"
    log.info("%s: int8 format %s", TASK, report["chosen"])
    if not report["within_budget"]:
        log.warning(
            "%s: int8 perplexity is over %g x fp32 even with nodes kept in fp32",
            TASK, 1 + cfg.max_perplexity_increase,
        )  # fmt: skip
    return report


def measure(
    val: Validation,
    model: torch.nn.Module,
    files: dict[str, Path],
    shape: DecoderShape,
    cfg: CompressConfig,
    threads: int,
) -> dict:
    """Perplexity (validation set), latency of one cached decode step at batch 1 and size.

    Every runtime is timed on the same step: one new token after LATENCY_CONTEXT cached
    tokens of the first validation sequence (repeated if it is shorter).
    """
    decoders = {
        name: onnx_decoder(p, shape, threads) for name, p in files.items() if name != "torch"
    }
    results = {}
    for name, path in files.items():
        run = torch_scorer(model) if name == "torch" else decoders[name].score
        ppl = math.exp(val.mean_nll(val.logits(run)))
        results[name] = {"metric": round(ppl, 4), "size_mb": round(size_mb(path), 3)}
    context = min(LATENCY_CONTEXT, shape.max_positions - 1)
    first = val.batches[0][0][0]
    ids = np.resize(first[: max(int(val.batches[0][1][0].sum()), 1)], context + 1)
    prompt, token = ids[None, :context], ids[None, context:]
    calls = {"torch": torch_step(model, prompt, token)}
    for name, decoder in decoders.items():
        cache = decoder.forward(prompt, Cache.empty(shape, 1))[1]
        calls[name] = lambda d=decoder, c=cache: d.forward(token, c)
    with torch_threads(threads):
        for name, t in latency(calls, cfg.latency_runs).items():
            results[name]["latency_ms"] = round(t["p50"], 3)
            results[name]["latency_p95_ms"] = round(t["p95"], 3)
    for name, entry in results.items():
        log.info("%s: %s %s", TASK, name, entry)
    if "onnx_int8" in results:
        torch_fp32, int8 = results["torch"], results["onnx_int8"]
        results["speedup_int8_vs_torch"] = round(torch_fp32["latency_ms"] / int8["latency_ms"], 2)
        results["size_ratio_torch_vs_int8"] = round(torch_fp32["size_mb"] / int8["size_mb"], 2)
        results["int8_ppl_ratio"] = round(int8["metric"] / results["onnx_fp32"]["metric"], 4)
    results["latency_setup"] = {
        "context_tokens": context,
        "runs": cfg.latency_runs,
        "threads": threads,
    }
    return results


def torch_step(model: torch.nn.Module, prompt: np.ndarray, token: np.ndarray):
    """One cached decode step in PyTorch, as `model.generate` takes it."""
    from transformers import DynamicCache

    with torch.inference_mode():
        cache = model(input_ids=torch.from_numpy(prompt), use_cache=True).cache
    pairs = [(layer.keys, layer.values) for layer in cache.layers]
    new = torch.from_numpy(token)

    def call():
        with torch.inference_mode():  # a fresh cache object each call: update() grows it
            return model(input_ids=new, cache=DynamicCache(pairs), use_cache=True).logits

    return call


def write_serving_files(
    finetuned_dir: Path, staging: Path, shape: DecoderShape, tokenizer: Tokenizer, cfg
) -> None:
    """Tokenizer, model config and the manifest the service reads beside the ONNX models."""
    for name in [*TOKENIZER_FILES, "config.json"]:
        if (finetuned_dir / name).is_file():
            shutil.copyfile(finetuned_dir / name, staging / name)
    model_file = "model.int8.onnx" if cfg.quantize else "model.onnx"
    manifest = {
        "task": TASK,
        "labels": [],
        "max_seq_len": shape.max_positions,
        **{name: getattr(shape, name) for name in DecoderShape.__dataclass_fields__},
        "vocab_size": tokenizer.get_vocab_size(),
        "model_file": model_file,
        "fp32_model_file": "model.onnx",
        "quantized": cfg.quantize,
        "inputs": shape.input_names(),
        "outputs": shape.output_names(),
        **provenance(staging, model_file, finetuned_dir / "model.safetensors", cfg.opset),
    }
    write_json(staging / "manifest.json", manifest)
