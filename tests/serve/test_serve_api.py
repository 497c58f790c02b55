"""Every route's happy path: probes, models, the three tasks, metrics, docs, access logs."""

from __future__ import annotations

import json
import logging

from serve.metrics import JsonFormatter


def test_healthz(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_readyz_when_every_model_loaded(client):
    response = client.get("/readyz")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ready"
    assert {task: m["status"] for task, m in body["models"].items()} == {
        "classification": "ready",
        "ner": "ready",
        "qa": "ready",
    }


def test_models_lists_each_task(client):
    models = {m["task"]: m for m in client.get("/v1/models").json()}
    assert set(models) == {"classification", "ner", "qa"}
    assert models["classification"]["labels"] == ["negative", "positive"]
    assert models["classification"]["quantized"] is True
    assert models["classification"]["model_file"] == "model.int8.onnx"
    assert models["ner"]["labels"] == ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
    assert models["qa"]["version"] == "test-1"
    assert models["qa"]["max_question_tokens"] == (64 - 3 - 16) // 2


def test_classify(client):
    response = client.post("/v1/classify", json={"texts": ["Great food.", "Awful service!"]})
    assert response.status_code == 200
    results = response.json()["results"]
    assert len(results) == 2
    for result in results:
        assert result["label"] in {"negative", "positive"}
        assert 0.5 <= result["score"] <= 1.0  # the best of two labels


def test_ner_spans_are_slices_of_the_text(client):
    texts = ["Alice Smith flew to Paris.", "Ünïcödé café in Berlin 😀 naïve"]
    response = client.post("/v1/ner", json={"texts": texts})
    assert response.status_code == 200
    results = response.json()["results"]
    assert len(results) == 2
    for text, result in zip(texts, results, strict=True):
        for entity in result["entities"]:
            assert entity["text"] == text[entity["start"] : entity["end"]]
            assert entity["label"] in {"PER", "LOC"}
            assert 0.0 <= entity["score"] <= 1.0


def test_qa_single_and_items_forms(client):
    context = "The treasure is buried under the old oak tree near the river."
    single = client.post("/v1/qa", json={"question": "Where is it?", "context": context})
    assert single.status_code == 200
    (answer,) = single.json()["results"]
    assert answer["answer"] == context[answer["start"] : answer["end"]]
    items = [{"question": "Where is it?", "context": context}] * 3
    several = client.post("/v1/qa", json={"items": items})
    assert several.status_code == 200
    assert several.json()["results"] == [answer] * 3


def test_metrics_in_prometheus_format(client):
    client.post("/v1/classify", json={"texts": ["Counted."]})
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert 'lmforge_http_requests_total{method="POST",route="/v1/classify",status="200"}' in text
    assert 'lmforge_http_request_duration_seconds_bucket{le="0.005",route="/v1/classify"}' in text
    assert 'lmforge_batch_size_count{task="classification"}' in text
    assert 'lmforge_queue_depth{task="classification"} 0.0' in text
    assert "lmforge_http_requests_in_flight 1.0" in text  # this scrape itself
    assert 'lmforge_model_ready{task="ner"} 1.0' in text
    assert 'quantized="True",task="classification",version="test-1"' in text  # model info


def test_unknown_paths_share_one_metric_label(client):
    client.get("/no/such/path/1")
    client.get("/no/such/path/2")
    text = client.get("/metrics").text
    assert 'route="<unmatched>",status="404"' in text
    assert "/no/such/path" not in text


def test_request_id_is_echoed_or_made(client):
    given = client.get("/healthz", headers={"X-Request-ID": "abc-123"})
    assert given.headers["x-request-id"] == "abc-123"
    assert len(client.get("/healthz").headers["x-request-id"]) == 32


def test_access_log_is_one_json_line_per_request(client):
    lines: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(JsonFormatter().format(record))
    logger = logging.getLogger("lmforge.access")
    logger.addHandler(handler)
    try:
        client.post("/v1/classify", json={"texts": ["Logged."]}, headers={"X-Request-ID": "r1"})
    finally:
        logger.removeHandler(handler)
    (line,) = [json.loads(line) for line in lines]
    assert line["msg"] == "request"
    assert line["request_id"] == "r1"
    assert line["route"] == "/v1/classify"
    assert line["status"] == 200
    assert line["duration_ms"] > 0


def test_access_log_can_be_turned_off_and_metrics_still_count(serving_dir, start_service):
    lines: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = lines.append
    logger = logging.getLogger("lmforge.access")
    logger.addHandler(handler)
    try:
        with start_service(serving_dir, tasks="classification", access_log=False) as quiet:
            assert quiet.post("/v1/classify", json={"texts": ["Not logged."]}).status_code == 200
            text = quiet.get("/metrics").text
    finally:
        logger.removeHandler(handler)
    assert lines == []
    assert (
        'lmforge_http_requests_total{method="POST",route="/v1/classify",status="200"} 1.0' in text
    )


def test_docs_list_limits_and_examples(client):
    assert client.get("/docs").status_code == 200
    spec = client.get("/openapi.json").json()
    description = spec["info"]["description"]
    assert "| 4 (LMFORGE_MAX_ITEMS) |" in description
    assert "| 300 (LMFORGE_MAX_TEXT_CHARS) |" in description
    assert "4096 bytes (LMFORGE_MAX_BODY_BYTES)" in description
    for path in ("/v1/classify", "/v1/ner", "/v1/qa"):
        post = spec["paths"][path]["post"]
        assert post["requestBody"]["content"]["application/json"]["examples"], path
        assert {"400", "401", "413", "415", "422", "503"} <= set(post["responses"]), path
    schemas = spec["components"]["schemas"]
    for name in ("ClassifyResponse", "NerResponse", "QaResponse", "ErrorResponse"):
        assert schemas[name]["examples"], name
    assert "HTTPBearer" in spec["components"]["securitySchemes"]
