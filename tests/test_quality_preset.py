"""The real-data preset (params-real.yaml) and bench/quality.py's TF-IDF baseline."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from lmforge.config import ENCODER_TASKS as TASKS
from lmforge.config import load_params
from support import REPO, SHARED_DATA

PRESET = REPO / "params-real.yaml"
ZH_PRESET = REPO / "params-zh.yaml"


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_quality", REPO / "bench" / "quality.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_preset_loads_and_reads_local_data():
    params = load_params(PRESET)
    assert params.data.source == "local"
    assert params.data.corpus_includes_task_text
    for task in TASKS:
        assert getattr(params.finetune, task).init == "pretrained"
    assert params.finetune.qa.max_seq_len <= params.model.max_seq_len


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"{SHARED_DATA} not present")
def test_preset_points_at_the_shared_data():
    local = load_params(PRESET).data.local
    for part in ("corpus", *TASKS):
        for split in ("train", "validation"):
            path = REPO / getattr(getattr(local, part), split)  # relative to the repo root
            assert path.is_file(), f"data.local.{part}.{split}: {path} not found"
            assert path.resolve().is_relative_to(SHARED_DATA.resolve())


def test_scaled_preset_is_valid_and_absolute(tmp_path):
    bench = load_bench()
    raw = bench.preset_for_run(PRESET, 0.02)
    full = load_params(PRESET)
    assert raw["pretrain"]["max_steps"] == max(2, round(full.pretrain.max_steps * 0.02))
    assert raw["finetune"]["ner"]["epochs"] == pytest.approx(full.finetune.ner.epochs * 0.02)
    assert Path(raw["data"]["local"]["ner"]["train"]).is_absolute()
    bench.write_params(tmp_path, raw)  # strict loader accepts it


def test_tfidf_baseline_on_a_tiny_dataset():
    bench = load_bench()
    good = ["a great film", "great acting and a fine story", "wonderful and great", "fine fun"]
    bad = ["a dull film", "dull acting and a bad story", "awful and dull", "bad boring"]
    train_texts = [f"{t} {i}" for i in range(5) for t in good + bad]
    train_labels = [label for _ in range(5) for label in ["1"] * 4 + ["0"] * 4]
    result = bench.tfidf_baseline(
        train_texts,
        train_labels,
        ["great fun film", "dull bad film"],
        ["1", "0"],
        cs=(1.0, 10.0),
        holdout=0.25,
    )
    assert result["accuracy"] == 1.0
    assert result["f1_macro"] == 1.0
    assert result["C"] in (1.0, 10.0)
    assert set(result["holdout_accuracy"]) == {"1.0", "10.0"}


def test_tfidf_baseline_reads_chinese_as_characters():
    bench = load_bench()
    good, bad = (
        ["服务很好", "房间干净很好", "早餐不错", "很好很方便"],
        ["服务很差", "房间太脏", "早餐难吃", "很差很吵"],
    )
    train_texts = [f"{t}{i}" for i in range(5) for t in good + bad]
    train_labels = [label for _ in range(5) for label in ["1"] * 4 + ["0"] * 4]
    result = bench.tfidf_baseline(
        train_texts,
        train_labels,
        ["位置很好", "位置很差"],
        ["1", "0"],
        cs=(1.0, 10.0),
        holdout=0.25,
    )
    assert result["features"] == "char 1-3 grams"
    assert result["accuracy"] == 1.0


def test_chinese_preset_pretrains_on_the_task_text():
    params = load_params(ZH_PRESET)
    assert params.data.source == "local" and params.data.local.corpus is None
    assert params.data.corpus_includes_task_text
    assert params.finetune.qa.max_seq_len <= params.model.max_seq_len


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"{SHARED_DATA} not present")
def test_chinese_preset_points_at_the_shared_chinese_data():
    local = load_params(ZH_PRESET).data.local
    for part in TASKS:
        for split in ("train", "validation"):
            path = REPO / getattr(getattr(local, part), split)
            assert path.is_file(), f"data.local.{part}.{split}: {path} not found"
            assert path.resolve().is_relative_to((SHARED_DATA / "zh").resolve())


def test_table_and_goals():
    bench = load_bench()
    finetune = {
        "classification": {
            "pretrained": {"accuracy": 0.85, "f1_macro": 0.84},
            "random": {"accuracy": 0.80, "f1_macro": 0.79},
        },
        "ner": {
            "pretrained": {"f1": 0.70, "precision": 0.7, "recall": 0.7},
            "random": {"f1": 0.68, "precision": 0.6, "recall": 0.6},
        },
    }
    rows = bench.table_rows(finetune, {"accuracy": 0.82, "f1_macro": 0.81})
    assert rows[0] == {
        "task": "classification",
        "metric": "accuracy",
        "pretrained": 0.85,
        "random": 0.80,
        "delta": 0.05,
        "tfidf": 0.82,
    }
    assert rows[2]["tfidf"] is None
    goals = bench.check_goals(finetune, {"accuracy": 0.82})
    assert goals == {
        "classification: pretrained beats random by > 0 points accuracy": True,
        "ner: pretrained beats random by > 5 points f1": False,
        "classification: transformer beats TF-IDF + LR accuracy": True,
    }


def test_checkpoint_runs_merge_into_one_report(tmp_path):
    """bench/quality.py --checkpoint --merge: rows of several runs in one table; a task
    measured twice takes the last run's figures, continued and peer rows their own goals."""
    import json

    bench = load_bench()
    first = {
        "peer": {"ner": {"f1": 0.88, "steps": 10, "wall_seconds": 500.0}},
        "direct": {"finetune": {"ner": {"f1": 0.87}}, "seconds": {"finetune.ner": 400.0}},
    }
    second = {
        "peer": {"ner": {"f1": 0.88, "steps": 10, "wall_seconds": 490.0}},
        "direct": {
            "finetune": {"ner": {"f1": 0.89}, "qa": {"f1": 0.5, "exact_match": 0.4}},
            "seconds": {"finetune.ner": 450.0, "finetune.qa": 900.0},
        },
        "continued": {
            "finetune": {"ner": {"f1": 0.893}},
            "seconds": {"pretrain": 600.0, "finetune.ner": 450.0},
        },
    }
    paths = []
    for i, run in enumerate((first, second)):
        paths.append(tmp_path / f"run{i}.json")
        paths[-1].write_text(json.dumps(run))
    reference = {"finetune": {"ner": {"pretrained": {"f1": 0.68}, "random": {"f1": 0.70}}}}
    report, text = bench.checkpoint_report(bench.merge_runs(paths), reference)
    ner = next(row for row in report["rows"] if row["task"] == "ner")
    assert (ner["checkpoint"], ner["checkpoint_s"], ner["peer_s"]) == (0.89, 450.0, 490.0)
    assert ner["continued_s"] == 1050.0
    assert report["goals"] == {
        "ner: checkpoint beats every from-scratch row and TF-IDF (f1)": True,
        "ner: continued pretraining adds >= 0.5 points": False,  # +0.3 points
        "ner: lmforge beats the HF Trainer peer in no more wall time": True,
        "qa: checkpoint beats every from-scratch row and TF-IDF (f1)": True,
        "qa: F1 >= 0.45 from the checkpoint": True,
    }
    assert "| ner | f1 | 0.6800 | 0.7000 | — | 0.8900 (450 s) | 0.8930 (1050 s) |" in text
