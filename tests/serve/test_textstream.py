"""Token ids to text pieces: whole characters only, stop strings held back and cut."""

from __future__ import annotations

import pytest

from serve.textstream import TextStream, token_bytes

# Token id -> bytes: "😀" (4 bytes) over two tokens, "中" (3 bytes) over two, plain ASCII.
TABLE = [
    b"",
    "😀".encode()[:2],
    "😀".encode()[2:],
    "中".encode()[:1],
    "中".encode()[1:],
    b"ab",
    b"c",
]


def pieces(ids: list[int], stop: list[str]) -> tuple[list[str], TextStream]:
    stream = TextStream(TABLE, stop)
    out = [stream.push(i) for i in ids]
    out.append(stream.finish())
    return out, stream


def test_bytes_wait_for_whole_characters():
    out, stream = pieces([1, 2, 3, 4, 5], [])
    assert out == ["", "😀", "", "中", "ab", ""]
    assert stream.text == "😀中ab"


def test_stop_string_split_over_tokens_is_cut():
    out, stream = pieces([5, 6, 5, 6], ["ca"])  # "ab" "c" "ab" "c": "ca" spans tokens 2-3
    assert stream.stopped and stream.text == "ab"
    assert "".join(out) == "ab"


def test_text_that_may_start_a_stop_string_waits():
    stream = TextStream(TABLE, ["cx"])
    assert stream.push(5) == "ab"
    assert stream.push(6) == ""  # "c" may begin "cx"
    assert stream.push(5) == "cab"  # it did not
    assert stream.finish() == ""


def test_held_text_is_released_at_the_end():
    out, stream = pieces([5, 6], ["cx"])
    assert out == ["ab", "", "c"] and not stream.stopped


def test_incomplete_bytes_at_the_end_become_a_replacement_character():
    out, _ = pieces([5, 1], [])
    assert "".join(out) == "ab\ufffd"


def test_table_refuses_a_tokenizer_that_is_not_byte_level():
    from tokenizers import Tokenizer, models

    tokenizer = Tokenizer(models.WordLevel({"héllo": 0, "[UNK]": 1}, unk_token="[UNK]"))
    tokenizer.add_special_tokens(["[UNK]"])
    assert token_bytes(tokenizer)[1] == b""  # special
    tokenizer = Tokenizer(models.WordLevel({"中": 0, "[UNK]": 1}, unk_token="[UNK]"))
    with pytest.raises(ValueError, match="not byte-level"):
        token_bytes(tokenizer)
