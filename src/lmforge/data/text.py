"""Plain text: UTF-8 decoding with line-accurate errors, and the unlabelled corpus reader.

Every reader decodes through `read_text`, so a bad byte is reported the same way everywhere.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from pathlib import Path

from lmforge.errors import DataError

# WikiText writes `-`, `,` and `.` inside numbers and compounds as ` @-@ ` etc.
_WIKITEXT_ESCAPE = re.compile(r" @([-,.])@ ")
# WikiText headings: ` = Title = `, ` = = Section = = `, ...
_HEADING = re.compile(r"^ ?(= )+\S.*?( =)+ ?$")
# Bytes read at a time by the corpus reader: its memory whatever the size of the file.
CHUNK_BYTES = 8 << 20


def read_text(path: str | Path) -> str:
    """The file's text (BOM stripped, newlines as `\\n`); DataError if empty or not UTF-8."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(path, f"cannot read file: {exc.strerror}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        bad = raw[exc.start : exc.start + 1].hex()
        raise DataError(
            path, f"not valid UTF-8 (byte 0x{bad}); expected a UTF-8 encoded file", line
        ) from None
    if not text.strip():
        raise DataError(path, "file is empty; expected at least one record")
    return text.replace("\r\n", "\n")


def read_corpus(path: str | Path, chunk_bytes: int = CHUNK_BYTES) -> list[str]:
    """Documents of a plain text file (blank-line separated, else one per line)."""
    return list(iter_corpus(path, chunk_bytes))


def iter_corpus(
    path: str | Path, chunk_bytes: int = CHUNK_BYTES, progress: bool = False
) -> Iterator[str]:
    """`read_corpus`'s documents one at a time, the file read `chunk_bytes` at a time.

    Memory stays at a chunk plus one document whatever the file's size. A first pass
    decides the document rule (it stops at the first inner blank line, so it is short
    for blank-line separated text); decoding errors name the line wherever they are.
    """
    has_text, paragraphs = _layout(_lines(Path(path), chunk_bytes))
    if not has_text:
        raise DataError(path, "file is empty; expected at least one record")
    count = 0
    for doc in _documents(_lines(Path(path), chunk_bytes, progress), paragraphs):
        count += 1
        yield doc
    if not count:
        raise DataError(path, "no text found (only headings or blank lines)")


def parse_corpus(text: str) -> list[str]:
    """Split text into documents, undoing WikiText's escapes and dropping its headings."""
    lines = text.strip().split("\n")
    return list(_documents(lines, _layout(lines)[1]))


def _layout(lines: Iterable[str]) -> tuple[bool, bool]:
    """(any text at all, a blank line between two non-blank ones: blank-line separated)."""
    has_text = blank_after_text = False
    for line in lines:
        if line.strip():
            if blank_after_text:
                return True, True
            has_text = True
        elif has_text:
            blank_after_text = True
    return has_text, False


def _documents(lines: Iterable[str], paragraphs: bool) -> Iterator[str]:
    current: list[str] = []
    started = False
    for line in lines:
        if not started:  # outer blank lines separate nothing
            if not line.strip():
                continue
            line, started = line.lstrip(), True
        if _HEADING.match(line):
            continue
        line = _unescape(line).strip()
        if line and not paragraphs:
            yield line
        elif line:
            current.append(line)
        elif current:
            yield "\n".join(current)
            current = []
    if current:
        yield "\n".join(current)


def _lines(path: Path, chunk_bytes: int, progress: bool = False) -> Iterator[str]:
    """The file's lines (split on `\\n` only, `\\r\\n` too), decoded a chunk at a time."""
    try:
        f = path.open("rb")
    except OSError as exc:
        raise DataError(path, f"cannot read file: {exc.strerror}") from None
    bar = _bar(path) if progress else None
    with f:
        pending = bytearray()  # the unfinished last line of what was read so far
        before = 0  # lines before `pending`
        first = True
        while chunk := f.read(chunk_bytes):
            if first:
                chunk, first = chunk.removeprefix(b"\xef\xbb\xbf"), False
            if bar is not None:
                bar.update(len(chunk))
            cut = chunk.rfind(b"\n") + 1
            pending += chunk[:cut] if cut else chunk
            if not cut:  # a line longer than a chunk: read on
                continue
            text = _decode(bytes(pending), path, before)
            pending = bytearray(chunk[cut:])
            lines = text.split("\n")[:-1]
            before += len(lines)
            yield from (line.removesuffix("\r") for line in lines)
        if pending:
            yield _decode(bytes(pending), path, before).removesuffix("\r")
    if bar is not None:
        bar.close()


def _decode(raw: bytes, path: Path, lines_before: int) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = lines_before + raw.count(b"\n", 0, exc.start) + 1
        bad = raw[exc.start : exc.start + 1].hex()
        raise DataError(
            path, f"not valid UTF-8 (byte 0x{bad}); expected a UTF-8 encoded file", line
        ) from None


def _bar(path: Path):
    from tqdm.auto import tqdm

    size = path.stat().st_size
    return tqdm(total=size, desc=path.name, unit="B", unit_scale=True, dynamic_ncols=True)


def _unescape(line: str) -> str:
    return _WIKITEXT_ESCAPE.sub(r"\1", line)
