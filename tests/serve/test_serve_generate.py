"""POST /v1/generate on a small fitted GPT-2 (tests/generation_fixture.py), compressed by the
compress stage: greedy output equals a reference decode, seeds, stop strings, streaming,
Chinese and emoji, limits, auth, metrics, concurrency and a client that goes away.
"""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from tokenizers import Tokenizer

from lmforge.decoder import Decoder, DecoderShape
from lmforge.tasks.generation import context_ids

LIMITS = {"max_new_tokens": 48, "max_text_chars": 200}


@pytest.fixture(scope="module")
def serving(generation_workspace) -> Path:
    return generation_workspace / "serving"


@pytest.fixture(scope="module")
def gen(serving, start_service):
    with start_service(serving, tasks="generation", **LIMITS) as client:
        yield client


@pytest.fixture(scope="module")
def reference(serving):
    """Greedy decode of the served model file, one request alone, straight from onnxruntime."""
    folder = serving / "generation"
    manifest = json.loads((folder / "manifest.json").read_text())
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    session = ort.InferenceSession(str(folder / manifest["model_file"]))
    decoder = Decoder(session, DecoderShape.from_manifest(manifest))

    def greedy(prompt: str, steps: int) -> tuple[list[int], str]:
        ids = context_ids(tokenizer, prompt)
        new, _ = decoder.greedy(ids, steps)
        if manifest["eos_token_id"] in new:
            new = new[: new.index(manifest["eos_token_id"]) + 1]
        return new, tokenizer.decode(new)

    return greedy


def post(client, **body):
    return client.post("/v1/generate", json=body)


def events_of(response) -> list[tuple[str, dict]]:
    """Parse a text/event-stream body into (event, data) pairs."""
    out = []
    for block in response.text.split("\n\n"):
        if not block.strip():
            continue
        lines = dict(line.split(": ", 1) for line in block.split("\n"))
        out.append((lines["event"], json.loads(lines["data"])))
    return out


def test_greedy_equals_reference_decode(gen, reference):
    for prompt in ["The quick brown fox", "Machine learning", ""]:
        ids, text = reference(prompt, 30)
        body = post(gen, prompt=prompt, max_new_tokens=30, temperature=0).json()
        assert body["text"] == text, prompt
        assert body["completion_tokens"] == len(ids)
        assert body["finish_reason"] == ("stop" if len(ids) < 30 else "length")
    assert (
        post(gen, prompt="The quick brown fox", max_new_tokens=9, temperature=0)
        .json()["text"]
        .startswith(" jumps over")
    )  # the fixture model learnt its texts


def test_seed_gives_the_same_text(gen):
    body = {"prompt": "Once upon", "max_new_tokens": 24, "temperature": 1.5, "top_p": 0.98}
    first = post(gen, seed=11, **body).json()["text"]
    assert post(gen, seed=11, **body).json()["text"] == first
    texts = {post(gen, seed=seed, **body).json()["text"] for seed in range(6)}
    assert len(texts) > 1  # sampling does sample


def test_small_top_p_is_greedy(gen, reference):
    _, text = reference("The weather", 20)
    body = post(gen, prompt="The weather", max_new_tokens=20, top_p=1e-6, seed=3).json()
    assert body["text"] == text


def test_stop_string_split_across_tokens(gen, reference, serving):
    tokenizer = Tokenizer.from_file(str(serving / "generation" / "tokenizer.json"))
    prompt = "Once upon a time"
    ids, full = reference(prompt, 30)
    cuts = [len(tokenizer.decode(ids[:k])) for k in range(1, len(ids))]
    # A two-character stop string whose first occurrence straddles a token boundary.
    boundary = next(
        b for b in cuts if 0 < b < len(full) and full.find(full[b - 1 : b + 1]) == b - 1
    )
    stop = full[boundary - 1 : boundary + 1]
    for stream in (False, True):
        r = post(
            gen, prompt=prompt, max_new_tokens=30, temperature=0, stop=["zzz", stop], stream=stream
        )
        if stream:
            events = events_of(r)
            text = "".join(data["text"] for _, data in events)
            done = events[-1][1]
        else:
            done = r.json()
            text = done["text"]
        assert text == full[: boundary - 1], stream
        assert done["finish_reason"] == "stop"


