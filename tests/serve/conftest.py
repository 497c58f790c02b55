"""Fixture serving folders and clients for the service tests.

Tiny random BERT models exported to ONNX (int8 for classification, like compress writes),
plus "oracle" ONNX graphs whose outputs depend only on chosen token ids, so span offsets
can be checked exactly.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from lmforge.tokenizer import train_tokenizer
from serve.app import create_app
from serve.settings import Settings

ROOT = Path(__file__).resolve().parents[2]

CORPUS = [
    "Alice Smith flew to Paris and met Bob in Berlin last year.",
    "The treasure is buried under the old oak tree near the river.",
    "Filler words make a long context that spans many windows of the model.",
    "The quick brown fox jumps over the lazy dog while the cat sleeps.",
    "Where is the treasure? Who flew to Paris? What did the fox do?",
    "Ünïcödé café naïve résumé déjà vu.",
]
NER_LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
CLS_LABELS = ["negative", "positive"]
MAX_SEQ_LEN = 64
QA_STRIDE = 16
ORACLE_SEQ_LEN = 32
ORACLE_STRIDE = 8


@pytest.fixture(scope="session")
def tokenizer():
    return train_tokenizer(CORPUS * 3, vocab_size=300, min_frequency=1, lowercase=True)


def _manifest(task: str, labels: list[str], model_file: str, seq_len: int, **extra) -> dict:
    outputs = ["start_logits", "end_logits"] if task == "qa" else ["logits"]
    return {
        "task": task,
        "labels": labels,
        "max_seq_len": seq_len,
        "model_file": model_file,
        "quantized": model_file.endswith("int8.onnx"),
        "inputs": ["input_ids", "attention_mask", "token_type_ids"],
        "outputs": outputs,
        "version": "test-1",
        **extra,
    }


def _write_dir(folder: Path, tokenizer, manifest: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(folder / "tokenizer.json"))
    (folder / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")


def _export_bert(task: str, vocab_size: int, num_labels: int, path: Path) -> None:
    import torch
    from transformers import (
        BertConfig,
        BertForQuestionAnswering,
        BertForSequenceClassification,
        BertForTokenClassification,
    )

    model_class = {
        "classification": BertForSequenceClassification,
        "ner": BertForTokenClassification,
        "qa": BertForQuestionAnswering,
    }[task]
    config = BertConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=MAX_SEQ_LEN,
        num_labels=num_labels,
        attn_implementation="eager",
        return_dict=False,
    )
    torch.manual_seed(0)
    model = model_class(config).eval()
    names = ["input_ids", "attention_mask", "token_type_ids"]
    outputs = ["start_logits", "end_logits"] if task == "qa" else ["logits"]
    dims = {0: "batch"} if task == "classification" else {0: "batch", 1: "seq"}
    example = tuple(torch.ones(2, 8, dtype=torch.long) for _ in names)
    with warnings.catch_warnings():  # the legacy exporter's deprecation and tracer notes
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            example,
            str(path),
            input_names=names,
            output_names=outputs,
            dynamic_axes={
                **{n: {0: "batch", 1: "seq"} for n in names},
                **{o: dims for o in outputs},
            },
            opset_version=17,
            dynamo=False,
        )


@pytest.fixture(scope="session")
def serving_dir(tmp_path_factory, tokenizer) -> Path:
    """artifacts/serving as compress writes it: one folder per task with a manifest."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = tmp_path_factory.mktemp("serving")
    vocab = tokenizer.get_vocab_size()
    cls = root / "classification"
    _write_dir(
        cls, tokenizer, _manifest("classification", CLS_LABELS, "model.int8.onnx", MAX_SEQ_LEN)
    )
    _export_bert("classification", vocab, len(CLS_LABELS), cls / "model.onnx")
    quantize_dynamic(
        str(cls / "model.onnx"), str(cls / "model.int8.onnx"), weight_type=QuantType.QInt8
    )
    _write_dir(root / "ner", tokenizer, _manifest("ner", NER_LABELS, "model.onnx", MAX_SEQ_LEN))
    _export_bert("ner", vocab, len(NER_LABELS), root / "ner" / "model.onnx")
    qa_manifest = _manifest(
        "qa", [], "model.onnx", MAX_SEQ_LEN, doc_stride=QA_STRIDE, max_answer_len=10
    )
    _write_dir(root / "qa", tokenizer, qa_manifest)
    _export_bert("qa", vocab, 2, root / "qa" / "model.onnx")
    return root


