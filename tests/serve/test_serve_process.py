"""The service in its own process: no torch on the serving path, and SIGTERM drains requests."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]

NO_TORCH = """
import json, sys
from fastapi.testclient import TestClient
from serve.app import create_app
from serve.settings import Settings

settings = Settings(artifacts=sys.argv[1], tasks="classification,ner,qa", batch_wait_ms=0)
with TestClient(create_app(settings)) as client:
    while client.get("/readyz").json()["status"] == "loading":
        pass
    statuses = [
        client.get("/readyz").status_code,
        client.post("/v1/classify", json={"texts": ["hello"]}).status_code,
        client.post("/v1/ner", json={"texts": ["Alice flew to Paris"]}).status_code,
        client.post("/v1/qa", json={"question": "Who?", "context": "Alice flew."}).status_code,
    ]
heavy = sorted(m for m in sys.modules if m.split(".")[0] in {"torch", "transformers"})
print(json.dumps({"statuses": statuses, "heavy": heavy}))
"""


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "src")])}


def test_serving_path_never_imports_torch(serving_dir):
    done = subprocess.run(
        [sys.executable, "-c", NO_TORCH, str(serving_dir)],
        cwd=ROOT,
        env=env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result == {"statuses": [200, 200, 200, 200], "heavy": []}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_sigterm_drains_in_flight_requests(serving_dir):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server_env = env() | {
        "LMFORGE_ARTIFACTS": str(serving_dir),
        "LMFORGE_TASKS": "classification",
        # A long batch window keeps the request in flight while the server is told to stop.
        "LMFORGE_BATCH_WAIT_MS": "2000",
    }
    server = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "serve.app:app", "--port", str(port)],
        cwd=ROOT,
        env=server_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base}/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline and server.poll() is None, "server did not start"
            time.sleep(0.1)

        result = {}

        def call() -> None:
            body = {"texts": ["Answered after SIGTERM."]}
            result["response"] = httpx.post(f"{base}/v1/classify", json=body, timeout=30)

        caller = threading.Thread(target=call)
        caller.start()
        queued = 'lmforge_queue_depth{task="classification"} 1.0'
        while queued not in httpx.get(f"{base}/metrics").text:  # waiting in the batch window
            assert caller.is_alive(), result
            time.sleep(0.05)
        server.send_signal(signal.SIGTERM)
        caller.join(timeout=30)
        # uvicorn re-raises the signal once it has shut down gracefully.
        assert server.wait(timeout=30) in (0, -signal.SIGTERM)
    finally:
        if server.poll() is None:
            server.kill()
        stderr = server.communicate()[1]
    response = result["response"]
    assert response.status_code == 200, stderr
    assert len(response.json()["results"]) == 1
