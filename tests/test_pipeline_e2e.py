"""The whole DVC pipeline on the default params, in a scratch copy of the repository.

Checks every artifact and metric path of the contract, that a second `dvc repro` has
nothing to do, that the committed dvc.lock and metrics are what the run produced (timings
aside), and that the service answers all three tasks from what was built.
"""

from __future__ import annotations

import csv
import json
import math
import os
import sys
import time
from pathlib import Path

import pytest
import yaml

from support import REPO, repo_copy, run_checked

TASKS = ("classification", "ner", "qa")
TASK_METRICS = {
    "classification": ("accuracy", "f1_macro"),
    "ner": ("f1", "precision", "recall"),
    "qa": ("exact_match", "f1"),
}


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory) -> Path:
    """A copy of the working tree, as a clean clone has it, reproduced."""
    root = tmp_path_factory.mktemp("e2e") / "repo"
    env = repo_copy(root)
    run_checked(["dvc", "repro"], root, env)
    return root


def _json(path: Path) -> dict:
    assert path.is_file(), f"missing {path}"
    return json.loads(path.read_text())


def test_contract_artifacts_exist(pipeline):
    assert (pipeline / "artifacts/tokenizer/tokenizer.json").is_file()
    assert (pipeline / "checkpoints/pretrain/latest").is_file()
    for folder in ["artifacts/pretrained", *(f"artifacts/finetuned/{t}" for t in TASKS)]:
        assert (pipeline / folder / "model.safetensors").is_file(), folder
        assert (pipeline / folder / "config.json").is_file(), folder
        assert (pipeline / folder / "tokenizer.json").is_file(), folder
    for task in TASKS:
        serving = pipeline / "artifacts/serving" / task
        for name in ("model.onnx", "model.int8.onnx", "tokenizer.json", "manifest.json"):
            assert (serving / name).is_file(), f"{serving}/{name}"
        assert _json(serving / "manifest.json")["task"] == task


def test_metrics_follow_the_contract(pipeline):
    pretrain = _json(pipeline / "metrics/pretrain.json")
    for key in ("eval_loss", "eval_perplexity", "tokens_per_second", "steps"):
        assert key in pretrain
    assert math.isclose(pretrain["eval_perplexity"], math.exp(pretrain["eval_loss"]), rel_tol=1e-3)
    # Pretraining must have learnt something: far below a uniform guess over the vocabulary.
    vocab = json.loads((pipeline / "artifacts/pretrained/config.json").read_text())["vocab_size"]
    assert pretrain["eval_loss"] < 0.8 * math.log(vocab)
    for task in TASKS:
        scores = _json(pipeline / f"metrics/finetune/{task}.json")
        for key in TASK_METRICS[task]:
            assert 0.0 <= scores[key] <= 1.0, (task, key, scores[key])
        compress = _json(pipeline / f"metrics/compress/{task}.json")
        assert compress["metric_name"] in TASK_METRICS[task]
        assert compress["max_abs_diff"] <= 1e-4
        for runtime in ("torch", "onnx_fp32", "onnx_int8"):
            for key in ("metric", "latency_ms", "size_mb"):
                assert key in compress[runtime], (task, runtime, key)
        assert compress["onnx_int8"]["size_mb"] < compress["onnx_fp32"]["size_mb"]


def test_the_tasks_learn_on_sample_data(pipeline):
    """Well above chance on the sample validation sets (2 classes, 4 entity types, spans)."""
    assert _json(pipeline / "metrics/finetune/classification.json")["accuracy"] > 0.6
    assert _json(pipeline / "metrics/finetune/ner.json")["f1"] > 0.5
    assert _json(pipeline / "metrics/finetune/qa.json")["f1"] > 0.2


def test_repro_again_is_up_to_date(pipeline):
    env = dict(
        os.environ, PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]])
    )
    out = run_checked(["dvc", "status"], pipeline, env)
    assert "Data and pipelines are up to date" in out, out
    shown = run_checked(["dvc", "metrics", "show", "--json"], pipeline, env)
    text = json.dumps(json.loads(shown))
    for name in [
        "metrics/pretrain.json",
        *(f"metrics/{s}/{t}.json" for s in ("finetune", "compress") for t in TASKS),
    ]:
        assert name in text, f"dvc metrics show lacks {name}"


# Wall-clock measurements: they differ run to run, so the files holding them (metrics and
# plots) are compared value by value without them; every other file by its dvc.lock hash.
# Pretraining checkpoints hold them too (the loss curve, so a resumed run keeps its plot).
TIMING_KEYS = {"tokens_per_second", "train_seconds", "speedup_int8_vs_torch"}
TIMED_DIRS = ("metrics/", "plots/", "checkpoints/")
REFRESH = "run `dvc repro` on a clean clone and commit dvc.lock, metrics/ and plots/"

