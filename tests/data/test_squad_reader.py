"""SQuAD reader: v1.1 and v2.0, and errors that name the JSON path."""

import json

import pytest

from lmforge.data.records import QaExample
from lmforge.data.squad import read_squad
from lmforge.errors import DataError

CONTEXT = "Ada Lovelace was born in London in 1815."


def squad(qas, context=CONTEXT, version="1.1"):
    return {
        "version": version,
        "data": [{"title": "t", "paragraphs": [{"context": context, "qas": qas}]}],
    }


def qa(qid="q1", answers=None, **extra):
    if answers is None:
        answers = [{"text": "London", "answer_start": 25}]
    return {"id": qid, "question": "Where was Ada born?", "answers": answers, **extra}


def write(tmp_path, obj):
    path = tmp_path / "squad.json"
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj, indent=1), encoding="utf-8")
    return path


def test_v1_with_several_answers(tmp_path):
    answers = [{"text": "London", "answer_start": 25}, {"text": "in London", "answer_start": 22}]
    assert read_squad(write(tmp_path, squad([qa(answers=answers)]))) == [
        QaExample("q1", "Where was Ada born?", CONTEXT, ["London", "in London"], [25, 22])
    ]


def test_v2_unanswerable_questions_have_no_answers(tmp_path):
    plausible = [{"text": "Paris", "answer_start": 0}]
    qas = [
        qa("q1"),
        qa("q2", answers=[], is_impossible=True, plausible_answers=plausible),
        qa("q3", answers=[]),
    ]
    examples = read_squad(write(tmp_path, squad(qas, version="v2.0")))
    assert [(e.id, e.answer_texts) for e in examples] == [
        ("q1", ["London"]),
        ("q2", []),
        ("q3", []),
    ]


def test_missing_key_names_the_json_path(tmp_path):
    data = squad([qa("q1"), qa("q2")])
    data["data"].insert(0, {"title": "first", "paragraphs": []})
    del data["data"][1]["paragraphs"][0]["qas"][1]["answers"][0]["answer_start"]
    with pytest.raises(
        DataError,
        match=r"missing key data\[1\]\.paragraphs\[0\]\.qas\[1\]\.answers\[0\]\.answer_start$",
    ):
        read_squad(write(tmp_path, data))


def test_missing_top_level_data(tmp_path):
    with pytest.raises(DataError, match="missing key data$"):
        read_squad(write(tmp_path, {"version": "1.1"}))


def test_wrong_type_names_the_json_path(tmp_path):
    data = squad([qa(answers=[{"text": "London", "answer_start": "25"}])])
    with pytest.raises(DataError, match=r"answers\[0\]\.answer_start must be an integer, got '25'"):
        read_squad(write(tmp_path, data))


def test_answer_not_at_answer_start(tmp_path):
    data = squad([qa("q-7", answers=[{"text": "London", "answer_start": 22}])])
    with pytest.raises(DataError) as info:
        read_squad(write(tmp_path, data))
    message = str(info.value)
    assert "data[0].paragraphs[0].qas[0].answers[0] (question 'q-7')" in message
    assert "answer text 'London' is not at answer_start 22" in message
    assert "found 'in Lon' there" in message


def test_answer_start_out_of_range(tmp_path):
    data = squad([qa(answers=[{"text": "London", "answer_start": -3}])])
    with pytest.raises(DataError, match="found '' there"):
        read_squad(write(tmp_path, data))


def test_bad_json_names_the_line(tmp_path):
    with pytest.raises(DataError, match="not valid JSON") as info:
        read_squad(write(tmp_path, '{"data": [\n  {"paragraphs": []},\n  oops\n]}'))
    assert info.value.line == 3


def test_duplicate_ids(tmp_path):
    with pytest.raises(DataError, match="question id 'q1' appears more than once"):
        read_squad(write(tmp_path, squad([qa("q1"), qa("q1")])))


def test_no_questions(tmp_path):
    with pytest.raises(DataError, match="no questions"):
        read_squad(write(tmp_path, squad([])))


def test_empty_file(tmp_path):
    with pytest.raises(DataError, match="empty"):
        read_squad(write(tmp_path, ""))


def test_latin1_bytes(tmp_path):
    path = tmp_path / "squad.json"
    path.write_bytes(
        json.dumps(squad([qa()]), indent=1, ensure_ascii=False)
        .replace("Ada", "\u00c5da")
        .encode("latin-1")
    )
    with pytest.raises(DataError, match="not valid UTF-8") as info:
        read_squad(path)
    assert info.value.line > 1
