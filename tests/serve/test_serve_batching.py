"""Micro-batching: concurrent requests share one onnxruntime call, results match unbatched ones,
a full queue is a 503, and closing the batcher finishes what was queued.
"""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from serve.metrics import Metrics
from serve.runtime import MicroBatcher, Unavailable, load_model, token_chunks
from serve.settings import Settings

TEXTS = [
    "Short.",
    "A somewhat longer sentence about the quick brown fox.",
    "Alice Smith flew to Paris and met Bob in Berlin last year, or so the story goes.",
    "Mid length text here.",
    "The treasure is buried under the old oak tree near the river.",
    "Ünïcödé café naïve résumé déjà vu.",
    "Where is the treasure?",
    "Filler words make a long context that spans many windows of the model.",
]


def batch_stats(client, task: str) -> tuple[float, float]:
    """(number of inference calls, items in them) from the lmforge_batch_size histogram."""
    samples = {
        s.name: s.value
        for family in text_string_to_metric_families(client.get("/metrics").text)
        for s in family.samples
        if s.labels.get("task") == task
    }
    return samples["lmforge_batch_size_count"], samples["lmforge_batch_size_sum"]


def without_scores(value, scores: list):
    """`value` minus its "score" fields, which go to `scores`: labels and spans compare exactly."""
    if isinstance(value, list):
        return [without_scores(v, scores) for v in value]
    if isinstance(value, dict):
        if "score" in value:
            scores.append(value["score"])
        return {k: without_scores(v, scores) for k, v in value.items() if k != "score"}
    return value


def concurrently(client, route: str, bodies: list[dict]) -> list:
    with ThreadPoolExecutor(len(bodies)) as pool:
        return list(pool.map(lambda body: client.post(route, json=body), bodies))


# The int8 classification fixture runs each row alone, so its scores match exactly; the
# fp32 NER model runs padded batches, which may move the last float digits.
@pytest.mark.parametrize(("task", "tolerance"), [("classification", 0.0), ("ner", 1e-5)])
def test_concurrent_requests_share_a_batch(serving_dir, start_service, client, task, tolerance):
    route = f"/v1/{'classify' if task == 'classification' else task}"
    with start_service(serving_dir, tasks=task, batch_wait_ms=300) as batched:
        responses = concurrently(batched, route, [{"texts": [t]} for t in TEXTS])
        calls, items = batch_stats(batched, task)
    assert [r.status_code for r in responses] == [200] * len(TEXTS)
    assert items == len(TEXTS)
    assert calls < len(TEXTS)  # with a 300 ms window, typically a single call
    # Padding to the longest text in the batch must not change any result.
    for text, response in zip(TEXTS, responses, strict=True):
        alone = client.post(route, json={"texts": [text]}).json()["results"][0]
        batched_scores, alone_scores = [], []
        assert without_scores(response.json()["results"][0], batched_scores) == without_scores(
            alone, alone_scores
        )
        assert batched_scores == pytest.approx(alone_scores, abs=tolerance)


@pytest.mark.parametrize(("task", "tolerance"), [("classification", 0.0), ("ner", 1e-5)])
def test_a_token_budget_splits_a_batch_without_changing_results(
    serving_dir, start_service, client, task, tolerance
):
    route = f"/v1/{'classify' if task == 'classification' else task}"
    # 40 padded tokens: the eight texts (5 to 25 tokens) need several onnxruntime calls.
    settings = {"tasks": task, "batch_wait_ms": 300, "max_batch_tokens": 40}
    with start_service(serving_dir, **settings) as budgeted:
        responses = concurrently(budgeted, route, [{"texts": [t]} for t in TEXTS])
        calls, items = batch_stats(budgeted, task)
    assert [r.status_code for r in responses] == [200] * len(TEXTS)
    assert calls < len(TEXTS)  # still batched: the budget splits calls, not batches
    for text, response in zip(TEXTS, responses, strict=True):
        alone = client.post(route, json={"texts": [text]}).json()["results"][0]
        split_scores, alone_scores = [], []
        assert without_scores(response.json()["results"][0], split_scores) == without_scores(
            alone, alone_scores
        )
        assert split_scores == pytest.approx(alone_scores, abs=tolerance)


@pytest.mark.parametrize("task", ["ner", "qa"])
def test_split_calls_match_one_call(serving_dir, task):
    items = TEXTS if task == "ner" else [("Where is the treasure?", t) for t in TEXTS]
    whole = load_model(task, serving_dir / task, Settings(artifacts=serving_dir))
    split = load_model(
        task, serving_dir / task, Settings(artifacts=serving_dir, max_batch_tokens=40)
    )
    shapes = []
    run = split.session.run
    split.session = SimpleNamespace(
        run=lambda names, feed: shapes.append(feed["input_ids"].shape) or run(names, feed)
    )
    batch_scores, split_scores = [], []
    expected = without_scores(whole.predict(items), batch_scores)
    assert without_scores(split.predict(items), split_scores) == expected
    assert split_scores == pytest.approx(batch_scores, abs=1e-5)
    assert len(shapes) > 1 and all(rows * seq <= 40 or rows == 1 for rows, seq in shapes)


