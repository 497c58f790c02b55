"""Classification tables: CSV, GLUE-style TSV and JSONL, and every bad-input error."""

import json

import pytest

from lmforge.data.records import ClassificationExample as Ex
from lmforge.data.tabular import read_classification
from lmforge.errors import DataError


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_csv_with_quoted_commas(tmp_path):
    path = write(tmp_path, "t.csv", 'id,text,label\n1,"Good, really good.",pos\n2,Bad.,neg\n')
    assert read_classification(path, "text", "label") == [
        Ex("Good, really good.", "pos"),
        Ex("Bad.", "neg"),
    ]


def test_tsv_keeps_quotes_as_text(tmp_path):
    # SST-2 style: unbalanced quotes must not swallow the following rows.
    path = write(tmp_path, "t.tsv", 'sentence\tlabel\nthe " best " film \t1\nan " odd one\t0\n')
    assert read_classification(path, "sentence", "label") == [
        Ex('the " best " film', "1"),
        Ex('an " odd one', "0"),
    ]


def test_jsonl_labels_become_strings(tmp_path):
    rows = [{"text": "a", "label": 1}, {"text": "b", "label": "1"}, {"text": "c", "label": 0}]
    path = write(tmp_path, "t.jsonl", "\n".join(json.dumps(r) for r in rows) + "\n\n")
    labels = [e.label for e in read_classification(path, "text", "label")]
    assert labels == ["1", "1", "0"]


@pytest.mark.parametrize(
    ("name", "text"),
    [("t.csv", "body,y\nhello,1\n"), ("t.jsonl", '{"body": "hello", "y": 1}\n')],
)
def test_missing_column_names_the_columns_found(tmp_path, name, text):
    with pytest.raises(DataError, match=r"no column 'text' \(columns found: body, y\)"):
        read_classification(write(tmp_path, name, text), "text", "y")


def test_empty_text_names_the_line(tmp_path):
    path = write(tmp_path, "t.csv", "text,label\nfine,1\n  ,0\n")
    with pytest.raises(DataError, match="empty text") as info:
        read_classification(path, "text", "label")
    assert info.value.line == 3


def test_bad_json_names_the_line(tmp_path):
    path = write(tmp_path, "t.jsonl", '{"text": "a", "label": 1}\n{"text": "b", label: 0}\n')
    with pytest.raises(DataError, match="not valid JSON") as info:
        read_classification(path, "text", "label")
    assert info.value.line == 2


def test_json_line_that_is_not_an_object(tmp_path):
    path = write(tmp_path, "t.jsonl", '["a", 1]\n')
    with pytest.raises(DataError, match="expected a JSON object, got list"):
        read_classification(path, "text", "label")


@pytest.mark.parametrize("label", [None, True, "", 1.5])
def test_label_must_be_string_or_integer(tmp_path, label):
    path = write(tmp_path, "t.jsonl", json.dumps({"text": "a", "label": label}) + "\n")
    with pytest.raises(DataError, match="expected a string or integer"):
        read_classification(path, "text", "label")


def test_wrong_number_of_fields(tmp_path):
    path = write(tmp_path, "t.tsv", "sentence\tlabel\ngood\t1\nno label here\n")
    with pytest.raises(DataError, match="1 fields, expected 2") as info:
        read_classification(path, "sentence", "label")
    assert info.value.line == 3


def test_unknown_extension(tmp_path):
    with pytest.raises(DataError, match=r"unknown extension '\.xlsx'"):
        read_classification(write(tmp_path, "t.xlsx", "x"), "text", "label")


@pytest.mark.parametrize(("name", "text"), [("t.csv", ""), ("t.csv", "text,label\n")])
def test_empty_file_or_header_only(tmp_path, name, text):
    with pytest.raises(DataError, match="empty|no rows"):
        read_classification(write(tmp_path, name, text), "text", "label")


def test_latin1_bytes(tmp_path):
    path = tmp_path / "t.csv"
    path.write_bytes("text,label\nna\u00efve,1\n".encode("latin-1"))
    with pytest.raises(DataError, match="not valid UTF-8") as info:
        read_classification(path, "text", "label")
    assert info.value.line == 2


def test_malformed_csv(tmp_path):
    path = write(tmp_path, "t.csv", "text,label\n" + '"' + "x" * 200_000 + '",1\n')
    with pytest.raises(DataError, match="malformed CSV: field larger than field limit"):
        read_classification(path, "text", "label")
