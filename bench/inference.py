"""Inference runtimes side by side: PyTorch fp32, PyTorch dynamic int8, ONNX fp32, ONNX
graph-optimized fp32 and ONNX int8, per task, at batch 1 and 8, at two model sizes.

ONNX int8 is built twice, from the two fusion profiles the compress stage chooses
between by timing (lmforge.compress.optimize): "full" (Attention, SkipLayerNormalization,
EmbedLayerNormalization, BiasGelu) and "lean" (LayerNormalization and BiasGelu only).

    python bench/inference.py                        # default and large (6 x 512) sizes
    python bench/inference.py --sizes large --tasks ner --threads 1

Fair by construction: every runtime gets the same inputs and the same intra-op thread
count (default 1: on a machine shared with other work, multi-threaded PyTorch slows
down far more than onnxruntime, which would flatter ONNX; see --threads), PyTorch runs under torch.inference_mode(), each runtime is warmed up, and runtimes
are timed round-robin (one call each per round) so background load hits all alike.
Reports median and p95 latency, file size, and the largest output difference from
PyTorch fp32. Prints a table, writes JSON (default bench/results/inference.json), and
the last line printed is that JSON.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import platform
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
import transformers
from transformers import BertConfig

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from lmforge.compress.export import export_onnx  # noqa: E402
from lmforge.compress.measure import latency  # noqa: E402
from lmforge.compress.optimize import optimize_graph  # noqa: E402
from lmforge.compress.quantize import QuantOptions, quantize  # noqa: E402
from lmforge.compress.runtime import ort_runner, ort_session, torch_runner  # noqa: E402
from lmforge.config import load_params  # noqa: E402
from lmforge.tasks.registry import get_task  # noqa: E402

RUNTIMES = ("torch_fp32", "torch_int8", "onnx_fp32", "onnx_opt_fp32", "onnx_int8", "onnx_int8_lean")
NUM_LABELS = {"classification": 2, "ner": 9, "qa": 2}


def model_sizes(params) -> dict[str, dict]:
    m = params.model
    default = dict(
        layers=m.num_layers, hidden=m.hidden_size, heads=m.num_heads, ffn=m.intermediate_size
    )
    return {"default": default, "large": dict(layers=6, hidden=512, heads=8, ffn=2048)}


def build_model(task_name: str, size: dict, vocab: int, max_len: int, attn: str):
    config = BertConfig(
        vocab_size=vocab,
        hidden_size=size["hidden"],
        num_hidden_layers=size["layers"],
        num_attention_heads=size["heads"],
        intermediate_size=size["ffn"],
        max_position_embeddings=max(512, max_len),
        num_labels=NUM_LABELS[task_name],
    )
    torch.manual_seed(0)  # each model gets its own config: attn_implementation is kept there
    model_class = getattr(transformers, get_task(task_name).auto_model)
    model = model_class.from_config(config, attn_implementation=attn).eval()
    with torch.no_grad():
        # Fresh models have every bias 0 and every LayerNorm weight 1, which the exporter
        # stores once for all layers; trained models never look like that, so jitter them.
        for param in model.parameters():
            if param.dim() == 1:
                param.add_(0.02 * torch.randn_like(param))
    return model


def build_onnx(task_name: str, eager, sample, opset: int, work: Path) -> dict[str, Path]:
    """The ONNX variants of one model: plain export, fused (full), and int8 of each profile."""
    output_names = get_task(task_name).output_names
    paths = {name: work / f"{task_name}.{name}.onnx" for name in RUNTIMES[2:]}
    export_onnx(eager, paths["onnx_fp32"], output_names, sample, opset)
    heads, hidden = eager.config.num_attention_heads, eager.config.hidden_size
    fused = optimize_graph(paths["onnx_fp32"], paths["onnx_opt_fp32"], heads, hidden, "full")
    if "Attention" not in fused:
        logging.warning("%s: attention was not fused: %s", task_name, fused)
    quantize(paths["onnx_opt_fp32"], paths["onnx_int8"], QuantOptions())
    lean = work / f"{task_name}.lean.onnx"
    optimize_graph(paths["onnx_fp32"], lean, heads, hidden, "lean")
    quantize(lean, paths["onnx_int8_lean"], QuantOptions())
    return paths


def torch_size_mb(model: torch.nn.Module) -> float:
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.tell() / 1e6


def random_inputs(batch: int, seq: int, vocab: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(batch * 1000 + seq)
    return {
        "input_ids": rng.integers(5, vocab, (batch, seq), dtype=np.int64),
        "attention_mask": np.ones((batch, seq), np.int64),
        "token_type_ids": np.zeros((batch, seq), np.int64),
    }


def bench_case(task_name, size_name, size, args, params, work) -> list[dict]:
    task = get_task(task_name)
    seq = getattr(params.finetune, task_name).max_seq_len if args.seq is None else args.seq
    vocab = params.tokenize.vocab_size
    model = build_model(task_name, size, vocab, seq, args.torch_attn)
    eager = build_model(task_name, size, vocab, seq, "eager")
    eager.load_state_dict(model.state_dict())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization deprecation notices
        qmodel = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
    paths = build_onnx(task_name, eager, random_inputs(2, seq, vocab), args.opset, work)
    runners = {
        "torch_fp32": torch_runner(model, task.output_names),
        "torch_int8": torch_runner(qmodel, task.output_names),
    }
    for name, path in paths.items():
        runners[name] = ort_runner(ort_session(path, args.threads))
    sizes = {"torch_fp32": torch_size_mb(model), "torch_int8": torch_size_mb(qmodel)}
    sizes.update({name: path.stat().st_size / 1e6 for name, path in paths.items()})
    rows = []
    for batch in args.batches:
        inputs = random_inputs(batch, seq, vocab)
        reference = runners["torch_fp32"](inputs)
        diffs = {
            name: max(float(np.abs(run(inputs)[k] - reference[k]).max()) for k in reference)
            for name, run in runners.items()
        }
        runs = args.runs if batch == 1 else max(5, args.runs // 2)
        calls = {name: (lambda r=run, x=inputs: r(x)) for name, run in runners.items()}
        times = latency(calls, runs, warmup=args.warmup)
        base = times["torch_fp32"]["p50"]
        for name in RUNTIMES:
            rows.append({
                "task": task_name, "size": size_name, "layers": size["layers"], "hidden": size["hidden"],
                "batch": batch, "seq": seq, "runtime": name,
                "p50_ms": round(times[name]["p50"], 3), "p95_ms": round(times[name]["p95"], 3),
                "min_ms": round(times[name]["min"], 3),
                "speedup_vs_torch_fp32": round(base / times[name]["p50"], 2),
                "speedup_min_vs_torch_fp32": round(times["torch_fp32"]["min"] / times[name]["min"], 2),
                "size_mb": round(sizes[name], 2),
                "size_ratio_vs_torch_fp32": round(sizes["torch_fp32"] / sizes[name], 2),
                "max_abs_diff_vs_torch_fp32": float(f"{diffs[name]:.3g}"),
                "runs": runs,
            })  # fmt: skip
        print_rows(rows[-len(RUNTIMES) :])
    return rows


def print_rows(rows: list[dict]) -> None:
    r0 = rows[0]
    title = f"{r0['task']} {r0['size']} ({r0['layers']}x{r0['hidden']})"
    print(f"\n{title} batch {r0['batch']} seq {r0['seq']}")
    header = ("runtime", "p50 ms", "p95 ms", "min ms", "speedup", "size MB", "smaller", "max diff")
    print("  " + f"{header[0]:<15}" + "".join(f"{h:>10}" for h in header[1:]))
    for r in rows:
        print(
            f"  {r['runtime']:<15}{r['p50_ms']:>10.2f}{r['p95_ms']:>10.2f}{r['min_ms']:>10.2f}"
            f"{r['speedup_vs_torch_fp32']:>9.2f}x{r['size_mb']:>10.2f}"
            f"{r['size_ratio_vs_torch_fp32']:>9.2f}x{r['max_abs_diff_vs_torch_fp32']:>10.2g}"
        )


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tasks", nargs="+", default=["classification", "ner", "qa"])
    parser.add_argument(
        "--sizes", nargs="+", default=["default", "large"], choices=["default", "large"]
    )
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    parser.add_argument(
        "--seq", type=int, default=None, help="default: finetune.<task>.max_seq_len"
    )
    parser.add_argument("--runs", type=int, default=30, help="timed rounds at batch 1 (half at 8)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads, every runtime")
    parser.add_argument("--torch-attn", default="sdpa", choices=["sdpa", "eager"],
                        help="PyTorch attention kernel (sdpa: the transformers default)")  # fmt: skip
    parser.add_argument("--opset", type=int, default=None, help="default: compress.opset")
    parser.add_argument("--params", type=Path, default=REPO / "params.yaml")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "inference.json")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.WARNING)
    params = load_params(args.params)
    args.opset = args.opset or params.compress.opset
    torch.set_num_threads(args.threads)
    sizes = model_sizes(params)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size_name in args.sizes:
            for task_name in args.tasks:
                rows += bench_case(task_name, size_name, sizes[size_name], args, params, Path(tmp))
    result = {
        "setup": {
            "threads": args.threads, "torch_attention": args.torch_attn, "opset": args.opset,
            "sizes": {name: sizes[name] for name in args.sizes},
            "int8": QuantOptions().label, "cpu": cpu_name(),
            "torch": torch.__version__, "onnxruntime": ort.__version__,
            "transformers": transformers.__version__,
        },
        "rows": rows,
    }  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