def test_an_int8_model_runs_each_row_alone_and_unpadded(serving_dir):
    # Dynamic int8 quantization takes one activation scale per call: a row batched with
    # others (or padded) would get logits that depend on its company.
    model = load_model(
        "classification", serving_dir / "classification", Settings(artifacts=serving_dir)
    )
    assert model.manifest["quantized"] is True and model.rows_alone
    feeds = []
    run = model.session.run
    model.session = SimpleNamespace(run=lambda names, feed: feeds.append(feed) or run(names, feed))
    together = model.predict(TEXTS)
    assert len(feeds) == len(TEXTS)
    assert all(len(f["input_ids"]) == 1 and f["attention_mask"].all() for f in feeds)
    assert together == [model.predict([text])[0] for text in TEXTS]
    # What the rows alone avoid: the same model on one padded batch answers differently.
    inputs, _ = model.encode(TEXTS)
    padded = model._run(inputs)["logits"]
    alone = np.concatenate([model._run(model.encode([t])[0])["logits"] for t in TEXTS])
    assert not np.array_equal(padded, alone)


def test_token_chunks_keep_each_call_within_the_budget():
    lengths = np.array([3, 4, 4, 10, 12, 30, 60])
    chunks = token_chunks(lengths, 24)
    assert [(c.start, c.stop) for c in chunks] == [(0, 3), (3, 5), (5, 6), (6, 7)]
    for chunk in chunks:  # rows x longest row; a row over the budget goes alone
        rows = lengths[chunk]
        assert len(rows) * rows.max() <= 24 or len(rows) == 1
    assert token_chunks(np.array([5]), 1) == [slice(0, 1)]


def test_full_queue_is_503_with_retry_after(serving_dir, start_service):
    settings = {"tasks": "classification", "batch_wait_ms": 500, "max_items": 1}
    with start_service(serving_dir, max_queue_items=2, **settings) as c:
        responses = concurrently(c, "/v1/classify", [{"texts": [t]} for t in TEXTS[:3]])
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200, 200, 503]
    (refused,) = [r for r in responses if r.status_code == 503]
    assert refused.json()["error"]["code"] == "overloaded"
    assert refused.headers["retry-after"] == "1"


def run_batcher(predict, scenario, max_wait_s: float = 0.05):
    async def main():
        batcher = MicroBatcher(
            "test", predict, max_wait_s=max_wait_s, max_items=8, max_queue=100, metrics=Metrics()
        )
        return await scenario(batcher)

    return asyncio.run(main())


def test_close_finishes_queued_requests_then_refuses_new_ones():
    calls = []

    def predict(items):
        calls.append(len(items))
        time.sleep(0.05)
        return [item * 2 for item in items]

    async def scenario(batcher):
        pending = [asyncio.create_task(batcher.submit([i, i + 1])) for i in range(0, 20, 2)]
        await asyncio.sleep(0)  # let every submit enqueue
        await batcher.close()
        with pytest.raises(Unavailable, match="shutting down"):
            await batcher.submit([1])
        return [task.result() for task in pending]

    results = run_batcher(predict, scenario, max_wait_s=10.0)  # close must not wait 10 s
    assert results == [[2 * i, 2 * i + 2] for i in range(0, 20, 2)]
    assert calls == [8, 8, 4]  # whole requests, at most max_items per call


def test_a_failing_batch_fails_its_requests_and_the_worker_goes_on():
    class Panic(BaseException):  # what tokenizers raises for a Rust panic
        pass

    def predict(items):
        if "boom" in items:
            raise Panic("boom")
        return items

    async def scenario(batcher):
        bad = asyncio.create_task(batcher.submit(["boom"]))
        with pytest.raises(RuntimeError, match="test inference failed"):
            await bad
        good = await batcher.submit(["fine"])
        await batcher.close()
        return good

    assert run_batcher(predict, scenario) == ["fine"]


def test_a_refused_request_fails_alone_and_its_batch_runs():
    seen = []

    def check(items):
        if "bad" in items:
            raise ValueError("bad item")

    def predict(items):
        seen.append(list(items))
        return items

    async def main():
        batcher = MicroBatcher(
            "test",
            predict,
            max_wait_s=0.05,
            max_items=8,
            max_queue=100,
            metrics=Metrics(),
            check=check,
        )
        jobs = [asyncio.create_task(batcher.submit(items)) for items in (["a"], ["bad"], ["b"])]
        results = await asyncio.gather(*jobs, return_exceptions=True)
        await batcher.close()
        return results

    good, refused, other = asyncio.run(main())
    assert (good, other) == (["a"], ["b"])
    assert isinstance(refused, ValueError)
    assert seen == [["a", "b"]]  # one call, without the refused request


