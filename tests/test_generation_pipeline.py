"""`dvc repro` on a tiny GPT-2 preset, in a scratch copy of the repository: the set of tasks
is finetune's keys, and the decoder goes through prepare, tokenize, pretrain, fine-tuning (a
folder plain `transformers` generates from), compress and the service's /v1/generate."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from lmforge.config import deep_merge
from support import REPO, TINY_MODEL, repo_copy, run_checked

pytestmark = pytest.mark.slow

TINY_GPT2 = {
    "tokenize": {"vocab_size": 500},
    "model": {**TINY_MODEL, "arch": "gpt2"},
    "pretrain": {"max_steps": 4, "micro_batch_size": 8, "checkpoint_every": 2, "eval_every": 2},
    "finetune": {"generation": {"epochs": 1, "micro_batch_size": 16, "max_seq_len": 32}},
}


@pytest.fixture(scope="module")
def reproduced(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("gpt2") / "repo"
    env = repo_copy(root)
    raw = deep_merge(yaml.safe_load((REPO / "params-gpt2.yaml").read_text()), TINY_GPT2)
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    run_checked(["dvc", "repro"], root, env)
    return root, env


def _json(path: Path) -> dict:
    return json.loads(path.read_text())


def test_stages_follow_the_tasks_of_finetune(reproduced):
    root, env = reproduced
    stages = run_checked(["dvc", "stage", "list"], root, env)
    names = {line.split()[0] for line in stages.splitlines() if line.strip()}
    assert {"finetune@generation", "compress@generation", "inputs@generation"} <= names
    assert not {n for n in names if n.split("@")[-1] in ("classification", "ner", "qa")}
    status = run_checked(["dvc", "status"], root, env)
    assert "Data and pipelines are up to date" in status, status


def test_decoder_metrics(reproduced):
    root, _ = reproduced
    pretrain = _json(root / "metrics/pretrain.json")
    assert math.isclose(pretrain["eval_perplexity"], math.exp(pretrain["eval_loss"]), rel_tol=1e-3)
    assert pretrain["validation_unk_rate"] == 0.0
    scores = _json(root / "metrics/finetune/generation.json")
    assert math.isclose(scores["perplexity"], math.exp(scores["eval_loss"]), rel_tol=1e-4)
    # Learnt something: below a uniform guess over the vocabulary.
    assert scores["eval_loss"] < math.log(500)
    assert scores["validation_examples"] == 60
    prepared = sorted(p.name for p in (root / "data/prepared").iterdir())
    assert prepared == ["corpus", "generation", "summary.json"]


def test_finetuned_folder_generates_with_plain_transformers(reproduced):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = reproduced[0] / "artifacts/finetuned/generation"
    assert _json(folder / "config.json")["model_type"] == "gpt2"
    assert _json(folder / "task.json")["task"] == "generation"
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    text = "中文 and emoji 🙂 round-trip"
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text
    prompt = tokenizer("A function definition", return_tensors="pt")
    out = model.generate(**prompt, max_new_tokens=5, do_sample=False)
    assert out.shape[1] > prompt["input_ids"].shape[1]


def test_compress_scores_what_fine_tuning_scored(reproduced):
    root, _ = reproduced
    finetuned = _json(root / "metrics/finetune/generation.json")
    compressed = _json(root / "metrics/compress/generation.json")
    assert compressed["metric_name"] == "perplexity"
    # One scoring rule (lmforge.tasks.generation) in the fine-tune and in compress.
    assert math.isclose(compressed["torch"]["metric"], finetuned["perplexity"], rel_tol=1e-3)
    assert compressed["max_abs_diff"] <= 1e-4
    assert compressed["onnx_int8"]["size_mb"] < compressed["onnx_fp32"]["size_mb"]


def test_served_generation_from_the_pipeline(reproduced):
    from fastapi.testclient import TestClient

    from serve.app import create_app
    from serve.settings import Settings
    from test_pipeline_e2e import _wait_ready

    root, _ = reproduced
    settings = Settings(artifacts=root / "artifacts/serving", tasks="generation")
    with TestClient(create_app(settings)) as client:
        assert _wait_ready(client), client.get("/readyz").json()
        body = {"prompt": "The river", "max_new_tokens": 8, "temperature": 0.8, "seed": 3}
        first = client.post("/v1/generate", json=body).json()
        assert first == client.post("/v1/generate", json=body).json()  # same seed, same text
        assert first["prompt_tokens"] > 0 and 1 <= first["completion_tokens"] <= 8
        stream = client.post("/v1/generate", json={**body, "stream": True})
        assert stream.headers["content-type"].startswith("text/event-stream")
        blocks = [b for b in stream.text.split("\n\n") if b.strip()]
        assert blocks[-1].startswith("event: done")
        done = json.loads(blocks[-1].split("data: ", 1)[1])
        pieces = [json.loads(b.split("data: ", 1)[1])["text"] for b in blocks[:-1]]
        assert "".join(pieces) + done["text"] == first["text"]
