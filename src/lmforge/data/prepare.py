"""The prepare step: read the configured source, validate it, write canonical files atomically.

Later stages read only what this writes, through `read_prepared` and `prepared_corpus`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from itertools import chain
from pathlib import Path

from lmforge.artifacts import atomic_dir
from lmforge.config import ENCODER_TASKS, DataConfig, LocalData
from lmforge.data.conll import read_conll
from lmforge.data.corpus import corpus_batches, write_corpus
from lmforge.data.generation import read_generation
from lmforge.data.hub import hub_source, load_hub
from lmforge.data.records import RECORD_TYPES, Example, to_json
from lmforge.data.sample import sample_paths
from lmforge.data.squad import read_squad
from lmforge.data.tabular import read_classification
from lmforge.data.text import CHUNK_BYTES, iter_corpus
from lmforge.errors import DataError
from lmforge.tasks.script import join_tokens

SPLITS = ("train", "validation")
LABELLED = ("classification", "ner")  # tasks with a label set
# {"classification": {"train": [Example, ...], ...}, ...}
DataSplits = dict[str, dict[str, list]]
# {"train": documents, "validation": documents}: streamed, never held whole
CorpusSplits = dict[str, Iterable[str]]


def prepare(
    cfg: DataConfig,
    out_dir: str | Path,
    sample_dir: str | Path,
    chunk_bytes: int = CHUNK_BYTES,
    task_names: Sequence[str] = ENCODER_TASKS,
) -> dict:
    """Read, validate and write every split of the corpus and of `task_names` (the tasks
    params.yaml fine-tunes); return the summary.

    `sample_dir` holds the sample files (`stages.sample` writes them), read for source: sample.
    The corpus streams from its files to `corpus/<split>.parquet`, `chunk_bytes` at a time.
    """
    corpus, tasks, origins = load_source(cfg, Path(sample_dir), chunk_bytes, task_names)
    check(tasks, origins)
    unlabelled = cfg.source != "local" or cfg.local.corpus is not None
    # Without an unlabelled corpus the corpus already is the tasks' text.
    task_docs = task_text(tasks, "train") if cfg.corpus_includes_task_text and unlabelled else []
    with atomic_dir(Path(out_dir)) as tmp:
        # Written next to out_dir and renamed into place: a killed run never leaves it half-written.
        corpus_counts = {}
        for split in SPLITS:
            docs = chain(corpus[split], task_docs) if split == "train" else corpus[split]
            written = write_corpus(tmp / "corpus" / f"{split}.parquet", map(_one_line, docs))
            if not written["documents"]:
                raise DataError(origins["corpus"][split], f"the corpus {split} split is empty")
            corpus_counts[split] = written["documents"]
        summary = {
            "source": cfg.source,
            "inputs": origins,
            "counts": {
                "corpus": corpus_counts,
                **{
                    name: {s: len(rows) for s, rows in splits.items()}
                    for name, splits in tasks.items()
                },
            },
            "labels": {
                task: labels(task, tasks[task]["train"]) for task in LABELLED if task in tasks
            },
            "corpus_task_text_documents": len(task_docs),
        }
        _write_tasks(tmp, tasks, summary)
    return summary


def load_source(
    cfg: DataConfig,
    sample_dir: Path,
    chunk_bytes: int = CHUNK_BYTES,
    task_names: Sequence[str] = ENCODER_TASKS,
) -> tuple[CorpusSplits, DataSplits, dict]:
    """The corpus and task data of `cfg.source`, and where each split came from."""
    if cfg.source == "hf":
        origins = {
            name: {s: hub_source(getattr(cfg.hf, name), s) for s in SPLITS}
            for name in ("corpus", *task_names)
        }
        data = load_hub(cfg.hf, tasks=task_names)
        return data.pop("corpus"), data, origins
    local = sample_paths(sample_dir) if cfg.source == "sample" else cfg.local
    parts = [name for name in ("corpus", *task_names) if getattr(local, name) is not None]
    origins = {name: {s: str(getattr(getattr(local, name), s)) for s in SPLITS} for name in parts}
    tasks = read_local_tasks(local, task_names)
    if local.corpus is None:
        # No unlabelled text: the corpus is the tasks' text (validation's for evaluation).
        origins["corpus"] = {s: f"the text of the tasks' {s} splits" for s in SPLITS}
        return {s: task_text(tasks, s) for s in SPLITS}, tasks, origins
    corpus = {s: iter_corpus(getattr(local.corpus, s), chunk_bytes, progress=True) for s in SPLITS}
    return corpus, tasks, origins


def read_local_tasks(local: LocalData, task_names: Sequence[str] = ENCODER_TASKS) -> DataSplits:
    """Every split of the local files of `task_names`, each through its format's reader."""
    table = local.classification
    readers = {
        "classification": lambda path: read_classification(
            path, table.text_column, table.label_column
        ),
        "ner": read_conll,
        "qa": read_squad,
        "generation": read_generation,
    }
    return {
        task: {s: readers[task](getattr(getattr(local, task), s)) for s in SPLITS}
        for task in task_names
    }


