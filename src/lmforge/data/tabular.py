"""Text classification tables: CSV, TSV (GLUE style) and JSON lines, one example per row.

Labels are kept as strings whatever the file held (`1` and `"1"` are the same label).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lmforge.data.records import ClassificationExample
from lmforge.data.text import read_text
from lmforge.errors import DataError

FORMATS = (".csv", ".tsv", ".jsonl")


def read_classification(
    path: str | Path, text_column: str, label_column: str
) -> list[ClassificationExample]:
    """Examples of a .csv, .tsv or .jsonl file with a text and a label column."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise DataError(path, f"unknown extension {suffix!r}; expected one of {', '.join(FORMATS)}")
    text = read_text(path)
    rows = jsonl_rows(path, text) if suffix == ".jsonl" else _table_rows(path, text, suffix)
    examples = [_example(path, line, row, text_column, label_column) for line, row in rows]
    if not examples:
        raise DataError(path, "no rows below the header; expected at least one example")
    return examples


def _table_rows(path: Path, text: str, suffix: str) -> Iterator[tuple[int, dict[str, Any]]]:
    # GLUE's TSV files hold unbalanced quotes inside sentences: quotes are text there.
    if suffix == ".tsv":
        reader = csv.reader(io.StringIO(text), delimiter="\t", quoting=csv.QUOTE_NONE)
    else:
        reader = csv.reader(io.StringIO(text))
    try:
        header = next(reader)
        for fields in reader:
            if not any(f.strip() for f in fields):
                continue
            if len(fields) != len(header):
                raise DataError(
                    path,
                    f"{len(fields)} fields, expected {len(header)} as in the header ({', '.join(header)})",
                    reader.line_num,
                )
            yield reader.line_num, dict(zip(header, fields, strict=True))
    except csv.Error as exc:
        raise DataError(path, f"malformed {suffix[1:].upper()}: {exc}", reader.line_num) from None


def jsonl_rows(path: Path, text: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) of each non-blank line of a JSON-lines text."""
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(
                path, f"not valid JSON ({exc.msg}); expected one object per line", number
            ) from None
        if not isinstance(row, dict):
            raise DataError(path, f"expected a JSON object, got {type(row).__name__}", number)
        yield number, row


def _example(
    path: Path, line: int, row: dict[str, Any], text_column: str, label_column: str
) -> ClassificationExample:
    for column in (text_column, label_column):
        if column not in row:
            found = ", ".join(map(str, row)) or "none"
            raise DataError(path, f"no column {column!r} (columns found: {found})", line)
    text, label = row[text_column], row[label_column]
    if not isinstance(text, str) or not text.strip():
        raise DataError(
            path, f"empty text in column {text_column!r}; expected a non-empty string", line
        )
    return ClassificationExample(text=text.strip(), label=_label(path, line, label, label_column))


def _label(path: Path, line: int, value: Any, column: str) -> str:
    # bool is an int subclass, but `true` is no class name a user meant as "1".
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, str) and value.strip():
        return value.strip()
    raise DataError(
        path, f"label {value!r} in column {column!r}; expected a string or integer", line
    )
