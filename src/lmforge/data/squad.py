"""SQuAD v1.1 and v2.0 JSON: articles of paragraphs, each a context with its questions.

Every answer is checked against its context; errors name the JSON path (`data[3].paragraphs[0]...`).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from lmforge.data.records import QaExample
from lmforge.data.text import read_text
from lmforge.errors import DataError

_KINDS = {str: "a string", int: "an integer", list: "a list"}


def read_squad(path: str | Path) -> list[QaExample]:
    """One example per question; unanswerable (v2) questions have no answers."""
    try:
        root = json.loads(read_text(path))
    except json.JSONDecodeError as exc:
        raise DataError(
            path, f"not valid JSON ({exc.msg}); expected a SQuAD file", exc.lineno
        ) from None
    reader = _Reader(path)
    examples = []
    for i, article in enumerate(reader.get(root, "data", "", list)):
        where = f"data[{i}]"
        for j, paragraph in enumerate(reader.get(article, "paragraphs", where, list)):
            examples += reader.paragraph(paragraph, f"{where}.paragraphs[{j}]")
    if not examples:
        raise DataError(path, "no questions found; expected data[].paragraphs[].qas[]")
    repeated = [qid for qid, n in Counter(e.id for e in examples).items() if n > 1]
    if repeated:
        raise DataError(
            path, f"question id {repeated[0]!r} appears more than once; ids must be unique"
        )
    return examples


class _Reader:
    """Walks one file's JSON, naming the path of whatever is missing or mistyped."""

    def __init__(self, path: str | Path):
        self.path = path

    def get(self, obj: Any, key: str, where: str, kind: type) -> Any:
        if not isinstance(obj, dict):
            raise DataError(self.path, f"{where or 'top level'} must be a JSON object")
        name = f"{where}.{key}" if where else key
        if key not in obj:
            raise DataError(self.path, f"missing key {name}")
        value = obj[key]
        # bool is an int subclass: `true` is no answer_start.
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise DataError(self.path, f"{name} must be {_KINDS[kind]}, got {value!r:.40}")
        return value

    def paragraph(self, paragraph: Any, where: str) -> list[QaExample]:
        context = self.get(paragraph, "context", where, str)
        qas = self.get(paragraph, "qas", where, list)
        return [self.question(qa, context, f"{where}.qas[{k}]") for k, qa in enumerate(qas)]

    def question(self, qa: Any, context: str, where: str) -> QaExample:
        qid = self.get(qa, "id", where, str)
        question = self.get(qa, "question", where, str)
        answers = self.get(qa, "answers", where, list)
        if qa.get("is_impossible", False):
            answers = []  # v2 keeps would-be answers under plausible_answers; none count
        texts, starts = [], []
        for a, answer in enumerate(answers):
            at = f"{where}.answers[{a}]"
            texts.append(self.get(answer, "text", at, str))
            starts.append(self.get(answer, "answer_start", at, int))
            check_answer(self.path, context, texts[-1], starts[-1], f"{at} (question {qid!r})")
        return QaExample(
            id=qid, question=question, context=context, answer_texts=texts, answer_starts=starts
        )


def check_answer(source: str | Path, context: str, text: str, start: int, where: str) -> None:
    """DataError unless `text` is non-empty and found at `start` in `context`."""
    found = context[start : start + len(text)] if start >= 0 else ""
    if not text or found != text:
        raise DataError(
            source,
            f"{where}: answer text {text!r} is not at answer_start {start} of the context; "
            f"found {found!r} there",
        )
