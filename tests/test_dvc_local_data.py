"""`dvc repro` on the user's own files (data.source: local), as the README tells users to run it.

The files lie outside the repository copy, as ../shared does beside a clone, in the formats
users bring: plain text, TSV + JSONL with their own column names, CoNLL-2003 (four columns,
IOB1 tags) and SQuAD v2.0. A tiny model keeps the whole pipeline to a couple of minutes.
Then a file is edited in place: DVC must see it and re-run prepare.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml

from lmforge.config import SampleData, deep_merge
from lmforge.data.conll import read_conll
from lmforge.data.sample import write_sample_data
from support import TINY_MODEL, default_params, repo_copy, run_checked

pytestmark = pytest.mark.slow

TASK_TRAIN = {"epochs": 1, "micro_batch_size": 32, "max_seq_len": 32}


def _own_files(ext: Path) -> dict:
    """Small files in the users' formats, derived from generated sample data; their paths."""
    gen = ext / "generated"
    sizes = SampleData(classification_examples=120, ner_sentences=120, qa_examples=60)
    sample = write_sample_data(gen, sizes, seed=1)
    (ext / "corpus").mkdir()
    for split in ("train", "validation"):
        text = Path(getattr(sample.corpus, split)).read_text(encoding="utf-8")
        (ext / "corpus" / f"{split}.txt").write_text(text, encoding="utf-8")
    with open(sample.classification.train, encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    with open(ext / "reviews.tsv", "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, delimiter="\t")
        writer.writerow(["sentence", "sentiment"])
        writer.writerows([r["text"], r["label"]] for r in rows)
    lines = Path(sample.classification.validation).read_text(encoding="utf-8").splitlines()
    with open(ext / "reviews-dev.jsonl", "w", encoding="utf-8") as f:
        for row in map(json.loads, lines):
            f.write(json.dumps({"sentence": row["text"], "sentiment": row["label"]}) + "\n")
    for split in ("train", "validation"):
        _write_conll2003(read_conll(getattr(sample.ner, split)), ext / f"ner.{split}.txt")
    for split in ("train", "validation"):
        squad = json.loads(Path(getattr(sample.qa, split)).read_text(encoding="utf-8"))
        squad["version"] = "v2.0"
        first = squad["data"][0]["paragraphs"][0]["qas"]
        first.append(
            {"id": f"{split}-x", "question": "Who won?", "answers": [], "is_impossible": True}
        )
        (ext / f"squad.{split}.json").write_text(json.dumps(squad), encoding="utf-8")
    rel = "../ext/"
    return {
        "corpus": {"train": rel + "corpus/train.txt", "validation": rel + "corpus/validation.txt"},
        "classification": {
            "train": rel + "reviews.tsv",
            "validation": rel + "reviews-dev.jsonl",
            "text_column": "sentence",
            "label_column": "sentiment",
        },
        "ner": {"train": rel + "ner.train.txt", "validation": rel + "ner.validation.txt"},
        "qa": {"train": rel + "squad.train.json", "validation": rel + "squad.validation.json"},
    }


def _write_conll2003(examples, path: Path) -> None:
    """token POS chunk tag, IOB1 (I- opens an entity unless one of its type precedes it)."""
    lines = ["-DOCSTART- -X- -X- O", ""]
    for example in examples:
        previous = "O"
        for token, tag in zip(example.tokens, example.tags, strict=True):
            iob1 = tag
            if tag.startswith("B-") and previous[2:] != tag[2:]:
                iob1 = "I-" + tag[2:]
            lines.append(f"{token} NN O {iob1}")
            previous = tag
        lines.append("")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


@pytest.fixture(scope="module")
def reproduced(tmp_path_factory) -> tuple[Path, Path, dict]:
    base = tmp_path_factory.mktemp("local")
    root, ext = base / "repo", base / "ext"
    ext.mkdir()
    local = _own_files(ext)
    env = repo_copy(root)
    tiny = {
        "data": {"source": "local", "local": local},
        "tokenize": {"vocab_size": 400},
        "model": TINY_MODEL,
        "pretrain": {
            "max_steps": 4, "micro_batch_size": 8, "checkpoint_every": 2, "eval_every": 2,
        },
        "finetune": {
            "classification": TASK_TRAIN,
            "ner": TASK_TRAIN,
            "qa": {**TASK_TRAIN, "doc_stride": 8, "max_answer_len": 10},
        },
        "compress": {"latency_runs": 5, "quant_search": False},
    }  # fmt: skip
    params = deep_merge(default_params(), tiny)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run_checked(["dvc", "repro"], root, env)
    return root, ext, env


def test_repro_on_local_files_builds_every_stage(reproduced):
    root, _, env = reproduced
    summary = json.loads((root / "data/prepared/summary.json").read_text())
    assert summary["source"] == "local"
    assert summary["inputs"]["ner"]["train"] == "../ext/ner.train.txt"
    assert summary["counts"]["classification"] == {"train": 96, "validation": 24}
    assert summary["counts"]["qa"]["train"] == 49  # 48 answerable + 1 unanswerable
    assert summary["labels"]["ner"][:3] == ["O", "B-LOC", "I-LOC"]  # IOB1 read as IOB2
    for task in ("classification", "ner", "qa"):
        assert (root / f"metrics/finetune/{task}.json").is_file()
        assert (root / f"artifacts/serving/{task}/model.int8.onnx").is_file()
    status = run_checked(["dvc", "status"], root, env)
    assert "Data and pipelines are up to date" in status, status


def test_editing_a_local_file_in_place_reruns_prepare(reproduced):
    root, ext, env = reproduced
    corpus = ext / "corpus" / "train.txt"
    before = json.loads((root / "data/prepared/summary.json").read_text())
    with corpus.open("a", encoding="utf-8") as f:
        f.write("\nA new paragraph written after the first run.\n")
    # The file is a dep of inputs@corpus, whose fingerprint is a dep of prepare.
    status = run_checked(["dvc", "status", "--with-deps", "prepare"], root, env)
    assert "inputs@corpus:" in status and "modified:" in status, status
    assert "ext/corpus/train.txt" in status, status  # DVC prints outside paths absolute
    assert "inputs@ner:" not in status, status
    out = run_checked(["dvc", "repro", "prepare"], root, env)
    assert "Running stage 'inputs@corpus'" in out and "Running stage 'prepare'" in out, out
    after = json.loads((root / "data/prepared/summary.json").read_text())
    assert after["counts"]["corpus"]["train"] == before["counts"]["corpus"]["train"] + 1
    status = run_checked(["dvc", "status", "--with-deps", "prepare"], root, env)
    assert "up to date" in status, status


def test_an_omitted_corpus_has_no_inputs_stage(reproduced):
    """Only labelled data: no data.local.corpus, the corpus is the tasks' text."""
    root, _, env = reproduced
    params = yaml.safe_load((root / "params.yaml").read_text())
    del params["data"]["local"]["corpus"]
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    stages = run_checked(["dvc", "stage", "list"], root, env)
    assert "inputs@ner" in stages and "inputs@corpus" not in stages, stages
    run_checked(["dvc", "repro", "prepare"], root, env)
    summary = json.loads((root / "data/prepared/summary.json").read_text())
    assert summary["inputs"]["corpus"]["train"] == "the text of the tasks' train splits"