# Trained weights are bit for bit the same only on CPUs of the same kind: AVX-512 changes
# torch's float kernels, VNNI and AMX onnxruntime's int8 ones, and the vendors' chips differ
# again (an AVX2 lock did not reproduce on an AVX-512 EPYC). The committed lock records the
# CPU that made it; whoever refreshes the lock sets LOCK_CPU to what `cpu_kind()` gives on
# theirs. On another kind of CPU, the entries that do not depend on float results
# (commands, params, code and data hashes, the outputs of the stages before training) are
# still compared; the trained models and their metrics are not.
LOCK_CPU = ("AuthenticAMD", ("avx512_bf16", "avx512_vnni", "avx512f"))
KIND_FLAGS = ("amx_int8", "avx512_bf16", "avx512_vnni", "avx512f", "avx_vnni")
TRAINED_PATHS = ("artifacts/pretrained", "artifacts/finetuned", "artifacts/serving")  # + TIMED_DIRS


def cpu_kind() -> tuple[str, tuple[str, ...]]:
    """(vendor, which of KIND_FLAGS it has), read from the first CPU in /proc/cpuinfo."""
    cpuinfo = Path("/proc/cpuinfo")
    first = cpuinfo.read_text().split("\n\n")[0] if cpuinfo.is_file() else ""
    fields = dict(
        (key.strip(), value.strip())
        for key, value in (line.split(":", 1) for line in first.splitlines() if ":" in line)
    )
    flags = set(fields.get("flags", "").split())
    return fields.get("vendor_id", ""), tuple(f for f in sorted(KIND_FLAGS) if f in flags)


SAME_CPU_AS_LOCK = cpu_kind() == LOCK_CPU


def _is_timing(key: str) -> bool:
    return key in TIMING_KEYS or key.endswith("_ms")


def _without_timings(value):
    if isinstance(value, dict):
        return {k: _without_timings(v) for k, v in value.items() if not _is_timing(k)}
    return value


def _lock_without_timed_hashes(path: Path) -> dict:
    lock = yaml.safe_load(path.read_text())
    unhashed = TIMED_DIRS if SAME_CPU_AS_LOCK else TIMED_DIRS + TRAINED_PATHS
    for entry in lock["stages"].values():
        for item in entry.get("deps", []) + entry.get("outs", []):
            if item["path"].startswith(unhashed):
                item.pop("md5", None)
                item.pop("size", None)
    return lock


def test_committed_lock_is_what_a_clean_repro_gives(pipeline):
    """Every dep and out hash (all but the timing-holding metrics and plots), cmd and param."""
    committed = _lock_without_timed_hashes(REPO / "dvc.lock")["stages"]
    produced = _lock_without_timed_hashes(pipeline / "dvc.lock")["stages"]
    assert committed.keys() == produced.keys()
    drifted = [stage for stage in committed if committed[stage] != produced[stage]]
    assert not drifted, f"dvc.lock drifted in {drifted}: {REFRESH}"


@pytest.mark.skipif(not SAME_CPU_AS_LOCK, reason="trained on another kind of CPU than the lock")
def test_committed_metrics_are_what_a_clean_repro_gives(pipeline):
    names = sorted(
        str(p.relative_to(REPO))
        for d in ("metrics", "plots")
        for p in (REPO / d).rglob("*")
        if p.is_file()
    )
    assert len(names) == 11, names  # 7 metrics files, 4 plots
    for name in names:
        ours, theirs = REPO / name, pipeline / name
        if name.endswith(".json"):
            want, got = (_without_timings(_json(p)) for p in (ours, theirs))
        else:
            want, got = (
                [_without_timings(row) for row in csv.DictReader(p.open())] for p in (ours, theirs)
            )
        assert got == want, f"{name} drifted from the committed one: {REFRESH}"


def _wait_ready(client, seconds: float = 60.0) -> bool:
    """Models load in the background after start-up; /readyz turns 200 when all are in."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if client.get("/readyz").status_code == 200:
            return True
        time.sleep(0.2)
    return False


def test_service_answers_from_the_pipeline_artifacts(pipeline):
    from fastapi.testclient import TestClient

    from serve.app import create_app
    from serve.settings import Settings

    app = create_app(Settings(artifacts=pipeline / "artifacts/serving"))
    with TestClient(app) as client:
        assert _wait_ready(client), client.get("/readyz").json()
        got = client.post("/v1/classify", json={"texts": ["The food was excellent."]}).json()
        assert (
            got["results"][0]["label"]
            in _json(pipeline / "artifacts/serving/classification/manifest.json")["labels"]
        )
        text = "Maria Lopez flew to Paris to meet the board of Acme Corp."
        entities = client.post("/v1/ner", json={"texts": [text]}).json()["results"][0]["entities"]
        for entity in entities:
            assert text[entity["start"] : entity["end"]] == entity["text"]
        context = "Alan Reed was born in Brookfield in 1961. He founded Reed Motors."
        answer = client.post(
            "/v1/qa", json={"question": "Where was Alan Reed born?", "context": context}
        ).json()
        span = answer["results"][0]
        assert context[span["start"] : span["end"]] == span["answer"]
