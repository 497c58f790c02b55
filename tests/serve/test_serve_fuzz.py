"""Fuzzed bodies never get a 5xx: any JSON, near-valid requests and raw bytes.

Strings may hold lone surrogates, control characters and emoji; numbers may be NaN or huge.
"""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

ROUTES = ["/v1/classify", "/v1/ner", "/v1/qa"]
JSON = {"content-type": "application/json"}

# Every code point, surrogates included ("Cs" is excluded by default).
text = st.text(st.characters(exclude_categories=()), max_size=40) | st.sampled_from(
    [
        "",
        " ",
        "\x00",
        "\ud800",
        "a \udfff b",
        "Alice Smith flew to Paris.",
        "where " * 30,
        "x" * 301,
    ]
)
scalar = st.none() | st.booleans() | st.integers() | st.floats() | text
any_json = st.recursive(
    scalar,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4),
    max_leaves=12,
)
qa_item = st.fixed_dictionaries({"question": text, "context": text}) | any_json
near_valid = st.one_of(
    st.fixed_dictionaries({"texts": st.lists(text | any_json, max_size=6)}),
    st.fixed_dictionaries({"texts": st.lists(text, min_size=1, max_size=6)}),
    st.fixed_dictionaries({"question": text, "context": text}),
    st.fixed_dictionaries({"items": st.lists(qa_item, max_size=6)}),
    st.fixed_dictionaries({"texts": any_json}, optional={"items": any_json, "extra": any_json}),
)
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def assert_no_5xx(response) -> None:
    assert response.status_code < 500, response.text
    body = response.json()
    assert "results" in body if response.status_code == 200 else "error" in body


@FUZZ
@given(route=st.sampled_from(ROUTES), body=near_valid | any_json)
def test_json_bodies_never_5xx(client, route, body):
    # json.dumps writes NaN/Infinity (which Python's parser accepts) and escapes surrogates.
    assert_no_5xx(client.post(route, content=json.dumps(body), headers=JSON))


@FUZZ
@given(route=st.sampled_from(ROUTES), body=st.binary(max_size=300))
def test_raw_bytes_never_5xx(client, route, body):
    assert_no_5xx(client.post(route, content=body, headers=JSON))


# Valid shapes with wild content: whatever the characters, the model path must answer.
readable = st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=60).filter(
    str.strip
)


@FUZZ
@given(texts=st.lists(readable, min_size=1, max_size=4))
def test_any_readable_text_is_classified(client, texts):
    response = client.post("/v1/classify", json={"texts": texts})
    assert response.status_code == 200, response.text
    assert len(response.json()["results"]) == len(texts)


@FUZZ
@given(texts=st.lists(readable, min_size=1, max_size=4))
def test_any_readable_text_gets_slices_as_entities(client, texts):
    response = client.post("/v1/ner", json={"texts": texts})
    assert response.status_code == 200, response.text
    for text, result in zip(texts, response.json()["results"], strict=True):
        for entity in result["entities"]:
            assert text[entity["start"] : entity["end"]] == entity["text"]


@FUZZ
@given(question=readable, context=readable | st.text(min_size=200, max_size=300).filter(str.strip))
def test_any_readable_pair_is_answered_or_refused(client, question, context):
    response = client.post("/v1/qa", json={"question": question, "context": context})
    if response.status_code == 422:  # only a question too long for the window is refused
        assert response.json()["error"]["code"] == "question_too_long"
        return
    assert response.status_code == 200, response.text
    (answer,) = response.json()["results"]
    assert context[answer["start"] : answer["end"]] == answer["answer"]
