"""Load test: the lmforge service against two per-request endpoints, at two model sizes.

Servers, each in its own process, all on this machine:
  lmforge  `uvicorn serve.app:app` as `make serve` starts it (logs, metrics, limits, auth).
  ort      the endpoint a user writes from the onnxruntime docs: the same int8 model and
           tokenizer, a plain `def` FastAPI handler that encodes and calls `session.run`
           once per request (default session options), no batching, no logs.
  torch    the fine-tuned PyTorch model once per request (transformers), no batching.

Sizes: `default` is the serving folder of the last run; `6x384` is a random-weight
6-layer x 384 BERT (12 heads, the shape of all-MiniLM-L6-v2) with the default run's
tokenizer and labels, exported, fused and quantized as the compress stage does (built
once under --work). Per task, every server starts at once and they take turns at each
concurrency level, so background load hits all of them alike. The load generator drives
keep-alive connections for a fixed time per level and reports requests/s, p50/p99
latency and errors. Prints a table; writes JSON (default bench/results/serve_load.json).

    python bench/serve_load.py                               # both sizes, every task
    python bench/serve_load.py --sizes default --tasks classification --duration 10
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "src")]

ROUTES = {"classification": "classify", "ner": "ner", "qa": "qa"}
SERVERS = ("lmforge", "ort", "torch")
LARGE = {"layers": 6, "hidden": 384, "heads": 12, "ffn": 1536}


# --- the per-request endpoints ----------------------------------------------------------


def items_of(task: str, body: dict) -> list:
    return [(body["question"], body["context"])] if task == "qa" else body["texts"]


def ort_app(folder: Path, task: str):
    """The plain onnxruntime endpoint: one `session.run` per request in a `def` handler.

    Encoding and postprocessing are lmforge's own (lmforge.tasks through serve.runtime's
    task wrappers), so both endpoints do the same work per item and answer alike. The
    handler runs in FastAPI's thread pool, and a `tokenizers.Tokenizer` may not be
    reconfigured by one thread while another encodes with it: each thread gets a copy.
    """
    import onnxruntime as ort
    from fastapi import FastAPI
    from tokenizers import Tokenizer

    from serve.runtime import MODELS, read_manifest

    manifest = read_manifest(folder / "manifest.json", task)
    session = ort.InferenceSession(
        str(folder / manifest["model_file"]), providers=["CPUExecutionProvider"]
    )
    tokenizer_json = (folder / "tokenizer.json").read_text(encoding="utf-8")
    local = threading.local()

    def model():
        if not hasattr(local, "model"):
            local.model = MODELS[task](manifest, Tokenizer.from_str(tokenizer_json), session)
        return local.model

    app = FastAPI()

    @app.get("/readyz")
    def ready() -> dict:
        return {"status": "ready"}

    @app.post(f"/v1/{ROUTES[task]}")
    def predict(body: dict) -> dict:
        return {"results": model().predict(items_of(task, body))}

    return app


def torch_app(model_dir: Path, task: str, max_seq_len: int, doc_stride: int):
    """A FastAPI endpoint that runs the fine-tuned PyTorch model once per request."""
    import torch
    import transformers
    from fastapi import FastAPI
    from transformers import AutoTokenizer

    from lmforge.tasks.registry import get_task

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    auto = getattr(transformers, get_task(task).auto_model)
    model = auto.from_pretrained(model_dir).eval()
    labels = model.config.id2label
    app = FastAPI()

    @app.get("/readyz")
    def ready() -> dict:
        return {"status": "ready"}

    @app.post(f"/v1/{ROUTES[task]}")
    def predict(body: dict) -> dict:
        if task == "qa":
            return {"results": [answer(body["question"], body["context"])]}
        enc = tokenizer(
            body["texts"],
            return_tensors="pt",
            padding=True,
            truncation=True,
            max_length=max_seq_len,
        )
        with torch.inference_mode():
            probs = model(**enc).logits.softmax(-1)
        score, best = probs.max(-1)
        if task == "classification":
            return {
                "results": [
                    {"label": labels[int(i)], "score": float(s)}
                    for s, i in zip(score, best, strict=True)
                ]
            }
        return {"results": [[labels[int(i)] for i in row] for row in best]}

    def answer(question: str, context: str) -> dict:
        enc = tokenizer(
            question,
            context,
            truncation="only_second",
            max_length=max_seq_len,
            stride=doc_stride,
            return_overflowing_tokens=True,
            return_offsets_mapping=True,
            padding=True,
            return_tensors="pt",
        )
        offsets = enc.pop("offset_mapping")
        enc.pop("overflow_to_sample_mapping", None)
        with torch.inference_mode():
            out = model(**enc)
        best = {"score": -float("inf"), "start": 0, "end": 0}
        for w in range(len(offsets)):
            context_tokens = torch.tensor([s == 1 for s in enc.sequence_ids(w)])
            start_logits = out.start_logits[w].masked_fill(~context_tokens, -1e9)
            end_logits = out.end_logits[w].masked_fill(~context_tokens, -1e9)
            s = int(start_logits.argmax())
            e = s + int(end_logits[s:].argmax())
            score = float(start_logits[s] + end_logits[e])
            if score > best["score"]:
                best = {
                    "score": score,
                    "start": int(offsets[w, s, 0]),
                    "end": int(offsets[w, e, 1]),
                }
        return {"answer": context[best["start"] : best["end"]], **best}

    return app


# --- the 6 x 384 model ------------------------------------------------------------------


def build_large(task: str, serving: Path, finetuned: Path, out: Path) -> tuple[Path, Path]:
    """Random-weight 6x384 serving and fine-tuned folders for `task`, built once under `out`.

    Tokenizer, labels and manifest options come from the default run's folders; the graph
    goes through the compress stage's export, "lean" fusion and U8S8 quantization.
    """
    serve_dir, torch_dir = out / "serving" / task, out / "finetuned" / task
    if (serve_dir / "manifest.json").is_file() and (torch_dir / "config.json").is_file():
        return serve_dir, torch_dir
    import torch
    import transformers
    from transformers import AutoConfig

    from lmforge.compress.export import export_onnx
    from lmforge.compress.optimize import optimize_graph
    from lmforge.compress.quantize import QuantOptions, quantize
    from lmforge.tasks.registry import get_task

    config = AutoConfig.from_pretrained(finetuned / task)
    config.update(
        {
            "num_hidden_layers": LARGE["layers"],
            "hidden_size": LARGE["hidden"],
            "num_attention_heads": LARGE["heads"],
            "intermediate_size": LARGE["ffn"],
        }
    )
    torch.manual_seed(0)
    model = getattr(transformers, get_task(task).auto_model).from_config(config).eval()
    with torch.no_grad():  # fresh biases are 0 and LayerNorm weights 1: unlike trained ones
        for param in model.parameters():
            if param.dim() == 1:
                param.add_(0.02 * torch.randn_like(param))
    manifest = json.loads((serving / task / "manifest.json").read_text(encoding="utf-8"))
    shutil.rmtree(serve_dir, ignore_errors=True)
    shutil.copytree(finetuned / task, torch_dir, dirs_exist_ok=True)
    model.save_pretrained(torch_dir)
    serve_dir.mkdir(parents=True)
    for name in ("tokenizer.json", "config.json"):
        shutil.copyfile(torch_dir / name, serve_dir / name)
    with tempfile.TemporaryDirectory() as tmp:
        raw, lean = Path(tmp) / "raw.onnx", Path(tmp) / "lean.onnx"
        sample = {n: np.ones((2, 16), np.int64) for n in ("input_ids", "attention_mask")}
        sample["token_type_ids"] = np.zeros((2, 16), np.int64)
        export_onnx(model, raw, get_task(task).output_names, sample, 17)
        optimize_graph(raw, lean, LARGE["heads"], LARGE["hidden"], "lean")
        quantize(lean, serve_dir / "model.int8.onnx", QuantOptions())
    manifest |= {"model_file": "model.int8.onnx", "quantized": True, "version": "random-6x384"}
    for stale in ("fp32_model_file", "source_sha256"):
        manifest.pop(stale, None)
    (serve_dir / "manifest.json").write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    return serve_dir, torch_dir


# --- load generation --------------------------------------------------------------------


class Connection:
    """A bare keep-alive HTTP/1.1 connection: an async client's own overhead (httpx's pool
    at 32 connections) would cap the measured throughput before either server does."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: bytes) -> int:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        )
        self.writer.write(head.encode() + body)
        response = await self.reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in response.split(b"\r\n"):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        await self.reader.readexactly(length)
        return int(response[9:12])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


