"""The prepare step: sources, validation, atomic canonical output, and reading it back."""

import dataclasses
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

import lmforge.data.prepare as prepare_module
from lmforge.config import (
    DataConfig,
    HubData,
    HubDataset,
    LocalData,
    SampleData,
    SplitPaths,
    TablePaths,
)
from lmforge.data.prepare import prepare, read_prepared, read_prepared_corpus
from lmforge.data.records import ClassificationExample, NerExample, QaExample
from lmforge.data.sample import sample_paths, write_sample_data
from lmforge.data.tabular import read_classification
from lmforge.errors import DataError

SIZES = SampleData(
    classification_examples=80, ner_sentences=200, qa_examples=40, validation_fraction=0.25
)
HUB = HubData(*(HubDataset(name) for name in ("w", "c", "n", "q")))
# Read only when source is local; tests of that source pass their own files.
NO_FILES = LocalData(
    corpus=SplitPaths("-", "-"),
    classification=TablePaths("-", "-"),
    ner=SplitPaths("-", "-"),
    qa=SplitPaths("-", "-"),
)


def config(source="sample", local=NO_FILES, includes_task_text=True):
    return DataConfig(source, SIZES, local, HUB, corpus_includes_task_text=includes_task_text)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("prepared")
    write_sample_data(root / "sample", SIZES, 3)
    summary = prepare(config(), root / "out", root / "sample")
    return root, summary


def test_writes_every_canonical_file(prepared):
    root, summary = prepared
    names = sorted(
        str(p.relative_to(root / "out")) for p in (root / "out").rglob("*") if p.is_file()
    )
    assert names == [
        "classification/train.jsonl", "classification/validation.jsonl",
        "corpus/train.parquet", "corpus/validation.parquet",
        "ner/train.jsonl", "ner/validation.jsonl",
        "qa/train.jsonl", "qa/validation.jsonl",
        "summary.json",
    ]  # fmt: skip
    assert json.loads((root / "out" / "summary.json").read_text()) == summary


def test_summary_counts_and_labels(prepared):
    _, summary = prepared
    assert summary["source"] == "sample"
    counts = summary["counts"]
    assert counts["classification"] == {"train": 60, "validation": 20}
    assert counts["ner"] == {"train": 150, "validation": 50}
    assert counts["qa"] == {"train": 30, "validation": 10}
    assert summary["labels"]["classification"] == ["negative", "positive"]
    assert summary["labels"]["ner"][:3] == ["O", "B-LOC", "I-LOC"]
    assert summary["inputs"]["ner"]["train"].endswith("ner/train.conll")


def test_prepared_records_round_trip(prepared):
    root, summary = prepared
    table = sample_paths(root / "sample").classification
    assert read_prepared(root / "out", "classification", "train") == read_classification(
        table.train, table.text_column, table.label_column
    )
    for task, record in (("ner", NerExample), ("qa", QaExample)):
        examples = read_prepared(root / "out", task, "validation")
        assert len(examples) == summary["counts"][task]["validation"]
        assert all(type(e) is record for e in examples)


def test_corpus_includes_task_text(prepared):
    root, summary = prepared
    corpus = read_prepared_corpus(root / "out", "train")
    assert len(corpus) == summary["counts"]["corpus"]["train"]
    assert "\n" not in "".join(corpus)
    classification = read_prepared(root / "out", "classification", "train")
    ner = read_prepared(root / "out", "ner", "train")
    contexts = {e.context for e in read_prepared(root / "out", "qa", "train")}
    assert {e.text for e in classification} <= set(corpus)
    assert {" ".join(e.tokens) for e in ner} <= set(corpus)
    assert sum(doc in contexts for doc in corpus) == len(contexts)  # each context once
    added = len(classification) + len(ner) + len(contexts)
    assert summary["corpus_task_text_documents"] == added
    # Validation corpus stays unlabelled text only.
    assert not set(read_prepared_corpus(root / "out", "validation")) & contexts