def test_stream_is_server_sent_events(gen):
    body = {"prompt": "The quick brown fox", "max_new_tokens": 20, "temperature": 0}
    plain = post(gen, **body).json()
    r = post(gen, stream=True, **body)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    events = events_of(r)
    kinds = [kind for kind, _ in events]
    assert kinds[-1] == "done" and set(kinds[:-1]) == {"token"}
    done = events[-1][1]
    assert set(done) == {"text", "prompt_tokens", "completion_tokens", "finish_reason"}
    assert "".join(data["text"] for _, data in events) == plain["text"]
    eos = 1 if done["finish_reason"] == "stop" else 0
    assert len(events) - 1 == done["completion_tokens"] - eos  # one event per token
    assert {k: done[k] for k in ("prompt_tokens", "completion_tokens")} == {
        k: plain[k] for k in ("prompt_tokens", "completion_tokens")
    }


def test_chinese_and_emoji_round_trip(gen, reference, serving):
    tokenizer = Tokenizer.from_file(str(serving / "generation" / "tokenizer.json"))
    for prompt in ["今天天气", "Emoji travel well: 🚀"]:
        ids, text = reference(prompt, 24)
        plain = post(gen, prompt=prompt, max_new_tokens=24, temperature=0).json()
        assert plain["text"] == text
        assert plain["prompt_tokens"] == len(tokenizer.encode(prompt).ids)
        pieces = [
            d["text"]
            for k, d in events_of(
                post(gen, prompt=prompt, max_new_tokens=24, temperature=0, stream=True)
            )
        ]
        assert "".join(pieces) == text
        assert not any("\ufffd" in p for p in pieces)  # bytes wait for whole characters
    assert any(
        ord(c) > 0x2E80
        for c in post(gen, prompt="今天天气", max_new_tokens=9, temperature=0).json()["text"]
    )


def test_concurrent_requests_decode_as_alone(gen, reference):
    prompts = ["The quick brown fox", "今天天气", "Machine learning", "Once upon a time", ""]
    steps = [30, 12, 25, 7, 18]
    with ThreadPoolExecutor(len(prompts)) as pool:
        bodies = list(
            pool.map(
                lambda p, n: post(gen, prompt=p, max_new_tokens=n, temperature=0).json(),
                prompts,
                steps,
            )
        )
    for prompt, n, body in zip(prompts, steps, bodies, strict=True):
        assert body["text"] == reference(prompt, n)[1], prompt


@pytest.mark.parametrize(
    ("body", "status", "where"),
    [
        ({"prompt": "hi", "max_new_tokens": 49}, 422, "max_new_tokens"),
        ({"prompt": "a" * 201}, 422, "prompt"),
        ({"prompt": "鑫" * 30, "max_new_tokens": 48}, 422, "128 positions"),  # 3 bytes each
        ({"prompt": "hi", "max_new_tokens": "5"}, 422, "max_new_tokens"),
        ({"prompt": "hi", "max_new_tokens": 0}, 422, "max_new_tokens"),
        ({"prompt": "hi", "temperature": -1}, 422, "temperature"),
        ({"prompt": "hi", "top_p": 0}, 422, "top_p"),
        ({"prompt": "hi", "seed": -3}, 422, "seed"),
        ({"prompt": "hi", "stop": [""]}, 422, "stop.0"),
        ({"prompt": "hi", "stop": "x"}, 422, "stop"),
        ({"prompt": "hi", "stream": "yes"}, 422, "stream"),
        ({"prompt": 5}, 422, "prompt"),
        ({"prompt": "hi", "tempreature": 0}, 422, "tempreature"),
        ({}, 422, "prompt"),
    ],
)
def test_bad_input_is_a_4xx_naming_the_field(gen, body, status, where):
    r = gen.post("/v1/generate", json=body)
    assert r.status_code == status, r.text
    assert where in r.json()["error"]["message"], r.json()


