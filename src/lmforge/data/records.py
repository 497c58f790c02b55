"""The in-memory examples every reader produces and every task consumes.

Readers of any source (sample, local files, hub) return these; `prepare` writes them
as JSON lines (one object per line, fields as below) and later stages read them back.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class ClassificationExample:
    text: str
    label: str  # labels are kept as strings, whatever the source file held


@dataclass(frozen=True)
class NerExample:
    tokens: list[str]
    tags: list[str]  # IOB2 (BIO), one per token


@dataclass(frozen=True)
class QaExample:
    id: str
    question: str
    context: str
    # SQuAD style: several reference answers allowed; both empty = unanswerable (v2).
    answer_texts: list[str] = field(default_factory=list)
    answer_starts: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class GenerationExample:
    prompt: str  # context only, never scored; "" for plain text
    completion: str  # what the model learns to write after the prompt


Example = ClassificationExample | NerExample | QaExample | GenerationExample

RECORD_TYPES = {
    "classification": ClassificationExample,
    "ner": NerExample,
    "qa": QaExample,
    "generation": GenerationExample,
}


def to_json(example: Example) -> dict:
    return asdict(example)
