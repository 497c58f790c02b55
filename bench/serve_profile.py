"""Where one request's CPU time goes in the service: py-spy samples under load, by stage.

Starts `uvicorn serve.app:app` under `py-spy record` (every thread, native frames off),
drives it with bench/serve_load.py's load generator, and charges each sample to the
innermost stage its stack passes through (HTTP parse, body guard, validation, queue
hand-off, tokenization, onnxruntime, post-processing, response encoding, access log,
metrics, ...). Prints CPU microseconds per request for each stage, as JSON too.

    python bench/serve_profile.py --serving artifacts/serving --task classification -c 32
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_load import ROOT, ROUTES, drive, free_port, payloads  # noqa: E402

# (stage, patterns): a sample goes to the stage of the innermost frame matching a pattern.
# Patterns match py-spy's "function (file)" frame names.
STAGES = [
    ("http: uvicorn parse + write", ["(uvicorn/protocols/", "(uvicorn/server.py", "(httptools"]),
    ("asgi/middleware plumbing", ["(starlette/", "(fastapi/applications.py"]),
    ("body guard", ["(serve/app.py)"]),
    ("routing + validation (fastapi, pydantic)", ["(fastapi/", "(pydantic", "(serve/schemas.py)"]),
    ("route code + limits", ["(serve/routes.py)"]),
    (
        "thread hand-offs (batcher, anyio pool, futures)",
        [
            "(serve/batcher.py)",
            "(anyio/",
            "(asyncio/",
            "(concurrent/futures/",
            "(threading.py)",
            "(uvloop",
            "(queue.py)",
        ],
    ),
    ("validate (QA question length)", ["validate (serve/runtime.py)"]),
    ("tokenization", ["encode (serve/runtime.py)", "encode_texts", "encode_pairs", "encode_batch"]),
    ("onnxruntime", ["(onnxruntime/"]),
    (
        "post-processing",
        [
            "decode (serve/runtime.py)",
            "classify (lmforge",
            "extract_entities",
            "best_answers",
        ],
    ),
    ("response encoding", ["serialize_response", "(json/", "orjson", "render (", "init_headers"]),
    ("access log", ["(logging/", "JsonFormatter", "_record (serve/metrics.py)", "(uuid.py)"]),
    ("metrics", ["(prometheus_client/"]),
]


# Innermost frames of a thread that waits: the event loop in uvloop's C code, pool
# threads waiting for work. py-spy does not always see these threads as idle.
IDLE = (
    "Runner.run (asyncio/runners.py)",
    "_worker (concurrent/futures/thread.py)",
    "Condition.wait (threading.py)",
    "Event.wait (threading.py)",
    "Queue.get (queue.py)",
    "MicroBatcher._next_batch (serve/batcher.py)",
)


def stage_of(stack: list[str]) -> str:
    for frame in reversed(stack):  # innermost first
        for stage, patterns in reversed(STAGES):  # later stages are the more specific
            if any(p in frame for p in patterns):
                return stage
    return "other"


def profile(args: argparse.Namespace) -> dict:
    port = free_port()
    env = os.environ | {
        "LMFORGE_ARTIFACTS": str(args.serving),
        "LMFORGE_TASKS": args.task,
        **dict(kv.split("=", 1) for kv in args.env),
    }
    env.pop("LMFORGE_API_KEY", None)
    server = [sys.executable, "-m", "uvicorn", "serve.app:app", "--port", str(port)]
    proc = subprocess.Popen(server, cwd=ROOT, env=env, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as tmp:
        active, held = Path(tmp) / "active.txt", Path(tmp) / "gil.txt"
        try:
            while True:
                with contextlib.suppress(httpx.TransportError):
                    if httpx.get(f"{base}/readyz", timeout=5).status_code == 200:
                        break
                if proc.poll() is not None:
                    raise SystemExit("the server did not start")
                time.sleep(0.5)
            # Sample only the steady load: py-spy attaches after a warm-up second and stops
            # a second before the load does.
            spies = [
                subprocess.Popen(
                    [*spy_command(proc.pid, args, path), *extra],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                for path, extra in ((active, []), (held, ["--gil"]))
            ]
            bodies = payloads(args.data, args.task)
            url = f"{base}/v1/{ROUTES[args.task]}"
            load = asyncio.run(drive(url, bodies, args.concurrency, args.duration + 1, 1.0))
            for spy in spies:
                spy.wait(timeout=60)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
        if args.keep:
            shutil.copyfile(active, args.keep)
        requests = load["requests_per_s"] * int(args.duration)
        stages = {
            "active_us": per_request(active, requests, args.rate),
            "gil_us": per_request(held, requests, args.rate),
        }
    return {
        "task": args.task,
        "concurrency": args.concurrency,
        "settings": args.env,
        "load": load,
        **stages,
    }


def spy_command(pid: int, args: argparse.Namespace, out: Path) -> list[str]:
    command = ["py-spy", "record", "--pid", str(pid), "--format", "raw", "--nolineno"]
    command += ["--nonblocking", "--threads", "--rate", str(args.rate)]
    return [*command, "--duration", str(int(args.duration)), "-o", str(out)]


def per_request(raw: Path, requests: float, rate: int) -> dict[str, float]:
    """Microseconds per request in each stage, from py-spy's raw stacks; idle waits left out."""
    counts: collections.Counter = collections.Counter()
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        frames = stack.split(";")[1:]  # the first frame names the thread
        if frames and any(frames[-1].startswith(leaf) for leaf in IDLE):
            continue
        counts[stage_of(frames)] += int(n)
    us = {stage: round(n / rate / requests * 1e6, 1) for stage, n in counts.most_common()}
    return us | {"total": round(sum(us.values()), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serving", type=Path, default=ROOT / "artifacts/serving")
    parser.add_argument("--data", type=Path, default=ROOT / "data/prepared")
    parser.add_argument("--task", choices=sorted(ROUTES), default="classification")
    parser.add_argument("-c", "--concurrency", type=int, default=1)
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--rate", type=int, default=997, help="samples per second")
    parser.add_argument("--keep", type=Path, help="also write py-spy's raw stacks here")
    parser.add_argument("--env", nargs="*", default=[], help="extra LMFORGE_X=value settings")
    args = parser.parse_args()
    result = profile(args)
    print(f"{'active us':>10} {'GIL us':>8}  stage   ({result['load']})")
    for stage, us in result["active_us"].items():
        print(f"{us:10.1f} {result['gil_us'].get(stage, 0.0):8.1f}  {stage}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
