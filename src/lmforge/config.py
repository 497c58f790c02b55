"""Typed params: every key of params.yaml is declared, loaded and validated here.

The loader is strict (unknown, missing or mistyped keys fail with the key's dotted
name) so a typo never silently falls back to a default.
"""

from __future__ import annotations

import copy
import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from lmforge.errors import ConfigError

ENCODER_TASKS = ("classification", "ner", "qa")
TASKS = (*ENCODER_TASKS, "generation")
# The tasks each model.arch can be fine-tuned on (the keys `finetune` may hold).
ARCH_TASKS = {"bert": ENCODER_TASKS, "gpt2": ("generation",)}


@dataclass
class SplitPaths:
    train: str
    validation: str


@dataclass
class TablePaths(SplitPaths):
    text_column: str = "text"
    label_column: str = "label"


@dataclass
class LocalData:
    """Local files per part; a task's entry is needed only when `finetune` lists the task."""

    classification: TablePaths | None = None
    ner: SplitPaths | None = None
    qa: SplitPaths | None = None
    # Plain text (prompt "") or JSONL with prompt/completion (or text) fields.
    generation: SplitPaths | None = None
    # Unlabelled text; omitted (or null): pretraining reads the task splits' text alone
    # (train for training, validation for its evaluation).
    corpus: SplitPaths | None = None


@dataclass
class HubDataset:
    """A dataset on the Hugging Face hub, read with `datasets.load_dataset`."""

    name: str
    config: str | None = None
    train_split: str = "train"
    validation_split: str = "validation"
    text_column: str = "text"
    label_column: str = "label"


@dataclass
class HubData:
    corpus: HubDataset
    classification: HubDataset | None = None
    ner: HubDataset | None = None
    qa: HubDataset | None = None
    generation: HubDataset | None = None  # text_column read as completions (prompt "")


@dataclass
class SampleData:
    """Sizes of the generated sample data (source: sample)."""

    classification_examples: int = 1200
    ner_sentences: int = 1200
    qa_examples: int = 800
    # Prompt -> completion pairs of corpus sentences; validation draws from the held-out
    # paragraphs and has at most as many pairs as they hold (60 with seed 42).
    generation_examples: int = 600
    validation_fraction: float = 0.2


@dataclass
class DataConfig:
    source: Literal["sample", "local", "hf"]
    sample: SampleData
    local: LocalData
    hf: HubData
    # Add the training text of the three tasks to the pretraining corpus
    # (in-domain pretraining; the unlabelled corpus alone is small).
    corpus_includes_task_text: bool = True


@dataclass
class TokenizeConfig:
    vocab_size: int = 8000
    min_frequency: int = 2
    lowercase: bool = True
    # true: every CJK character is a word of its own (BERT's rule), so Chinese is read a
    # character at a time. false: a run of CJK characters is a word like a Latin one, and
    # WordPiece learns multi-character pieces (Chinese words). BERT only.
    split_cjk: bool = True
    # The tokenizer learns from every k-th training document, about this much text (MB);
    # packing always covers the whole corpus.
    train_sample_mb: int = 64


@dataclass
class ModelConfig:
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    max_seq_len: int
    dropout: float = 0.1
    attention_dropout: float = 0.1
    # bert: the masked-LM encoder (classification, ner, qa); gpt2: the causal-LM decoder
    # (generation). The keys above give either its shape.
    arch: Literal["bert", "gpt2"] = "bert"
    # A Hugging Face checkpoint of model.arch's family (BERT, or GPT-2 / distilgpt2; a local
    # save_pretrained dir or a hub id) to start from; its shape and tokenizer replace the
    # keys above (all but max_seq_len and dropouts).
    checkpoint: str | None = None
    # Load pickle weights (pytorch_model.bin) when a checkpoint has no safetensors:
    # unpickling a file runs whatever code it holds, so only for checkpoints you trust.
    trust_pickle: bool = False


@dataclass
class EngineConfig:
    """What every DeepSpeed run (pretrain and each fine-tune) is configured by."""

    micro_batch_size: int
    grad_accum: int
    lr: float
    weight_decay: float = 0.01
    warmup_ratio: float = 0.06
    schedule: Literal["linear", "cosine", "constant"] = "linear"
    grad_clip: float = 1.0
    zero_stage: int = 0
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    # Path to a DeepSpeed JSON whose keys override the config built from params.
    deepspeed_config: str | None = None


@dataclass
class PretrainConfig(EngineConfig):
    max_steps: int = 200
    num_procs: int = 1
    checkpoint_every: int = 100
    keep_checkpoints: int = 2
    eval_every: int = 100
    mlm_probability: float = 0.15
    whole_word_masking: bool = False
    # ALBERT-style sentence-order prediction beside MLM: trains [CLS] and the pooler.
    sentence_order: bool = True