def check(data: DataSplits, origins: dict) -> None:
    """Every task split has data; validation labels all occur in training (a model can predict them)."""
    for name, splits in data.items():
        for split, rows in splits.items():
            if not rows:
                raise DataError(origins[name][split], f"the {name} {split} split is empty")
    for task in (t for t in LABELLED if t in data):
        known = set(labels(task, data[task]["train"]))
        unseen = [label for label in labels(task, data[task]["validation"]) if label not in known]
        if unseen:
            raise DataError(
                origins[task]["validation"],
                f"label {unseen[0]!r} does not occur in the training data "
                f"({origins[task]['train']}, labels: {', '.join(sorted(known))})",
            )


def labels(task: str, examples: list[Example]) -> list[str]:
    """Label set of classification or NER examples; NER as O, then B-/I- per entity type."""
    if task == "classification":
        return sorted({e.label for e in examples})
    tags = {tag for e in examples for tag in e.tags}
    return sorted(tags, key=lambda t: (t != "O", t[2:], t[:2]))


def task_text(data: DataSplits, split: str) -> list[str]:
    """Text of the tasks' `split` as corpus documents: in-domain text for pretraining."""
    texts = [e.text for e in data.get("classification", {}).get(split, [])]
    texts += [join_tokens(e.tokens) for e in data.get("ner", {}).get(split, [])]
    # Many questions share a context; one copy of each is enough.
    texts += dict.fromkeys(e.context for e in data.get("qa", {}).get(split, []))
    texts += [e.prompt + e.completion for e in data.get("generation", {}).get(split, [])]
    return texts


def _write_tasks(out_dir: Path, tasks: DataSplits, summary: dict) -> None:
    for split in SPLITS:
        for task in tasks:
            rows = (json.dumps(to_json(e), ensure_ascii=False) for e in tasks[task][split])
            _write_lines(out_dir / task / f"{split}.jsonl", rows)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")


def _write_lines(path: Path, lines: Iterable[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="\n") as f:
        for line in lines:
            f.write(line + "\n")


def _one_line(doc: str) -> str:
    return re.sub(r"\s*[\r\n]+\s*", " ", doc).strip()


def read_prepared(out_dir: str | Path, task: str, split: str) -> list[Example]:
    """Examples of one task and split, as `prepare` wrote them."""
    if task not in RECORD_TYPES:
        raise ValueError(f"unknown task {task!r}; expected one of {', '.join(RECORD_TYPES)}")
    path = Path(out_dir) / task / f"{split}.jsonl"
    record = RECORD_TYPES[task]
    examples = []
    for number, line in enumerate(_prepared_lines(path), start=1):
        try:
            examples.append(record(**json.loads(line)))
        except (json.JSONDecodeError, TypeError) as exc:
            raise DataError(path, f"not a prepared {task} record ({exc})", number) from None
    return examples


def read_prepared_corpus(out_dir: str | Path, split: str) -> list[str]:
    """Documents of one corpus split, whole (small corpora and tests; `tokenize` streams)."""
    return [doc for batch in corpus_batches(prepared_corpus(out_dir, split)) for doc in batch]


def prepared_corpus(out_dir: str | Path, split: str) -> Path:
    """The Parquet file of one corpus split, as `prepare` wrote it."""
    path = Path(out_dir) / "corpus" / f"{split}.parquet"
    if not path.is_file():
        raise DataError(path, "not found; run the prepare stage first")
    return path


def _prepared_lines(path: Path) -> list[str]:
    if not path.is_file():
        raise DataError(path, "not found; run the prepare stage first")
    # split("\n"), not splitlines(): text may hold other Unicode line separators.
    return [line for line in path.read_text(encoding="utf-8").split("\n") if line]