def _oracle_graph(task: str, token_scores: dict[int, list[float]], num_labels: int):
    """An ONNX graph scoring each position by its token id alone.

    NER: logits[b, s] = token_scores[id] where id is listed, else 5 on label 0 ("O").
    QA: start_logits = 10 * (id == start_id), end_logits = 10 * (id == end_id).
    """
    import onnx
    from onnx import TensorProto, helper

    nodes, inits = [], []
    inputs = [
        helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "seq"])
        for n in ("input_ids", "attention_mask", "token_type_ids")
    ]

    def match(name: str, token_id: int) -> str:
        inits.append(helper.make_tensor(f"{name}_id", TensorProto.INT64, [], [token_id]))
        nodes.append(helper.make_node("Equal", ["input_ids", f"{name}_id"], [f"{name}_eq"]))
        nodes.append(helper.make_node("Cast", [f"{name}_eq"], [name], to=TensorProto.FLOAT))
        return name  # float [batch, seq]: 1 where the token is `token_id`

    if task == "qa":
        (start_id, _), (end_id, _) = token_scores.items()
        inits.append(helper.make_tensor("ten", TensorProto.FLOAT, [], [10.0]))
        for out, token in (("start_logits", start_id), ("end_logits", end_id)):
            nodes.append(helper.make_node("Mul", [match(f"m_{out}", token), "ten"], [out]))
        outputs = [
            helper.make_tensor_value_info(o, TensorProto.FLOAT, ["batch", "seq"])
            for o in ("start_logits", "end_logits")
        ]
    else:
        inits.append(helper.make_tensor("axis", TensorProto.INT64, [1], [2]))
        base = np.zeros(num_labels, np.float32)
        base[0] = 5.0
        inits.append(helper.make_tensor("base", TensorProto.FLOAT, [num_labels], base))
        terms = ["base"]
        for i, (token, scores) in enumerate(token_scores.items()):
            m = match(f"m{i}", token)
            inits.append(helper.make_tensor(f"s{i}", TensorProto.FLOAT, [num_labels], scores))
            nodes.append(helper.make_node("Unsqueeze", [m, "axis"], [f"u{i}"]))
            nodes.append(helper.make_node("Mul", [f"u{i}", f"s{i}"], [f"t{i}"]))
            terms.append(f"t{i}")
        nodes.append(helper.make_node("Sum", terms, ["logits"]))
        outputs = [
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "seq", num_labels])
        ]
    graph = helper.make_graph(nodes, f"oracle_{task}", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


@pytest.fixture(scope="session")
def oracle_dir(tmp_path_factory, tokenizer) -> Path:
    """NER tags "alice" B-PER, "smith" I-PER, "paris" B-LOC; QA answers "oak" .. "tree"."""
    import onnx

    root = tmp_path_factory.mktemp("oracle")
    ids = {w: tokenizer.token_to_id(w) for w in ("alice", "smith", "paris", "oak", "tree")}
    assert None not in ids.values(), ids

    def one_hot(label: str) -> list[float]:
        return [20.0 if name == label else 0.0 for name in NER_LABELS]

    ner_scores = {
        ids["alice"]: one_hot("B-PER"),
        ids["smith"]: one_hot("I-PER"),
        ids["paris"]: one_hot("B-LOC"),
    }
    _write_dir(root / "ner", tokenizer, _manifest("ner", NER_LABELS, "model.onnx", ORACLE_SEQ_LEN))
    onnx.save(_oracle_graph("ner", ner_scores, len(NER_LABELS)), str(root / "ner" / "model.onnx"))
    qa_manifest = _manifest(
        "qa", [], "model.onnx", ORACLE_SEQ_LEN, doc_stride=ORACLE_STRIDE, max_answer_len=5
    )
    _write_dir(root / "qa", tokenizer, qa_manifest)
    qa_scores = {ids["oak"]: [], ids["tree"]: []}
    onnx.save(_oracle_graph("qa", qa_scores, 0), str(root / "qa" / "model.onnx"))
    return root


def wait_until_loaded(client: TestClient, timeout: float = 30.0) -> dict:
    """Poll /readyz until no model is still loading; return its body."""
    deadline = time.monotonic() + timeout
    while True:
        body = client.get("/readyz").json()
        if body["status"] != "loading" or time.monotonic() > deadline:
            return body
        time.sleep(0.02)


@contextlib.contextmanager
def _serve(artifacts: Path, **overrides) -> Iterator[TestClient]:
    """A started app (lifespan run, models loaded) on `artifacts` with settings overrides."""
    settings = Settings(artifacts=artifacts, **({"batch_wait_ms": 0} | overrides))
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        wait_until_loaded(client)
        yield client


# Small limits so the rejection tests stay cheap; the values are asserted in messages.
LIMITS = {"max_items": 4, "max_text_chars": 300, "max_body_bytes": 4096}


@pytest.fixture(scope="session")
def start_service():
    """`with start_service(artifacts, **settings) as client:` for tests needing their own app."""
    return _serve


@pytest.fixture(scope="session")
def client(serving_dir) -> Iterator[TestClient]:
    with _serve(serving_dir, **LIMITS) as c:
        yield c


@pytest.fixture(scope="session")
def oracle(oracle_dir) -> Iterator[TestClient]:
    with _serve(oracle_dir, tasks="ner,qa", max_text_chars=20_000) as c:
        yield c


@pytest.fixture
def broken_dir(tmp_path, serving_dir) -> Path:
    """A copy of the serving folder for a test to damage."""
    target = tmp_path / "serving"
    shutil.copytree(serving_dir, target)
    return target