async def drive(
    url: str, payloads: list[dict], concurrency: int, duration: float, warmup: float
) -> dict:
    """`concurrency` clients post back to back; only requests started after warmup count."""
    target = httpx.URL(url)
    bodies = [json.dumps(p).encode() for p in payloads]
    start = time.perf_counter()
    measure_from, stop_at = start + warmup, start + warmup + duration
    latencies: list[float] = []
    errors = 0
    last_done = measure_from

    async def worker(index: int) -> None:
        nonlocal errors, last_done
        connection = Connection(target.host, target.port)
        while (sent := time.perf_counter()) < stop_at:
            body = bodies[index % len(bodies)]
            index += concurrency
            try:
                ok = await connection.post(target.path, body) == 200
            except (OSError, asyncio.IncompleteReadError, ValueError):
                connection.close()  # reconnect on the next request
                ok = False
            done = time.perf_counter()
            if sent >= measure_from:
                last_done = max(last_done, done)
                if ok:
                    latencies.append(done - sent)
                else:
                    errors += 1
        connection.close()

    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    elapsed = last_done - measure_from
    ms = np.array(latencies) * 1000 if latencies else np.array([np.nan])
    return {
        "requests": len(latencies),
        "errors": errors,
        "requests_per_s": round(len(latencies) / elapsed, 2),
        "p50_ms": round(float(np.percentile(ms, 50)), 2),
        "p99_ms": round(float(np.percentile(ms, 99)), 2),
    }


