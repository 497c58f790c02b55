"""Datasets on the Hugging Face hub, converted into the records the local readers produce.

Loading needs the network; the conversions below are pure functions of a `datasets.Dataset`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from lmforge.config import ENCODER_TASKS, HubData, HubDataset
from lmforge.data.conll import to_iob2
from lmforge.data.records import (
    ClassificationExample,
    GenerationExample,
    NerExample,
    QaExample,
)
from lmforge.data.squad import check_answer
from lmforge.data.text import parse_corpus
from lmforge.errors import DataError

SPLITS = ("train", "validation")


def load_hub(
    cfg: HubData, load: Callable[..., Any] | None = None, tasks: Sequence[str] = ENCODER_TASKS
) -> dict[str, dict[str, list]]:
    """{part: {split: records}} for the corpus and `tasks`.

    `load` defaults to `datasets.load_dataset`; NER rows are read from `tokens`/`ner_tags`
    and QA rows from SQuAD's columns, whatever text_column/label_column say.
    """
    if load is None:
        from datasets import load_dataset as load
    out: dict[str, dict[str, list]] = {}
    for task in ("corpus", *tasks):
        spec: HubDataset = getattr(cfg, task)
        out[task] = {}
        for split in SPLITS:
            rows = load(spec.name, spec.config, split=split_name(spec, split))
            out[task][split] = convert(task, rows, spec, hub_source(spec, split))
    return out


def split_name(spec: HubDataset, split: str) -> str:
    return spec.train_split if split == "train" else spec.validation_split


def hub_source(spec: HubDataset, split: str) -> str:
    """How errors name a hub split, e.g. `hf:nyu-mll/glue/sst2[validation]`."""
    config = f"/{spec.config}" if spec.config else ""
    return f"hf:{spec.name}{config}[{split_name(spec, split)}]"


def convert(task: str, rows: Any, spec: HubDataset, source: str) -> list:
    """Records of one task from one hub split."""
    if task == "corpus":
        return corpus_from_hub(rows, spec.text_column, source)
    if task == "classification":
        return classification_from_hub(rows, spec.text_column, spec.label_column, source)
    if task == "ner":
        return ner_from_hub(rows, source)
    if task == "generation":
        return generation_from_hub(rows, spec.text_column, source)
    return qa_from_hub(rows, source)


def generation_from_hub(rows: Any, text_column: str, source: str) -> list[GenerationExample]:
    """Non-empty texts as completions of an empty prompt (TinyStories-style datasets)."""
    _require(rows, [text_column], source)
    texts = (text.strip() for text in rows[text_column] if isinstance(text, str))
    return [GenerationExample(prompt="", completion=text) for text in texts if text]


def corpus_from_hub(rows: Any, text_column: str, source: str) -> list[str]:
    """Documents from rows of lines (WikiText: one line per row, blank rows between)."""
    _require(rows, [text_column], source)
    return parse_corpus("\n".join(line.rstrip("\n") for line in rows[text_column]))


def classification_from_hub(
    rows: Any, text_column: str, label_column: str, source: str
) -> list[ClassificationExample]:
    """Examples with ClassLabel ids turned into their names (`0` -> `negative`)."""
    _require(rows, [text_column, label_column], source)
    names = _class_names(rows.features[label_column])
    examples = []
    for i, (text, label) in enumerate(zip(rows[text_column], rows[label_column], strict=True)):
        if not isinstance(text, str) or not text.strip():
            raise DataError(source, f"row {i}: empty text in column {text_column!r}")
        examples.append(
            ClassificationExample(text=text.strip(), label=_name(label, names, source, i))
        )
    return examples


def ner_from_hub(rows: Any, source: str) -> list[NerExample]:
    """Sentences from `tokens` and `ner_tags` (ClassLabel ids or tag strings), as IOB2."""
    _require(rows, ["tokens", "ner_tags"], source)
    names = _class_names(getattr(rows.features["ner_tags"], "feature", None))
    examples = []
    for i, (tokens, tags) in enumerate(zip(rows["tokens"], rows["ner_tags"], strict=True)):
        if len(tokens) != len(tags):
            raise DataError(source, f"row {i}: {len(tokens)} tokens but {len(tags)} tags")
        if tokens:
            tags = [_name(tag, names, source, i) for tag in tags]
            examples.append(NerExample(tokens=list(tokens), tags=to_iob2(tags)))
    return examples


def qa_from_hub(rows: Any, source: str) -> list[QaExample]:
    """Examples from SQuAD columns; `answers` is {text: [...], answer_start: [...]}."""
    _require(rows, ["id", "question", "context", "answers"], source)
    examples = []
    for i, row in enumerate(rows):
        texts = list(row["answers"]["text"])
        starts = list(row["answers"]["answer_start"])
        if len(texts) != len(starts):
            raise DataError(source, f"row {i}: {len(texts)} answer texts but {len(starts)} starts")
        for text, start in zip(texts, starts, strict=True):
            check_answer(source, row["context"], text, start, f"row {i} (question {row['id']!r})")
        examples.append(
            QaExample(
                id=str(row["id"]),
                question=row["question"],
                context=row["context"],
                answer_texts=texts,
                answer_starts=starts,
            )
        )
    return examples


def _require(rows: Any, columns: list[str], source: str) -> None:
    missing = [c for c in columns if c not in rows.column_names]
    if missing:
        found = ", ".join(rows.column_names)
        raise DataError(source, f"no column {missing[0]!r} (columns found: {found})")


def _class_names(feature: Any) -> list[str] | None:
    return list(feature.names) if hasattr(feature, "names") else None


def _name(value: Any, names: list[str] | None, source: str, row: int) -> str:
    if names is None:
        return str(value)
    # GLUE test splits mark missing labels with -1.
    if not 0 <= value < len(names):
        raise DataError(source, f"row {row}: label {value} is not a class id (0-{len(names) - 1})")
    return names[value]
