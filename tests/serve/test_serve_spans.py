"""Offsets are exact: NER spans and QA answers point into the original text.

The oracle models tag "alice" B-PER, "smith" I-PER, "paris" B-LOC, and answer from "oak"
to "tree"; windows are 32 tokens with a stride of 8.
"""

from __future__ import annotations


def spans(text: str, *words: str) -> list[tuple[int, int]]:
    return [(text.index(w), text.index(w) + len(w)) for w in words]


def test_ner_offsets_point_at_the_entity_text(oracle, tokenizer):
    # Accents, an emoji and odd spacing before the entities: offsets count characters of
    # the original text, not of the normalized one.
    text = "😀 Ünïcödé  café:\tALICE Smith flew to Paris;  alicewonder stayed."
    pieces = tokenizer.encode("alicewonder", add_special_tokens=False).tokens
    assert pieces[0] == "alice" and len(pieces) > 1  # a word the tokenizer splits

    response = oracle.post("/v1/ner", json={"texts": [text]})
    assert response.status_code == 200
    entities = response.json()["results"][0]["entities"]

    assert [(e["text"], e["label"]) for e in entities] == [
        ("ALICE Smith", "PER"),  # B-PER + I-PER: one entity over two words
        ("Paris", "LOC"),
        ("alicewonder", "PER"),  # tag of the first subword, span of the whole word
    ]
    assert [(e["start"], e["end"]) for e in entities] == spans(
        text, "ALICE Smith", "Paris", "alicewonder"
    )
    assert all(e["score"] > 0.99 for e in entities)


def test_ner_batch_keeps_each_texts_offsets(oracle):
    texts = ["Paris.", "We met Alice Smith there.", "  Paris  and paris"]
    results = oracle.post("/v1/ner", json={"texts": texts}).json()["results"]
    for text, result in zip(texts, results, strict=True):
        for entity in result["entities"]:
            assert text[entity["start"] : entity["end"]] == entity["text"]
    assert [e["text"] for e in results[2]["entities"]] == ["Paris", "paris"]


def test_ner_reads_a_long_text_in_windows(oracle, tokenizer):
    filler = "Filler words make a long text that spans many windows of the model. "
    text = "Alice Smith left. " + filler * 8 + "Then alice  smith flew to Paris. " + filler * 2
    assert len(tokenizer.encode(text).ids) > 5 * 32  # more than 5 windows of 32 tokens

    response = oracle.post("/v1/ner", json={"texts": [text]})
    assert response.status_code == 200
    entities = response.json()["results"][0]["entities"]
    assert [(e["text"], e["label"]) for e in entities] == [
        ("Alice Smith", "PER"),
        ("alice  smith", "PER"),
        ("Paris", "LOC"),
    ]
    assert [(e["start"], e["end"]) for e in entities] == spans(
        text, "Alice Smith", "alice  smith", "Paris"
    )


def test_qa_reads_a_long_context_in_strides(oracle, tokenizer):
    filler = "Filler words make a long context that spans many windows of the model. "
    context = "Ünïcödé 😀 " + filler * 12 + "The treasure is under the old oak tree. " + filler * 3
    window_tokens = 32 - 3 - len(tokenizer.encode("Where is it?", add_special_tokens=False))
    assert len(tokenizer.encode(context).ids) > 5 * window_tokens  # many windows

    response = oracle.post("/v1/qa", json={"question": "Where is it?", "context": context})
    assert response.status_code == 200
    (answer,) = response.json()["results"]
    start = context.index("oak tree")
    assert (answer["answer"], answer["start"], answer["end"]) == ("oak tree", start, start + 8)
    assert answer["score"] > 0.99


def test_qa_items_each_find_their_own_span(oracle):
    contexts = [
        "oak tree at the very start.",
        "Somewhere in the middle, " * 10 + "an oak tree, and then more words follow here.",
        "No answer words in this one at all.",
    ]
    items = [{"question": "Where?", "context": c} for c in contexts]
    results = oracle.post("/v1/qa", json={"items": items}).json()["results"]
    for context, result in zip(contexts[:2], results[:2], strict=True):
        assert result["answer"] == "oak tree"
        assert context[result["start"] : result["end"]] == "oak tree"
    # Without its tokens every span scores alike; whatever is chosen is still a slice.
    last = results[2]
    assert contexts[2][last["start"] : last["end"]] == last["answer"]
