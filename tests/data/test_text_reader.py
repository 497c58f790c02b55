"""Plain text corpus reader: document splitting, WikiText unescaping, decoding errors."""

import pytest

from lmforge.data.text import iter_corpus, parse_corpus, read_corpus, read_text
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


# --- streaming: the file is read a chunk at a time ---------------------------------------


def wikitext_like(paragraphs: int) -> str:
    """Headings, escapes, blank-line separated paragraphs, CRLF and non-ASCII text."""
    parts = []
    for i in range(paragraphs):
        if i % 7 == 0:
            parts.append(f" = Heading {i} = \n \n")
        parts.append(
            f" Caf\u00e9 {i} is well @-@ known , 1 @,@ {i:03d} .\r\n Line two of {i} . \n \n"
        )
    return "".join(parts)


@pytest.mark.parametrize("blank_lines", [True, False])
def test_a_file_larger_than_the_chunk_reads_the_same(tmp_path, blank_lines):
    text = wikitext_like(300)
    if not blank_lines:
        text = "\n".join(line for line in text.split("\n") if line.strip()) + "\n"
    text += "x" * 500 + " a line longer than a chunk\n"
    path = tmp_path / "big.txt"
    path.write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))
    assert path.stat().st_size > 100 * 64
    streamed = list(iter_corpus(path, chunk_bytes=64))
    assert streamed == parse_corpus(read_text(path)) == read_corpus(path)
    assert len(streamed) == (301 if blank_lines else 601)
    assert streamed[0] == (
        "Caf\u00e9 0 is well-known , 1,000 ." + ("\nLine two of 0 ." if blank_lines else "")
    )


def test_bad_utf8_deep_in_a_large_file_names_its_line(tmp_path):
    path = tmp_path / "big.txt"
    good = "".join(f"document number {i} \u00e9t\u00e9\n" for i in range(20_000)).encode()
    path.write_bytes(good + b"caf\xe9 au lait\n" + good)
    with pytest.raises(DataError) as info:
        list(iter_corpus(path, chunk_bytes=1000))
    assert info.value.line == 20_001
    assert str(info.value).startswith(f"{path}:20001: not valid UTF-8 (byte 0xe9)")