def test_corpus_without_task_text(tmp_path, prepared):
    root, with_text = prepared
    summary = prepare(config(includes_task_text=False), tmp_path / "out", root / "sample")
    assert summary["corpus_task_text_documents"] == 0
    assert summary["counts"]["corpus"]["train"] == (
        with_text["counts"]["corpus"]["train"] - with_text["corpus_task_text_documents"]
    )


def local_files(tmp_path, ner_validation="Oslo B-LOC\n", label_validation="pos"):
    files = {
        "corpus.txt": "Line one.\nContinued.\n\nLine two.\n",
        "train.csv": "text,label\ngood,pos\nbad,neg\n",
        "dev.jsonl": json.dumps({"text": "fine", "label": label_validation}) + "\n",
        "train.conll": "Peter B-PER\nin O\nOslo B-LOC\n",
        "dev.conll": ner_validation,
        "squad.json": json.dumps(
            {
                "data": [
                    {
                        "paragraphs": [
                            {
                                "context": "Ada.",
                                "qas": [
                                    {
                                        "id": "1",
                                        "question": "Who?",
                                        "answers": [{"text": "Ada", "answer_start": 0}],
                                    }
                                ],
                            }
                        ]
                    }
                ]
            }
        ),
    }
    for name, text in files.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    p = {name: str(tmp_path / name) for name in files}
    return LocalData(
        corpus=SplitPaths(p["corpus.txt"], p["corpus.txt"]),
        classification=TablePaths(p["train.csv"], p["dev.jsonl"]),
        ner=SplitPaths(p["train.conll"], p["dev.conll"]),
        qa=SplitPaths(p["squad.json"], p["squad.json"]),
    )


def test_omitted_corpus_is_the_text_of_the_tasks(tmp_path):
    local = dataclasses.replace(local_files(tmp_path), corpus=None)
    summary = prepare(config("local", local), tmp_path / "out", tmp_path / "sample")
    assert read_prepared_corpus(tmp_path / "out", "train") == [
        "good",
        "bad",
        "Peter in Oslo",
        "Ada.",
    ]
    assert read_prepared_corpus(tmp_path / "out", "validation") == ["fine", "Oslo", "Ada."]
    assert summary["inputs"]["corpus"]["train"] == "the text of the tasks' train splits"


def test_chinese_ner_sentences_join_without_spaces(tmp_path):
    local = dataclasses.replace(local_files(tmp_path), corpus=None)
    chinese = "高 B-NAME\n勇 I-NAME\n1 O\n9 O\n\nOslo B-LOC\n"
    Path(local.ner.train).write_text(chinese, encoding="utf-8")
    prepare(config("local", local), tmp_path / "out", tmp_path / "sample")
    assert "高勇19" in read_prepared_corpus(tmp_path / "out", "train")


def test_local_source(tmp_path):
    cfg = config("local", local_files(tmp_path), includes_task_text=False)
    summary = prepare(cfg, tmp_path / "out", tmp_path / "sample")
    assert summary["counts"]["corpus"] == {"train": 2, "validation": 2}
    assert read_prepared_corpus(tmp_path / "out", "train") == ["Line one. Continued.", "Line two."]


def test_validation_label_not_in_training(tmp_path):
    cfg = config("local", local_files(tmp_path, label_validation="neutral"))
    with pytest.raises(
        DataError,
        match=r"dev\.jsonl: label 'neutral' does not occur in the training data .*train\.csv, labels: neg, pos",
    ):
        prepare(cfg, tmp_path / "out", tmp_path / "sample")
    assert not (tmp_path / "out").exists()


def test_validation_ner_tag_not_in_training(tmp_path):
    cfg = config("local", local_files(tmp_path, ner_validation="UN B-ORG\n"))
    with pytest.raises(DataError, match=r"dev\.conll: label 'B-ORG' does not occur"):
        prepare(cfg, tmp_path / "out", tmp_path / "sample")


