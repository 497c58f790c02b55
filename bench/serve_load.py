"""Load test: the lmforge service against a naive per-request PyTorch endpoint.

Each server runs in its own process; this one drives it over keep-alive connections at each
concurrency for a fixed time and reports requests/s, p50/p99 latency and errors as JSON.

    python bench/serve_load.py --serving artifacts/serving --finetuned artifacts/finetuned \
        --data data/prepared --task classification --duration 15 --concurrency 1 8 32
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[1]
ROUTES = {"classification": "classify", "ner": "ner", "qa": "qa"}
WARMUP_S = 2.0


# --- the naive baseline: what a user writes first -------------------------------------


def baseline_app(model_dir: Path, task: str, max_seq_len: int, doc_stride: int):
    """A FastAPI endpoint that runs the fine-tuned PyTorch model once per request."""
    import torch
    from fastapi import FastAPI
    from transformers import (
        AutoModelForQuestionAnswering,
        AutoModelForSequenceClassification,
        AutoModelForTokenClassification,
        AutoTokenizer,
    )

    auto = {
        "classification": AutoModelForSequenceClassification,
        "ner": AutoModelForTokenClassification,
        "qa": AutoModelForQuestionAnswering,
    }[task]
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
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


# --- load generation ------------------------------------------------------------------


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


async def drive(url: str, payloads: list[dict], concurrency: int, duration: float) -> dict:
    """`concurrency` clients post back to back; only requests started after warmup count."""
    target = httpx.URL(url)
    bodies = [json.dumps(p).encode() for p in payloads]
    start = time.perf_counter()
    measure_from, stop_at = start + WARMUP_S, start + WARMUP_S + duration
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


# --- servers --------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def server(name: str, command: list[str], env: dict[str, str], port: int) -> Iterator[str]:
    """Start a server process, wait until /readyz is 200, yield its URL, stop it."""
    base = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
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


def lmforge_server(args: argparse.Namespace, port: int):
    env = os.environ | {"LMFORGE_ARTIFACTS": str(args.serving), "LMFORGE_TASKS": args.task}
    env.pop("LMFORGE_API_KEY", None)  # the load sends no key (nor does the baseline need one)
    command = [sys.executable, "-m", "uvicorn", "serve.app:app", "--port", str(port)]
    return server("lmforge", command, env, port)


def baseline_server(args: argparse.Namespace, manifest: dict, port: int):
    command = [
        sys.executable,
        __file__,
        "--baseline-port",
        str(port),
        "--finetuned",
        str(args.finetuned),
        "--task",
        args.task,
        "--max-seq-len",
        str(manifest["max_seq_len"]),
        "--doc-stride",
        str(manifest.get("doc_stride", 0)),
    ]
    return server("baseline", command, dict(os.environ), port)


def run_levels(name: str, base: str, args: argparse.Namespace, bodies: list[dict]) -> dict:
    url = f"{base}/v1/{ROUTES[args.task]}"
    results = {}
    for concurrency in args.concurrency:
        before = batch_totals(base, args.task) if name == "lmforge" else None
        result = asyncio.run(drive(url, bodies, concurrency, args.duration))
        if before is not None:
            calls, items = (
                a - b for a, b in zip(batch_totals(base, args.task), before, strict=True)
            )
            result["mean_batch_size"] = round(items / calls, 2) if calls else None
        results[str(concurrency)] = result
        print(f"{name:8s} c={concurrency:<3d} " + " ".join(f"{k}={v}" for k, v in result.items()))
    return results


def goal(runs: dict, concurrency: int) -> dict:
    ours, base = runs["lmforge"][str(concurrency)], runs["baseline"][str(concurrency)]
    ratio = ours["requests_per_s"] / base["requests_per_s"] if base["requests_per_s"] else None
    checks = {
        "throughput_ratio": round(ratio, 2) if ratio else None,
        "throughput_3x": bool(ratio and ratio >= 3),
        "p99_lower": ours["p99_ms"] < base["p99_ms"],
        "zero_errors": ours["errors"] == 0,
    }
    met = checks["throughput_3x"] and checks["p99_lower"] and checks["zero_errors"]
    return {"concurrency": concurrency, **checks, "met": met}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serving", type=Path, default=ROOT / "artifacts/serving")
    parser.add_argument("--finetuned", type=Path, default=ROOT / "artifacts/finetuned")
    parser.add_argument("--data", type=Path, default=ROOT / "data/prepared")
    parser.add_argument("--task", choices=sorted(ROUTES), default="classification")
    parser.add_argument("--duration", type=float, default=15.0, help="seconds per level")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/serve_load.json")
    # Internal: run only the baseline server (this script starts it in its own process).
    parser.add_argument("--baseline-port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--max-seq-len", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--doc-stride", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.baseline_port is not None:
        import uvicorn

        app = baseline_app(args.finetuned / args.task, args.task, args.max_seq_len, args.doc_stride)
        uvicorn.run(app, host="127.0.0.1", port=args.baseline_port)
        return

    manifest = json.loads((args.serving / args.task / "manifest.json").read_text())
    bodies = payloads(args.data, args.task)
    runs = {}
    with lmforge_server(args, free_port()) as base:
        runs["lmforge"] = run_levels("lmforge", base, args, bodies)
    with baseline_server(args, manifest, free_port()) as base:
        runs["baseline"] = run_levels("baseline", base, args, bodies)
    result = {
        "task": args.task,
        "model_file": manifest["model_file"],
        "duration_s": args.duration,
        "cpu_count": os.cpu_count(),
        "runs": runs,
        "goal": goal(runs, max(args.concurrency)),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
