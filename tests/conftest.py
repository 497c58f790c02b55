"""Shared fixtures: repo paths, a params factory, and a tiny tokenized corpus."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from lmforge.config import deep_merge
from support import REPO, default_params


@pytest.fixture
def write_params():
    """Write params.yaml into a folder: the defaults with overrides merged in."""

    def write(folder: Path, override: dict) -> Path:
        path = Path(folder) / "params.yaml"
        path.write_text(yaml.safe_dump(deep_merge(default_params(), override)))
        return path

    return write


def _tiny_corpus(root: Path, arch: str) -> Path:
    """artifacts/tokenizer and data/tokens (blocks of 32) built from Python's own docs."""
    import pydoc_data.topics

    from lmforge.data.corpus import write_corpus
    from lmforge.tokenizer import run_tokenize

    docs = [p for text in pydoc_data.topics.topics.values() for p in text.split("\n\n")]
    docs = [d for d in docs if d.strip()][:600]
    corpus = {"train": root / "train.parquet", "validation": root / "validation.parquet"}
    write_corpus(corpus["train"], docs[:540])
    write_corpus(corpus["validation"], docs[540:])
    run_tokenize(
        corpus, vocab_size=800, min_frequency=2, lowercase=arch == "bert", block_len=32,
        tokenizer_dir=root / "artifacts" / "tokenizer", tokens_dir=root / "data" / "tokens",
        arch=arch,
    )  # fmt: skip
    return root


@pytest.fixture(scope="session")
def tiny_corpus_dirs(tmp_path_factory) -> Path:
    """WordPiece (lowercased) and [CLS] ... [SEP] blocks, for model.arch bert."""
    return _tiny_corpus(tmp_path_factory.mktemp("corpus"), "bert")


@pytest.fixture(scope="session")
def tiny_gpt2_corpus_dirs(tmp_path_factory) -> Path:
    """Byte-level BPE (cased) and blocks without a frame, for model.arch gpt2."""
    return _tiny_corpus(tmp_path_factory.mktemp("gpt2_corpus"), "gpt2")


@pytest.fixture
def stage_env() -> dict:
    """Environment for running `python -m stages.X` from a scratch folder."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["DS_ACCELERATOR"] = "cpu"
    env.pop("RANK", None)
    return env


@pytest.fixture(autouse=True)
def _no_leaked_process_group_env():
    """An in-process fine-tune sets RANK and MASTER_PORT for its one-rank group; a stage run
    later as a subprocess would inherit them, take them for a launcher's and try to listen
    on a port this process still holds."""
    yield
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        os.environ.pop(key, None)


@pytest.fixture(scope="session")
def generation_workspace(tmp_path_factory) -> Path:
    """finetuned/generation, prepared/generation and serving/generation (compressed)."""
    from generation_fixture import build_workspace
    from lmforge.compress import compress_task
    from lmforge.config import CompressConfig

    root = build_workspace(tmp_path_factory.mktemp("generation"))
    cfg = CompressConfig(latency_runs=5, quant_search=False)
    metrics = compress_task(
        "generation",
        root / "finetuned" / "generation",
        root / "prepared",
        root / "serving" / "generation",
        cfg,
    )
    (root / "metrics.json").write_text(json.dumps(metrics))
    return root