@dataclass
class TaskTrainConfig(EngineConfig):
    init: Literal["pretrained", "random"] = "pretrained"
    epochs: float = 3.0
    max_seq_len: int = 128
    # Hidden-layer dropout while fine-tuning; null: the pretrained model's (model.dropout).
    dropout: float | None = None


@dataclass
class QaTrainConfig(TaskTrainConfig):
    doc_stride: int = 32
    max_answer_len: int = 30


@dataclass
class FinetuneConfig:
    """One entry per task to fine-tune: the set of tasks is the keys present."""

    classification: TaskTrainConfig | None = None
    ner: TaskTrainConfig | None = None
    qa: QaTrainConfig | None = None
    generation: TaskTrainConfig | None = None  # causal LM on prompt -> completion (gpt2)

    @property
    def tasks(self) -> list[str]:
        return [task for task in TASKS if getattr(self, task) is not None]


@dataclass
class CompressConfig:
    quantize: bool = True
    per_channel: bool = False
    reduce_range: bool = False
    optimize_graph: bool = True
    # Fusion profile of model.onnx (see lmforge.compress.optimize). Set here, not picked by
    # a timing at run time, so the same params always build the same graph; lean was the
    # faster on this project's CPU (bench/inference.py compares both).
    graph_profile: Literal["full", "lean"] = "lean"
    parity_tolerance: float = 1e-4
    latency_runs: int = 50
    opset: int = 17
    # Intra-op threads of every runtime while timing (the same for all); 0: all cores.
    # 1 keeps timings comparable on a machine shared with other work.
    latency_threads: int = 1
    # Try every int8 format (U8S8/U8U8, per-tensor/per-channel, reduce_range) and keep
    # the fastest one within max_metric_drop; false: only per_channel/reduce_range above.
    quant_search: bool = True
    # Largest drop of the task metric (a fraction) the int8 model may have against fp32;
    # beyond it, the nodes whose quantization hurts most stay in fp32.
    max_metric_drop: float = 0.01
    # The causal LM's budget (generation): int8 perplexity at most this fraction above fp32's.
    max_perplexity_increase: float = 0.02


@dataclass
class Params:
    seed: int
    data: DataConfig
    tokenize: TokenizeConfig
    model: ModelConfig
    pretrain: PretrainConfig
    finetune: FinetuneConfig
    compress: CompressConfig = field(default_factory=CompressConfig)

    @property
    def prepared_tasks(self) -> list[str]:
        """What prepare reads: model.arch's tasks that the data source holds. A superset of
        the finetune keys (validate_tasks), taken from data and model.arch only, so that
        editing a fine-tune's params never re-runs prepare."""
        allowed = ARCH_TASKS[self.model.arch]
        if self.data.source == "sample":
            return list(allowed)
        group = self.data.local if self.data.source == "local" else self.data.hf
        return [task for task in allowed if getattr(group, task) is not None]


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate params.yaml; raise ConfigError naming the bad key."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    params = from_dict(Params, raw, "")
    validate(params)
    return params


