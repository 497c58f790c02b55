"""A missing or broken model means a 503 readiness with the reason and a log line, not a crash.

The other tasks keep serving; requests for the broken one get a 503 JSON error.
"""

from __future__ import annotations

import json
import logging
import shutil

import pytest
from fastapi.testclient import TestClient

from serve.app import create_app
from serve.settings import Settings


@pytest.fixture
def model_log():
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.ERROR)
    handler.emit = records.append
    logger = logging.getLogger("lmforge.serve")
    logger.addHandler(handler)
    yield records
    logger.removeHandler(handler)


def damage_manifest(folder, **changes) -> None:
    path = folder / "manifest.json"
    manifest = json.loads(path.read_text()) | changes
    path.write_text(json.dumps(manifest))


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda d: shutil.rmtree(d / "ner"), "ner does not exist"),
        (lambda d: (d / "ner" / "model.onnx").unlink(), "model.onnx is missing"),
        (lambda d: (d / "ner" / "model.onnx").write_bytes(b"\x00garbage"), "model.onnx: "),
        (lambda d: (d / "ner" / "manifest.json").write_text("{"), "cannot read"),
        (
            lambda d: damage_manifest(d / "ner", labels=["O", "B-PER"]),
            "for the 2 labels in manifest.json",
        ),
        (lambda d: damage_manifest(d / "ner", task="qa"), "task is 'qa', expected 'ner'"),
        # Longer than the model's position embeddings: caught at load, not per request.
        (lambda d: damage_manifest(d / "ner", max_seq_len=200), "model.onnx: Fail: "),
        (lambda d: (d / "ner" / "tokenizer.json").write_text("[]"), "tokenizer"),
    ],
    ids=[
        "no-dir",
        "no-model",
        "corrupt-model",
        "bad-manifest",
        "label-count",
        "task",
        "seq-len",
        "tokenizer",
    ],
)
def test_broken_model_is_503_with_reason(broken_dir, start_service, model_log, damage, reason):
    damage(broken_dir)
    with start_service(broken_dir, tasks="classification,ner") as c:
        assert c.get("/healthz").status_code == 200
        ready = c.get("/readyz")
        assert ready.status_code == 503
        body = ready.json()
        assert body["status"] == "unavailable"
        assert body["models"]["classification"] == {"status": "ready", "reason": None}
        assert body["models"]["ner"]["status"] == "failed"
        assert reason in body["models"]["ner"]["reason"]

        response = c.post("/v1/ner", json={"texts": ["Alice flew to Paris."]})
        assert response.status_code == 503
        error = response.json()["error"]
        assert error["code"] == "model_unavailable"
        assert reason in error["message"]
        assert "retry-after" not in response.headers  # retrying will not fix a broken file

        assert c.post("/v1/classify", json={"texts": ["Still served."]}).status_code == 200
        assert [m["task"] for m in c.get("/v1/models").json()] == ["classification"]
        assert 'lmforge_model_ready{task="ner"} 0.0' in c.get("/metrics").text

    (record,) = model_log
    assert record.getMessage() == "model not loaded"
    assert record.task == "ner"
    assert reason in record.reason


def test_qa_stride_that_leaves_no_room_for_a_question(broken_dir, start_service):
    damage_manifest(broken_dir / "qa", doc_stride=60)
    with start_service(broken_dir, tasks="qa") as c:
        reason = c.get("/readyz").json()["models"]["qa"]["reason"]
        assert "doc_stride 60 leaves no room for a question" in reason


def test_before_startup_probes_answer_and_requests_get_503(serving_dir):
    client = TestClient(create_app(Settings(artifacts=serving_dir)))  # lifespan not run
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["status"] == "loading"
    response = client.post("/v1/classify", json={"texts": ["hello"]})
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "starting"
    assert response.headers["retry-after"] == "1"


def test_settings_reject_unknown_tasks_and_small_batches():
    with pytest.raises(ValueError, match="comma-separated subset"):
        Settings(tasks="classification,summarize")
    with pytest.raises(ValueError, match="max_batch_items"):
        Settings(max_items=64, max_batch_items=8)
    with pytest.raises(ValueError, match="DEBUG, INFO"):
        Settings(log_level="loud")
    assert Settings(api_key="").api_key is None
    assert Settings(tasks=" qa , ner,qa").task_names == ["qa", "ner"]


@pytest.mark.parametrize("spinning", [False, True])
def test_sessions_open_with_or_without_spinning_pool_threads(serving_dir, spinning):
    from serve.runtime import open_session

    settings = Settings(artifacts=serving_dir, intra_op_spinning=spinning)
    session = open_session(serving_dir / "classification" / "model.onnx", settings)
    entries = session.get_session_options().get_session_config_entry(
        "session.intra_op.allow_spinning"
    )
    assert entries == ("1" if spinning else "0")
