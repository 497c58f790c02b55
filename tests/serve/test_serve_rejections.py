"""Bad input is a 4xx with a JSON error that says what is wrong; auth is enforced on /v1.

The `client` fixture runs with max_items=4, max_text_chars=300, max_body_bytes=4096.
"""

from __future__ import annotations

import json

import pytest

JSON = {"content-type": "application/json"}


def post(client, route: str, body):
    # json.dumps escapes lone surrogates (httpx's json= cannot encode them at all).
    return client.post(route, content=json.dumps(body), headers=JSON)


def error_of(response, status: int) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    return response.json()["error"]


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({"texts": "one string, not a list"}, "texts"),
        ({"texts": [1, 2]}, "texts.0"),
        ({"texts": [None]}, "texts.0"),
        ({"texts": [["nested"]]}, "texts.0"),
        ({"texts": []}, "texts"),
        ({"texts": [""]}, "texts.0"),
        ({"texts": ["fine", "   \n\t"]}, "texts.1"),
        ({"texts": ["\ud800 lone surrogate"]}, "texts.0"),
        ({"text": ["misspelt field"]}, "texts"),
        ({}, "texts"),
        ([], "body"),
        ("just a string", "body"),
    ],
)
@pytest.mark.parametrize("route", ["/v1/classify", "/v1/ner"])
def test_wrong_shapes_and_empty_texts_are_422(client, route, body, loc):
    error = error_of(post(client, route, body), 422)
    assert error["code"] == "invalid_request"
    assert loc in [d["loc"] for d in error["details"]]


@pytest.mark.parametrize(
    "body",
    [
        {"question": "Where?"},
        {"context": "Somewhere."},
        {"question": "Where?", "context": "Here.", "items": [{"question": "a", "context": "b"}]},
        {"items": []},
        {"items": [{"question": "Where?"}]},
        {"items": [{"question": "", "context": "Here."}]},
        {"items": "not a list"},
        {"question": 3, "context": "Here."},
    ],
)
def test_qa_shapes_are_422(client, body):
    assert error_of(post(client, "/v1/qa", body), 422)["code"] == "invalid_request"


def test_too_many_items_names_the_limit(client):
    error = error_of(client.post("/v1/classify", json={"texts": ["a"] * 5}), 422)
    assert error["code"] == "too_many_items"
    assert error["message"] == "texts has 5 items; the limit is 4 per request (max_items)"
    items = [{"question": "q", "context": "c"}] * 5
    assert error_of(client.post("/v1/qa", json={"items": items}), 422)["code"] == "too_many_items"


def test_over_long_text_names_the_limit_and_the_text(client):
    error = error_of(client.post("/v1/ner", json={"texts": ["ok", "x" * 301]}), 422)
    assert error["code"] == "text_too_long"
    assert error["message"] == "texts[1] has 301 characters; the limit is 300 (max_text_chars)"
    long_context = {
        "items": [{"question": "q", "context": "c"}, {"question": "q", "context": "c" * 301}]
    }
    error = error_of(client.post("/v1/qa", json=long_context), 422)
    assert error["message"].startswith("items[1].context has 301 characters")


def test_qa_question_over_the_window_is_422(client):
    # Each window needs room for context: a question of >22 tokens (see /v1/models) is refused
    # instead of reaching the tokenizer, which would panic on it.
    body = {"question": "where " * 40, "context": "The treasure is under the oak tree."}
    error = error_of(client.post("/v1/qa", json=body), 422)
    assert error["code"] == "question_too_long"
    assert "at most 22" in error["message"]


def test_body_over_the_limit_is_413(client):
    body = '{"texts": ["' + "a" * 5000 + '"]}'
    error = error_of(client.post("/v1/classify", content=body, headers=JSON), 413)
    assert error["code"] == "body_too_large"
    assert "4096 bytes" in error["message"]


def test_chunked_body_over_the_limit_is_413(client):
    def chunks():  # no Content-Length: the guard has to count
        yield b'{"texts": ["'
        for _ in range(10):
            yield b"a" * 1000
        yield b'"]}'

    response = client.post("/v1/classify", content=chunks(), headers=JSON)
    assert error_of(response, 413)["code"] == "body_too_large"


@pytest.mark.parametrize("body", [b"{", b'{"texts": [', b"texts=a", b'{"texts": ["a"]} trailing'])
def test_invalid_json_is_400(client, body):
    response = client.post("/v1/classify", content=body, headers=JSON)
    error = error_of(response, 400)
    assert error["code"] == "invalid_json"
    assert error["message"].startswith("the body is not valid JSON")


def test_invalid_utf8_is_400(client):
    body = b'{"texts": ["caf\xe9"]}'  # latin-1, not UTF-8
    response = client.post("/v1/ner", content=body, headers=JSON)
    error = error_of(response, 400)
    assert error["code"] == "invalid_utf8"
    assert "byte 15" in error["message"]


@pytest.mark.parametrize("headers", [{"content-type": "text/plain"}, {}])
def test_body_not_declared_json_is_415(client, headers):
    # curl -d sends application/x-www-form-urlencoded unless told otherwise.
    response = client.post("/v1/classify", content=b'{"texts": ["a"]}', headers=headers)
    assert error_of(response, 415)["code"] == "unsupported_media_type"
    charset = {"content-type": "application/json; charset=utf-8"}
    assert client.post("/v1/classify", content=b'{"texts": ["a"]}', headers=charset).is_success


def test_unknown_route_and_wrong_method_are_json(client):
    assert error_of(client.get("/v1/nothing"), 404)["code"] == "not_found"
    assert error_of(client.get("/v1/classify"), 405)["code"] == "method_not_allowed"


def test_api_key(serving_dir, start_service):
    with start_service(serving_dir, tasks="classification", api_key="s3cret") as c:
        body = {"texts": ["hello"]}
        missing = c.post("/v1/classify", json=body)
        assert error_of(missing, 401)["code"] == "unauthorized"
        assert missing.headers["www-authenticate"] == "Bearer"
        wrong = c.post("/v1/classify", json=body, headers={"Authorization": "Bearer s3cre"})
        assert error_of(wrong, 401)["code"] == "unauthorized"
        basic = c.post("/v1/classify", json=body, headers={"Authorization": "Basic czNjcmV0"})
        assert basic.status_code == 401
        assert c.get("/v1/models").status_code == 401
        ok = {"Authorization": "Bearer s3cret"}
        assert c.post("/v1/classify", json=body, headers=ok).status_code == 200
        assert c.get("/v1/models", headers=ok).status_code == 200
        # Probes and metrics stay open: load balancers and scrapers carry no key.
        assert c.get("/healthz").status_code == 200
        assert c.get("/readyz").status_code == 200
        assert c.get("/metrics").status_code == 200


def test_task_not_served_is_404(serving_dir, start_service):
    with start_service(serving_dir, tasks="classification") as c:
        error = error_of(c.post("/v1/ner", json={"texts": ["hello"]}), 404)
        assert error["code"] == "task_not_served"