def test_a_request_that_gave_up_is_skipped():
    seen = []

    def predict(items):
        seen.extend(items)
        return items

    async def scenario(batcher):
        gone = asyncio.create_task(batcher.submit(["gone"]))
        await asyncio.sleep(0)
        gone.cancel()
        kept = await batcher.submit(["kept"])
        await batcher.close()
        return kept

    assert run_batcher(predict, scenario) == ["kept"]
    assert seen == ["kept"]


def test_a_lone_client_pays_no_window_and_overlapping_requests_wait_again():
    calls = []

    def predict(items):
        calls.append(len(items))
        time.sleep(0.02)
        return items

    async def scenario(batcher):
        await batcher.submit([0])  # no history yet: the first request waits the window
        start = time.monotonic()
        for i in range(5):  # alone, nothing queued behind: each goes at once
            await batcher.submit([i])
        lone_s = time.monotonic() - start
        # Overlap again: one request runs while two more queue, which waits the window
        # for the late third, so the three after the first share a single call.
        first = asyncio.create_task(batcher.submit(["a"]))
        await asyncio.sleep(0.005)
        queued = [asyncio.create_task(batcher.submit([x])) for x in "bc"]
        await asyncio.sleep(0.03)
        late = asyncio.create_task(batcher.submit(["d"]))
        results = await asyncio.gather(first, *queued, late)
        await batcher.close()
        return lone_s, results

    lone_s, results = run_batcher(predict, scenario, max_wait_s=0.5)
    assert lone_s < 0.5  # five lone requests together took less than one window
    assert results == [["a"], ["b"], ["c"], ["d"]]
    assert calls == [1] * 6 + [1, 3]


def test_a_lone_request_skips_the_worker_and_overlapping_ones_still_batch():
    threads, in_flight = [], 0

    def predict(items):
        threads.append((threading.get_ident(), len(items)))
        return items

    async def request(batcher, item):
        nonlocal in_flight  # counted as serve.metrics.AccessLog counts HTTP requests
        in_flight += 1
        try:
            return await batcher.submit([item])
        finally:
            in_flight -= 1

    async def main():
        batcher = MicroBatcher(
            "test", predict, max_wait_s=0.05, max_items=8, max_queue=100, metrics=Metrics(),
            alone=lambda: in_flight <= 1,
        )  # fmt: skip
        one_client = [await request(batcher, i) for i in range(3)]
        together = await asyncio.gather(*(request(batcher, i) for i in range(5)))
        after_company = await request(batcher, 8)
        alone_again = await request(batcher, 9)
        await batcher.close()
        return one_client, together, after_company, alone_again

    loop = threading.get_ident()  # asyncio.run runs the loop in this thread
    assert asyncio.run(main()) == ([[0], [1], [2]], [[i] for i in range(5)], [8], [9])
    ran_inline = [thread == loop for thread, _ in threads]
    # The very first request and the one right after a batch with company go to the worker
    # (batching mode until a batch runs alone); the five overlapping ones are batched there.
    assert ran_inline[:3] == [False, True, True] and ran_inline[-2:] == [False, True]
    assert not any(ran_inline[3:-2]) and sum(n for _, n in threads[3:-2]) == 5
    assert len(threads) - 4 < 5  # at least two of the five shared a call


def test_a_lone_request_that_fails_inline_fails_alone():
    def check(items):
        if "bad" in items:
            raise ValueError("bad item")

    def predict(items):
        if "boom" in items:
            raise RuntimeError("boom")
        return items

    async def main():
        batcher = MicroBatcher(
            "test", predict, max_wait_s=0.05, max_items=8, max_queue=100, metrics=Metrics(),
            check=check, alone=lambda: True,
        )  # fmt: skip
        results = [await batcher.submit(["warm"])]  # the worker's: batching mode at first
        for items in (["bad"], ["boom"], ["fine"]):
            try:
                results.append(await batcher.submit(items))
            except (ValueError, RuntimeError) as exc:
                results.append(str(exc))
        await batcher.close()
        return results

    assert asyncio.run(main()) == [["warm"], "bad item", "test inference failed: boom", ["fine"]]


def test_two_workers_run_two_batches_at_once():
    running, overlap, lock = [0], [0], threading.Lock()

    def predict(items):
        with lock:
            running[0] += 1
            overlap[0] = max(overlap[0], running[0])
        time.sleep(0.1)
        with lock:
            running[0] -= 1
        return items

    async def main():
        batcher = MicroBatcher(
            "test", predict, max_wait_s=0.0, max_items=2, max_queue=100, metrics=Metrics(),
            workers=2,
        )  # fmt: skip
        results = await asyncio.gather(*(batcher.submit([i]) for i in range(8)))
        await batcher.close()
        return results

    assert asyncio.run(main()) == [[i] for i in range(8)]
    assert overlap[0] == 2  # one worker would never have two predict calls at once