def payloads(data: Path, task: str, limit: int = 256) -> list[dict]:
    """Request bodies from the task's validation split: one text or question per request."""
    path = data / task / "validation.jsonl"
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()[:limit]]
    if task == "classification":
        return [{"texts": [r["text"]]} for r in rows]
    if task == "ner":
        return [{"texts": [" ".join(r["tokens"])]} for r in rows]
    return [{"question": r["question"], "context": r["context"]} for r in rows]


def batch_totals(base: str, task: str) -> tuple[float, float]:
    """(inference calls, items) so far, from the service's batch-size histogram."""
    totals = {"lmforge_batch_size_count": 0.0, "lmforge_batch_size_sum": 0.0}
    for family in text_string_to_metric_families(httpx.get(f"{base}/metrics").text):
        for s in family.samples:
            if s.name in totals and s.labels.get("task") == task:
                totals[s.name] = s.value
    return totals["lmforge_batch_size_count"], totals["lmforge_batch_size_sum"]


# --- servers ----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def server(name: str, command: list[str], env: dict[str, str]) -> Iterator[str]:
    """Start a server process, wait until /readyz is 200, yield its URL, stop it."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen(
            [*command, "--port", str(port)], cwd=ROOT, env=env, stdout=log, stderr=log
        )
        try:
            deadline = time.monotonic() + 600
            while True:
                with contextlib.suppress(httpx.TransportError):
                    if httpx.get(f"{base}/readyz", timeout=5).status_code == 200:
                        break
                if proc.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    raise SystemExit(f"{name} server did not become ready:\n{log.read()[-4000:]}")
                time.sleep(0.5)
            yield base
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


def start(name: str, task: str, serving: Path, finetuned: Path, variants: dict):
    if name.startswith("lmforge"):
        env = os.environ | {"LMFORGE_ARTIFACTS": str(serving.parent), "LMFORGE_TASKS": task}
        env.pop("LMFORGE_API_KEY", None)  # the load sends no key (nor do the baselines)
        env |= variants.get(name, {})
        return server(name, [sys.executable, "-m", "uvicorn", "serve.app:app"], env)
    command = [sys.executable, __file__, "--serve", name, "--task", task]
    command += ["--serving", str(serving.parent), "--finetuned", str(finetuned.parent)]
    return server(name, command, dict(os.environ))


def serve_baseline(args: argparse.Namespace) -> None:
    """Run one baseline server (this script starts it in its own process)."""
    import uvicorn

    folder = args.serving / args.task
    if args.serve == "ort":
        app = ort_app(folder, args.task)
    else:
        manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
        seq, stride = manifest["max_seq_len"], manifest.get("doc_stride", 0)
        app = torch_app(args.finetuned / args.task, args.task, seq, stride)
    # No access log: the plainest endpoint, as fast as uvicorn runs it.
    uvicorn.run(app, host="127.0.0.1", port=args.port, access_log=False, log_level="warning")


def run_task(args, size: str, task: str, serving: Path, finetuned: Path) -> dict:
    """All servers up at once; at each concurrency level they take turns."""
    bodies = payloads(args.data, task)
    names = [*args.servers, *args.variants]
    runs: dict[str, dict] = {name: {} for name in names}
    with contextlib.ExitStack() as stack:
        bases = {
            name: stack.enter_context(start(name, task, serving, finetuned, args.variants))
            for name in names
        }
        for concurrency in args.concurrency:
            for name, base in bases.items():
                before = batch_totals(base, task) if name.startswith("lmforge") else None
                url = f"{base}/v1/{ROUTES[task]}"
                result = asyncio.run(drive(url, bodies, concurrency, args.duration, args.warmup))
                if before is not None:
                    after = batch_totals(base, task)
                    calls, items = after[0] - before[0], after[1] - before[1]
                    result["mean_batch_size"] = round(items / calls, 2) if calls else None
                runs[name][str(concurrency)] = result
                print(
                    f"{size:7s} {task:14s} {name:16s} c={concurrency:<3d} "
                    + " ".join(f"{k}={v}" for k, v in result.items()),
                    flush=True,
                )
    return runs


def ratios(runs: dict) -> dict:
    """lmforge against each baseline per level: throughput ratio and whether p99 is lower."""
    out = {}
    for name in runs:
        if name.startswith("lmforge") or "lmforge" not in runs:
            continue
        out[name] = {}
        for level, ours in runs["lmforge"].items():
            base = runs[name][level]
            rate = base["requests_per_s"]
            out[name][level] = {
                "throughput_ratio": round(ours["requests_per_s"] / rate, 2) if rate else None,
                "p99_ratio": round(ours["p99_ms"] / base["p99_ms"], 2),
                "errors": ours["errors"],
            }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serving", type=Path, default=ROOT / "artifacts/serving")
    parser.add_argument("--finetuned", type=Path, default=ROOT / "artifacts/finetuned")
    parser.add_argument("--data", type=Path, default=ROOT / "data/prepared")
    parser.add_argument("--work", type=Path, default=ROOT / "bench/work/serve_load")
    parser.add_argument("--sizes", nargs="+", choices=("default", "6x384"), default=None)
    parser.add_argument("--tasks", nargs="+", choices=sorted(ROUTES), default=sorted(ROUTES))
    parser.add_argument("--servers", nargs="+", choices=SERVERS, default=list(SERVERS))
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per level")
    parser.add_argument("--warmup", type=float, default=1.5, help="seconds before each level")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/serve_load.json")
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME:LMFORGE_X=V,...",
        help="also run lmforge with these settings, as lmforge[NAME] (e.g. nolog:LMFORGE_ACCESS_LOG=0)",
    )
    # Internal: run one baseline server (this script starts it in its own process).
    parser.add_argument("--serve", choices=SERVERS[1:], help=argparse.SUPPRESS)
    parser.add_argument("--task", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve_baseline(args)
        return
    args.variants = {}
    for spec in args.variant:
        label, _, pairs = spec.partition(":")
        args.variants[f"lmforge[{label}]"] = dict(kv.split("=", 1) for kv in pairs.split(","))

    sizes = args.sizes or ["default", "6x384"]
    results: dict = {
        "duration_s": args.duration,
        "cpu_count": os.cpu_count(),
        "variants": args.variants,
        "sizes": {},
    }
    for size in sizes:
        results["sizes"][size] = {}
        for task in args.tasks:
            serving, finetuned = args.serving / task, args.finetuned / task
            if size == "6x384":
                serving, finetuned = build_large(task, args.serving, args.finetuned, args.work)
            runs = run_task(args, size, task, serving, finetuned)
            model_file = json.loads((serving / "manifest.json").read_text())["model_file"]
            results["sizes"][size][task] = {
                "model_file": model_file,
                "runs": runs,
                "vs": ratios(runs),
            }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