def from_dict(cls: type, raw: Any, where: str) -> Any:
    """Build dataclass `cls` from a mapping, checking every key and type."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where or 'params'} must be a mapping, got {_kind(raw)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ConfigError(
            f"unknown key {_join(where, unknown[0])} (expected one of: {', '.join(fields)})"
        )
    values = {}
    for name, f in fields.items():
        key = _join(where, name)
        if name in raw:
            values[name] = _coerce(hints[name], raw[name], key)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"missing key {key}")
    return cls(**values)


def _coerce(tp: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        inner = [o for o in options if o is not type(None)]
        return _coerce(inner[0], value, key)
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise ConfigError(f"{key} must be one of {', '.join(map(str, allowed))}, got {value!r}")
        return value
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, key)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key} must be an integer, got {value!r}")
        return value
    if tp is float:
        # YAML 1.1 reads `6e-4` (no dot) as a string; accept any number-shaped string.
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key} must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key} must be a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config type {tp} for {key}")


def validate(p: Params) -> None:
    """Range checks that types alone cannot express."""
    m = p.model
    _check(m.hidden_size > 0, "model.hidden_size must be positive")
    _check(m.num_layers > 0, "model.num_layers must be positive")
    _check(
        m.num_heads > 0 and m.hidden_size % m.num_heads == 0,
        f"model.hidden_size ({m.hidden_size}) must be divisible by model.num_heads ({m.num_heads})",
    )
    _check(m.max_seq_len >= 16, f"model.max_seq_len must be at least 16, got {m.max_seq_len}")
    _check(p.tokenize.vocab_size >= 100, "tokenize.vocab_size must be at least 100")
    _check(p.tokenize.train_sample_mb > 0, "tokenize.train_sample_mb must be positive")
    _check(
        p.data.source != "local"
        or p.data.local.corpus is not None
        or p.data.corpus_includes_task_text,
        "data.local.corpus is omitted and data.corpus_includes_task_text is false: "
        "pretraining would have no text",
    )
    validate_engine(p.pretrain, "pretrain")
    _check(
        p.pretrain.max_steps > 0 or (p.pretrain.max_steps == 0 and m.checkpoint is not None),
        "pretrain.max_steps must be positive (0, no continued pretraining, only with "
        f"model.checkpoint), got {p.pretrain.max_steps}",
    )
    _check(p.pretrain.num_procs >= 1, "pretrain.num_procs must be at least 1")
    _check(p.pretrain.checkpoint_every > 0, "pretrain.checkpoint_every must be positive")
    _check(p.pretrain.keep_checkpoints >= 1, "pretrain.keep_checkpoints must be at least 1")
    _check(p.pretrain.eval_every > 0, "pretrain.eval_every must be positive")
    _check(0 < p.pretrain.mlm_probability < 1, "pretrain.mlm_probability must be between 0 and 1")
    validate_tasks(p)
    for task in p.finetune.tasks:
        cfg: TaskTrainConfig = getattr(p.finetune, task)
        where = f"finetune.{task}"
        validate_engine(cfg, where)
        _check(cfg.epochs > 0, f"{where}.epochs must be positive")
        _check(
            16 <= cfg.max_seq_len <= m.max_seq_len,
            f"{where}.max_seq_len must be between 16 and model.max_seq_len "
            f"({m.max_seq_len}, the model's positions), got {cfg.max_seq_len}",
        )
    qa = p.finetune.qa
    if qa is not None:
        _check(
            0 < qa.doc_stride < qa.max_seq_len // 2,
            f"finetune.qa.doc_stride must be between 1 and half of finetune.qa.max_seq_len, got {qa.doc_stride}",
        )
        _check(qa.max_answer_len > 0, "finetune.qa.max_answer_len must be positive")
    _check(p.compress.latency_runs >= 5, "compress.latency_runs must be at least 5")
    _check(
        p.compress.latency_threads >= 0,
        f"compress.latency_threads must be >= 0 (0: all cores), got {p.compress.latency_threads}",
    )


def validate_tasks(p: Params) -> None:
    """The finetune tasks suit model.arch, and the data source holds each one's data."""
    arch, tasks = p.model.arch, p.finetune.tasks
    allowed = ARCH_TASKS[arch]
    _check(bool(tasks), f"finetune must list at least one task ({', '.join(allowed)})")
    for task in tasks:
        _check(
            task in allowed,
            f"finetune.{task}: model.arch {arch} fine-tunes only {', '.join(allowed)}",
        )
        if p.data.source != "sample":
            group = p.data.local if p.data.source == "local" else p.data.hf
            _check(
                getattr(group, task) is not None,
                f"data.{p.data.source}.{task} is missing: finetune.{task} needs its data",
            )
    if arch == "gpt2":
        _check(
            not p.tokenize.lowercase,
            "tokenize.lowercase must be false with model.arch gpt2 "
            "(its byte-level BPE keeps text exactly as written)",
        )


def validate_engine(cfg: EngineConfig, where: str) -> None:
    _check(
        cfg.micro_batch_size > 0,
        f"{where}.micro_batch_size must be positive, got {cfg.micro_batch_size}",
    )
    _check(cfg.grad_accum > 0, f"{where}.grad_accum must be positive, got {cfg.grad_accum}")
    _check(cfg.lr > 0, f"{where}.lr must be positive, got {cfg.lr}")
    _check(cfg.weight_decay >= 0, f"{where}.weight_decay must be >= 0")
    _check(0 <= cfg.warmup_ratio < 1, f"{where}.warmup_ratio must be in [0, 1)")
    _check(cfg.grad_clip >= 0, f"{where}.grad_clip must be >= 0 (0 disables clipping)")
    _check(cfg.zero_stage in (0, 1, 2, 3), f"{where}.zero_stage must be 0-3, got {cfg.zero_stage}")
    if cfg.deepspeed_config is not None:
        _check(
            Path(cfg.deepspeed_config).is_file(),
            f"{where}.deepspeed_config: file not found: {cfg.deepspeed_config}",
        )


def deep_merge(base: dict, override: dict) -> dict:
    """A copy of `base` with `override` merged in, nested mappings key by key."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _join(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name


def _kind(value: Any) -> str:
    return type(value).__name__ if value is not None else "nothing"
