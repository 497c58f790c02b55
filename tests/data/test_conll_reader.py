"""CoNLL reader: sentence splitting, IOB1 to IOB2, and malformed lines."""

import pytest

from lmforge.data.conll import read_conll, to_iob2
from lmforge.data.records import NerExample
from lmforge.errors import DataError


def write(tmp_path, text):
    path = tmp_path / "ner.txt"
    path.write_text(text, encoding="utf-8")
    return path


def test_columns_docstart_and_blank_lines(tmp_path):
    text = (
        "-DOCSTART- -X- -X- O\n\n"
        "EU NNP B-NP B-ORG\nrejects VBZ B-VP O\n\n"
        "Peter NNP B-NP B-PER\nBlackburn NNP I-NP I-PER\n"
        "-DOCSTART- -X- -X- O\n"
        "BRUSSELS NNP B-NP B-LOC\n"
    )
    assert read_conll(write(tmp_path, text)) == [
        NerExample(["EU", "rejects"], ["B-ORG", "O"]),
        NerExample(["Peter", "Blackburn"], ["B-PER", "I-PER"]),
        NerExample(["BRUSSELS"], ["B-LOC"]),
    ]


def test_trailing_numeric_column_is_not_the_tag(tmp_path):
    # The shared CoNLL-2003 copy is `token TAG 0`.
    text = "1996-08-22 O 0\nGerman B-MISC 0\n"
    assert read_conll(write(tmp_path, text))[0].tags == ["O", "B-MISC"]


def test_iob1_file_comes_out_as_iob2(tmp_path):
    text = "U.N. I-ORG\nofficial O\nEkeus I-PER\nheads O\nfor O\nBaghdad I-LOC\n. O\n"
    assert read_conll(write(tmp_path, text))[0].tags == [
        "B-ORG", "O", "B-PER", "O", "O", "B-LOC", "O"
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("tags", "expected"),
    [
        (["I-PER", "I-PER", "O", "I-LOC"], ["B-PER", "I-PER", "O", "B-LOC"]),
        # IOB1 marks a second adjacent entity of the same type with B-.
        (["I-PER", "B-PER", "I-PER"], ["B-PER", "B-PER", "I-PER"]),
        # A type change inside a run opens a new entity.
        (["I-ORG", "I-LOC"], ["B-ORG", "B-LOC"]),
        (["B-ORG", "I-ORG", "O"], ["B-ORG", "I-ORG", "O"]),
    ],
)
def test_to_iob2(tags, expected):
    assert to_iob2(tags) == expected


def test_line_without_tag_names_the_line(tmp_path):
    path = write(tmp_path, "EU B-ORG\nrejects\n")
    with pytest.raises(DataError, match="token 'rejects' has no tag") as info:
        read_conll(path)
    assert info.value.line == 2


def test_token_with_only_a_number_after_it_has_no_tag(tmp_path):
    with pytest.raises(DataError, match="has no tag"):
        read_conll(write(tmp_path, "EU 0\n"))


@pytest.mark.parametrize("tag", ["PER", "X-PER", "B-", "b-per"])
def test_malformed_tag_names_the_line(tmp_path, tag):
    path = write(tmp_path, f"EU B-ORG\n\nPeter {tag}\n")
    with pytest.raises(DataError, match=f"malformed tag '{tag}'") as info:
        read_conll(path)
    assert info.value.line == 3


@pytest.mark.parametrize("text", ["", "-DOCSTART- -X- -X- O\n\n"])
def test_no_sentences_is_an_error(tmp_path, text):
    with pytest.raises(DataError, match="empty|no sentences"):
        read_conll(write(tmp_path, text))


def test_latin1_bytes(tmp_path):
    path = tmp_path / "ner.txt"
    path.write_bytes("EU B-ORG\n\nM\u00fcller B-PER\n".encode("latin-1"))
    with pytest.raises(DataError, match="not valid UTF-8") as info:
        read_conll(path)
    assert info.value.line == 3
