"""Plain text: UTF-8 decoding with line-accurate errors, and the unlabelled corpus reader.

Every reader decodes through `read_text`, so a bad byte is reported the same way everywhere.
"""

from __future__ import annotations

import re
from pathlib import Path

from lmforge.errors import DataError

# WikiText writes `-`, `,` and `.` inside numbers and compounds as ` @-@ ` etc.
_WIKITEXT_ESCAPE = re.compile(r" @([-,.])@ ")
# WikiText headings: ` = Title = `, ` = = Section = = `, ...
_HEADING = re.compile(r"^ ?(= )+\S.*?( =)+ ?$")


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


def read_corpus(path: str | Path) -> list[str]:
    """Documents of a plain text file (blank-line separated, else one per line)."""
    docs = parse_corpus(read_text(path))
    if not docs:
        raise DataError(path, "no text found (only headings or blank lines)")
    return docs


def parse_corpus(text: str) -> list[str]:
    """Split text into documents, undoing WikiText's escapes and dropping its headings."""
    # Outer blank lines separate nothing; only inner ones mark document boundaries.
    lines = [_unescape(line) for line in text.strip().split("\n") if not _HEADING.match(line)]
    if not any(not line.strip() for line in lines):
        return [line.strip() for line in lines if line.strip()]
    docs, current = [], []
    for line in lines:
        if line.strip():
            current.append(line.strip())
        elif current:
            docs.append("\n".join(current))
            current = []
    if current:
        docs.append("\n".join(current))
    return docs


def _unescape(line: str) -> str:
    return _WIKITEXT_ESCAPE.sub(r"\1", line)