def test_hub_source_and_empty_split(tmp_path, monkeypatch):
    data = {
        "corpus": {"train": ["doc"], "validation": ["doc"]},
        "classification": {s: [ClassificationExample("t", "a")] for s in ("train", "validation")},
        "ner": {s: [NerExample(["x"], ["O"])] for s in ("train", "validation")},
        "qa": {"train": [QaExample("1", "q", "c")], "validation": []},
    }
    monkeypatch.setattr(prepare_module, "load_hub", lambda cfg, tasks: data)
    with pytest.raises(DataError, match=r"^hf:q\[validation\]: the qa validation split is empty"):
        prepare(config("hf"), tmp_path / "out", tmp_path / "sample")


def test_output_is_replaced_whole(tmp_path):
    cfg = config("local", local_files(tmp_path))
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "stale.txt").write_text("old run")
    prepare(cfg, tmp_path / "out", tmp_path / "sample")
    assert not (tmp_path / "out" / "stale.txt").exists()
    assert (tmp_path / "out" / "summary.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_failed_write_leaves_previous_output_untouched(tmp_path, monkeypatch):
    cfg = config("local", local_files(tmp_path))
    out = tmp_path / "out"
    prepare(cfg, out, tmp_path / "sample")
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    real_write = prepare_module._write_lines
    written = []

    def dies_midway(path: Path, lines):
        if written:
            raise KeyboardInterrupt  # as if the run were killed after one file
        written.append(path)
        real_write(path, lines)

    monkeypatch.setattr(prepare_module, "_write_lines", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        prepare(cfg, out, tmp_path / "sample")
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out")] == []


def test_read_prepared_errors(tmp_path):
    with pytest.raises(DataError, match="not found; run the prepare stage first"):
        read_prepared(tmp_path, "ner", "train")
    with pytest.raises(ValueError, match="unknown task 'pos'"):
        read_prepared(tmp_path, "pos", "train")
    (tmp_path / "ner").mkdir()
    (tmp_path / "ner" / "train.jsonl").write_text(
        '{"tokens": ["a"], "tags": ["O"]}\n{"text": "a"}\n'
    )
    with pytest.raises(DataError, match="not a prepared ner record") as info:
        read_prepared(tmp_path, "ner", "train")
    assert info.value.line == 2


def test_the_corpus_streams_through_in_chunks_smaller_than_a_file(tmp_path, monkeypatch):
    """Files read 256 bytes and written 1 kB of text at a time give the whole corpus, in order."""
    import lmforge.data.corpus as corpus_module

    local = local_files(tmp_path)
    docs = [f"Document {i} with caf\u00e9 text." for i in range(2000)]
    big = tmp_path / "big.txt"
    big.write_text("\n".join(docs) + "\n", encoding="utf-8")
    local.corpus = SplitPaths(str(big), str(big))
    monkeypatch.setattr(corpus_module, "ROW_GROUP_BYTES", 1000)
    summary = prepare(
        config("local", local, False), tmp_path / "out", tmp_path / "sample", chunk_bytes=256
    )
    assert summary["counts"]["corpus"] == {"train": 2000, "validation": 2000}
    assert read_prepared_corpus(tmp_path / "out", "train") == docs
    # many bounded row groups, not one table of everything
    assert pq.ParquetFile(tmp_path / "out/corpus/train.parquet").metadata.num_row_groups > 50


def test_bad_bytes_deep_in_a_corpus_stop_prepare_with_file_and_line(tmp_path):
    local = local_files(tmp_path)
    big = tmp_path / "big.txt"
    big.write_bytes(b"fine text\n" * 5000 + b"\xff\n" + b"more\n" * 10)
    local.corpus = SplitPaths(str(big), str(big))
    with pytest.raises(DataError, match=rf"^{big}:5001: not valid UTF-8 \(byte 0xff\)"):
        prepare(config("local", local), tmp_path / "out", tmp_path / "sample", chunk_bytes=512)
    assert not (tmp_path / "out").exists()