def test_auth_models_readiness_and_metrics(serving, start_service):
    with start_service(serving, tasks="generation", api_key="s3cret") as c:
        assert post(c, prompt="hi").status_code == 401
        auth = {"Authorization": "Bearer s3cret"}
        r = c.post("/v1/generate", json={"prompt": "hi", "max_new_tokens": 3}, headers=auth)
        assert r.status_code == 200 and r.json()["completion_tokens"] >= 1
        assert c.get("/readyz").status_code == 200
        models = c.get("/v1/models", headers=auth).json()
        assert [m["task"] for m in models] == ["generation"]
        assert models[0]["quantized"] is True and models[0]["max_seq_len"] == 128
        metrics = c.get("/metrics").text
        for name in (
            "lmforge_generated_tokens_total",
            "lmforge_time_to_first_token_seconds_count 1.0",
            "lmforge_generation_tokens_per_second_bucket",
            'lmforge_http_requests_total{method="POST",route="/v1/generate",status="401"} 1.0',
        ):
            assert name in metrics, name


def test_missing_folder_is_not_ready(tmp_path, start_service):
    with start_service(tmp_path, tasks="generation") as c:
        assert c.get("/readyz").status_code == 503
        r = post(c, prompt="hi")
        assert r.status_code == 503 and r.json()["error"]["code"] == "model_unavailable"


def test_client_that_goes_away_stops_its_generation(gen, serving, monkeypatch):
    # Decoding slowed to 50 ms a token with end-of-text never drawn: the 48 tokens take
    # over 2 s, so the hang-up always lands mid-generation. At full speed a fast CPU
    # finished (or sampled eos) in ~7 ms, before the disconnect was seen, and this failed.
    eos = json.loads((serving / "generation" / "manifest.json").read_text())["eos_token_id"]
    forward = Decoder.forward

    def slow_forward(self, input_ids, cache):
        logits, grown = forward(self, input_ids, cache)
        time.sleep(0.05)
        logits[..., eos] = -np.inf
        return logits, grown

    monkeypatch.setattr(Decoder, "forward", slow_forward)

    def cancelled() -> float:
        for line in gen.get("/metrics").text.splitlines():
            if line.startswith("lmforge_generation_cancelled_total"):
                return float(line.split()[-1])
        return 0.0

    before = cancelled()
    body = {"prompt": "Once", "max_new_tokens": 48, "temperature": 1.0, "stream": True, "seed": 1}
    with gen.stream("POST", "/v1/generate", json=body) as r:
        for _ in r.iter_lines():
            break  # one event, then hang up
    deadline = time.monotonic() + 10
    while cancelled() == before and time.monotonic() < deadline:
        time.sleep(0.02)
    assert cancelled() == before + 1
    assert threading.active_count() < 50  # nothing left spinning per request


def test_logits_are_those_of_the_served_graph(serving):
    """The service's numpy sampler at temperature 0 is argmax of the graph's logits."""
    from lmforge.decoder import sample_next

    logits = np.array([0.1, 3.0, -2.0, 2.9], np.float32)
    rng = np.random.default_rng(0)
    assert sample_next(logits, 0.0, 1.0, rng) == 1
    assert {sample_next(logits, 1.0, 1e-6, rng) for _ in range(20)} == {1}
    draws = [sample_next(logits, 1.0, 1.0, np.random.default_rng(5)) for _ in range(3)]
    assert len(set(draws)) == 1


