"""Service settings, read from LMFORGE_* environment variables (pydantic-settings).

Every request limit here is enforced by the routes and listed on /docs.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from lmforge.config import ENCODER_TASKS, TASKS

# The encoder tasks: the default run builds their folders; the causal LM comes from the
# gpt2 branch, so it is served when LMFORGE_TASKS names it (`make serve` sets it to the
# tasks params.yaml fine-tunes).
DEFAULT_TASKS = ",".join(ENCODER_TASKS)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LMFORGE_", frozen=True)

    artifacts: Path = Field(Path("artifacts/serving"), description="Folder of <task>/ dirs.")
    api_key: SecretStr | None = Field(None, description="When set, /v1 needs Bearer auth.")
    # A comma-separated string rather than a list: env values stay plain (no JSON).
    tasks: str = Field(DEFAULT_TASKS, description="Tasks to load, comma-separated.")

    max_items: int = Field(32, ge=1, description="Texts or QA items per request.")
    max_text_chars: int = Field(10_000, ge=1, description="Characters per text/question/context.")
    max_body_bytes: int = Field(1 << 20, ge=1, description="Request body size in bytes.")

    batch_wait_ms: float = Field(
        2.0, ge=0, description="How long a batch waits for company (only while requests overlap)."
    )
    max_batch_items: int = Field(64, ge=1, description="Items per batch.")
    max_batch_tokens: int = Field(
        0,
        ge=0,
        description="Padded tokens per onnxruntime call; a bigger batch runs in several calls, "
        "rows sorted by length (0: one call per batch).",
    )
    int8_rows_alone: bool = Field(
        True,
        description="An int8 model runs each row alone, unpadded, so a text's answer does not "
        "depend on the requests batched with it (dynamic quantization scales activations per "
        "call) and equals what compress scored; false: int8 batches run as fp32 ones do.",
    )
    inline_lone_requests: bool = Field(
        True,
        description="A one-item request that is the only one in flight runs on the event "
        "loop, skipping the batch thread's two hand-offs (batching is unchanged under load).",
    )
    batch_workers: int = Field(
        1, ge=1, description="Batches of one task run at once (overlapping onnxruntime calls)."
    )
    max_queue_items: int = Field(1024, ge=1, description="Items waiting per task before 503.")
    max_new_tokens: int = Field(512, ge=1, description="Largest max_new_tokens of a generation.")
    max_streams: int = Field(
        16, ge=1, description="Generations decoded together, one token each per step; "
        "later ones wait for a place.",
    )  # fmt: skip
    intra_op_threads: int = Field(0, ge=0, description="onnxruntime intra-op threads (0: auto).")
    inter_op_threads: int = Field(0, ge=0, description="onnxruntime inter-op threads (0: auto).")
    intra_op_spinning: bool = Field(
        False,
        description="onnxruntime's pool threads spin while waiting for work: faster for a "
        "lone client, slower under load (they take CPU from the event loop).",
    )

    log_level: str = Field("INFO", description="Level of the JSON logs on stderr.")
    access_log: bool = Field(True, description="One JSON log line per request (lmforge.access).")

    @field_validator("api_key", mode="before")
    @classmethod
    def _empty_key_is_no_key(cls, value):
        # `LMFORGE_API_KEY=` (set but empty) must not turn on auth with an empty key.
        return value or None

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        if value.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ValueError("expected DEBUG, INFO, WARNING or ERROR")
        return value.upper()

    @field_validator("tasks")
    @classmethod
    def _known_tasks(cls, value: str) -> str:
        names = [name.strip() for name in value.split(",") if name.strip()]
        unknown = sorted(set(names) - set(TASKS))
        if not names or unknown:
            raise ValueError(f"expected a comma-separated subset of {', '.join(TASKS)}")
        return ",".join(dict.fromkeys(names))

    @model_validator(mode="after")
    def _one_request_fits(self) -> Settings:
        # Otherwise a request within max_items could never be batched or queued.
        for name in ("max_batch_items", "max_queue_items"):
            if getattr(self, name) < self.max_items:
                raise ValueError(
                    f"{name} ({getattr(self, name)}) must be >= max_items ({self.max_items})"
                )
        return self

    @property
    def task_names(self) -> list[str]:
        return self.tasks.split(",")
