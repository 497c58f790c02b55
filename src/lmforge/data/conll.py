"""CoNLL named-entity files: one `token ... tag` line per token, sentences between blank lines.

IOB1 (CoNLL-2003 as shipped: `I-` may open an entity) and IOB2 are read; IOB2 comes out.
The tag is the last column, except that trailing numeric columns (`token TAG 0`) are skipped.
"""

from __future__ import annotations

import re
from pathlib import Path

from lmforge.data.records import NerExample
from lmforge.data.text import read_text
from lmforge.errors import DataError

_TAG = re.compile(r"O|[BI]-\S+")
_DOCSTART = "-DOCSTART-"


def read_conll(path: str | Path) -> list[NerExample]:
    """Sentences of a CoNLL file, tags converted to IOB2."""
    sentences: list[NerExample] = []
    tokens: list[str] = []
    tags: list[str] = []
    for number, line in enumerate(read_text(path).split("\n"), start=1):
        fields = line.split()
        if not fields or fields[0] == _DOCSTART:
            if tokens:
                sentences.append(NerExample(tokens=tokens, tags=to_iob2(tags)))
                tokens, tags = [], []
            continue
        tokens.append(fields[0])
        tags.append(_tag(path, number, fields))
    if tokens:
        sentences.append(NerExample(tokens=tokens, tags=to_iob2(tags)))
    if not sentences:
        raise DataError(path, "no sentences found; expected `token ... tag` lines")
    return sentences


def _tag(path: str | Path, line: int, fields: list[str]) -> str:
    columns = fields[1:]
    # Some CoNLL exports append a numeric column after the tag; a tag is never a number.
    while columns and columns[-1].isdigit():
        columns.pop()
    if not columns:
        raise DataError(
            path, f"token {fields[0]!r} has no tag; expected `token ... tag` (tag last)", line
        )
    tag = columns[-1]
    if not _TAG.fullmatch(tag):
        raise DataError(path, f"malformed tag {tag!r}; expected O, B-TYPE or I-TYPE", line)
    return tag


def to_iob2(tags: list[str]) -> list[str]:
    """IOB1 or IOB2 tags as IOB2: an `I-X` that does not continue an X entity opens one."""
    out: list[str] = []
    previous = "O"
    for tag in tags:
        if tag.startswith("I-") and previous[2:] != tag[2:]:
            tag = "B-" + tag[2:]
        out.append(tag)
        previous = tag
    return out