def test_shutdown_finishes_running_and_waiting_generations(serving):
    """Drain: close() lets every admitted and queued request end, then refuses new ones."""
    import asyncio

    from serve.batcher import Unavailable
    from serve.generator import DecodeLoop, Sampling, load_generation
    from serve.metrics import Metrics

    model = load_generation(serving / "generation", lambda p: ort.InferenceSession(str(p)))
    sampling = Sampling(20, 0.0, 1.0, None, [])

    async def run() -> list:
        loop = DecodeLoop(model, max_streams=1, max_queue=4, metrics=Metrics())
        jobs = [loop.submit(model.prompt_ids(p), sampling) for p in ("Once", "今天")]
        await loop.close()  # the second waits for the first's place, and still runs
        with pytest.raises(Unavailable, match="shutting down"):
            loop.submit(model.prompt_ids("late"), sampling)
        finals = []
        for job in jobs:
            while (event := job.events.get_nowait())[0] == "token":
                pass
            finals.append(event)
        return finals

    finals = asyncio.run(run())
    assert [kind for kind, _ in finals] == ["done", "done"]
    assert all(body["completion_tokens"] >= 1 for _, body in finals)


def test_a_failing_request_ends_alone(serving, monkeypatch):
    """NaN logits for one request: it gets an error event, the decode thread lives on."""
    import asyncio

    import serve.generator as generator
    from serve.generator import DecodeLoop, Sampling, load_generation
    from serve.metrics import Metrics

    model = load_generation(serving / "generation", lambda p: ort.InferenceSession(str(p)))
    real = generator.sample_next

    def flaky(logits, temperature, top_p, rng):
        if temperature == 0.5:
            raise ValueError("probabilities contain NaN")
        return real(logits, temperature, top_p, rng)

    monkeypatch.setattr(generator, "sample_next", flaky)

    async def run() -> list:
        loop = DecodeLoop(model, max_streams=4, max_queue=4, metrics=Metrics())
        bad = loop.submit(model.prompt_ids("Once"), Sampling(10, 0.5, 1.0, 1, []))
        good = loop.submit(model.prompt_ids("Once"), Sampling(10, 0.0, 1.0, None, []))
        await loop.close()
        kinds = []
        for job in (bad, good):
            while (event := job.events.get_nowait())[0] == "token":
                pass
            kinds.append(event[0])
        return kinds

    assert asyncio.run(run()) == ["error", "done"]


def test_json_request_whose_client_hangs_up_ends(serving, start_service):
    """No stream: the disconnect cancels the decoding and the handler returns (no task left
    waiting for a job that no longer runs)."""
    import asyncio

    body = json.dumps({"prompt": "Once", "max_new_tokens": 48, "temperature": 1.0}).encode()
    with start_service(serving, tasks="generation", max_new_tokens=48) as c:
        app = c.app
        sent: list[dict] = []

        async def call() -> None:
            messages = [{"type": "http.request", "body": body, "more_body": False}]

            async def receive() -> dict:
                if messages:
                    return messages.pop()
                return {"type": "http.disconnect"}  # the client is gone at once

            async def send(message: dict) -> None:
                sent.append(message)

            scope = {
                "type": "http",
                "asgi": {"version": "3.0", "spec_version": "2.4"},
                "http_version": "1.1",
                "method": "POST",
                "scheme": "http",
                "path": "/v1/generate",
                "raw_path": b"/v1/generate",
                "query_string": b"",
                "root_path": "",
                "headers": [(b"content-type", b"application/json")],
                "client": ("127.0.0.1", 1),
                "server": ("127.0.0.1", 80),
                "state": {},
            }
            await asyncio.wait_for(app(scope, receive, send), timeout=10)

        c.portal.call(call)
        metrics = c.get("/metrics").text
        assert "lmforge_generation_cancelled_total 1.0" in metrics
        finish = json.loads(next(m for m in sent if m["type"] == "http.response.body")["body"])
        assert finish["finish_reason"] == "cancelled"
