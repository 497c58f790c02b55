"""Text generation data: a plain-text file (documents become completions of an empty
prompt) or JSON lines with `prompt` and `completion` fields (or a `text` field alone).
"""

from __future__ import annotations

from pathlib import Path

from lmforge.data.records import GenerationExample
from lmforge.data.tabular import jsonl_rows
from lmforge.data.text import iter_corpus, read_text
from lmforge.errors import DataError


def read_generation(path: str | Path) -> list[GenerationExample]:
    """Examples of a .jsonl file, or of any other file read as plain text.

    Plain text is split into documents as the corpus reader splits it (blank-line
    separated paragraphs, else one per line).
    """
    path = Path(path)
    if path.suffix.lower() != ".jsonl":
        return [GenerationExample(prompt="", completion=doc) for doc in iter_corpus(path)]
    examples = [_example(path, line, row) for line, row in jsonl_rows(path, read_text(path))]
    if not examples:
        raise DataError(path, "no records; expected at least one JSON object")
    return examples


def _example(path: Path, line: int, row: dict) -> GenerationExample:
    if "completion" in row:
        prompt = row.get("prompt", "")
        fields = {"prompt": prompt, "completion": row["completion"]}
    elif "text" in row and "prompt" not in row:
        fields = {"prompt": "", "text": row["text"]}
    else:
        found = ", ".join(map(str, row)) or "none"
        raise DataError(
            path, f"no field 'completion' or 'text' (fields found: {found}); expected "
            '{"prompt": ..., "completion": ...} or {"text": ...}', line,
        )  # fmt: skip
    for name, value in fields.items():
        if not isinstance(value, str):
            raise DataError(
                path, f"field {name!r} is {type(value).__name__}; expected a string", line
            )
    completion = fields.get("completion", fields.get("text"))
    if not completion.strip():
        name = "completion" if "completion" in fields else "text"
        raise DataError(path, f"field {name!r} is empty; expected text to learn", line)
    return GenerationExample(prompt=fields["prompt"], completion=completion)
