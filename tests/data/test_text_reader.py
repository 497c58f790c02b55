"""Plain text corpus reader: document splitting, WikiText unescaping, decoding errors."""

import pytest

from lmforge.data.text import parse_corpus, read_corpus, read_text
from lmforge.errors import DataError


def test_documents_are_split_on_blank_lines(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text("\nFirst line.\nStill first.\n\n  \nSecond doc.\n\n", encoding="utf-8")
    assert read_corpus(path) == ["First line.\nStill first.", "Second doc."]


def test_without_blank_lines_each_line_is_a_document(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text("one\ntwo\r\nthree\n", encoding="utf-8")
    assert read_corpus(path) == ["one", "two", "three"]


def test_wikitext_is_unescaped_and_headings_dropped():
    text = (
        "\ufeff \n = Some Title = \n \n A well @-@ known 1 @,@ 000 km road , 3 @.@ 5 m wide <unk> . \n"
        " Second line . \n \n = = Section = = \n \n Next section . \n"
    )
    assert parse_corpus(text.lstrip("\ufeff")) == [
        "A well-known 1,000 km road , 3.5 m wide <unk> .\nSecond line .",
        "Next section .",
    ]


def test_bom_is_stripped(tmp_path):
    path = tmp_path / "bom.txt"
    path.write_bytes(b"\xef\xbb\xbf = T = \n\n Body @-@ text \n")
    assert read_corpus(path) == ["Body-text"]


@pytest.mark.parametrize("content", [b"", b"\n  \n\n"])
def test_empty_file_is_an_error(tmp_path, content):
    path = tmp_path / "empty.txt"
    path.write_bytes(content)
    with pytest.raises(DataError, match="empty"):
        read_corpus(path)


def test_only_headings_is_an_error(tmp_path):
    path = tmp_path / "headings.txt"
    path.write_text(" = Title = \n\n = = Section = = \n", encoding="utf-8")
    with pytest.raises(DataError, match="no text"):
        read_corpus(path)


def test_latin1_bytes_name_file_and_line(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("first\nsecond\ncaf\u00e9 au lait\n".encode("latin-1"))
    with pytest.raises(DataError) as info:
        read_corpus(path)
    assert info.value.line == 3
    assert str(info.value).startswith(f"{path}:3: not valid UTF-8 (byte 0xe9)")


def test_missing_file_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="cannot read"):
        read_text(tmp_path / "absent.txt")
