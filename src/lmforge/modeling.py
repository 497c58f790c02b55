"""Build Hugging Face BERT configs and models from the typed model params."""

from __future__ import annotations

from pathlib import Path

import torch
import transformers
from transformers import BertConfig, BertForMaskedLM, PreTrainedModel
from transformers.modeling_outputs import MaskedLMOutput

from lmforge.config import ModelConfig


def bert_config(model: ModelConfig, vocab_size: int, **extra) -> BertConfig:
    return BertConfig(
        vocab_size=vocab_size,
        hidden_size=model.hidden_size,
        num_hidden_layers=model.num_layers,
        num_attention_heads=model.num_heads,
        intermediate_size=model.intermediate_size,
        max_position_embeddings=model.max_seq_len,
        hidden_dropout_prob=model.dropout,
        attention_probs_dropout_prob=model.attention_dropout,
        pad_token_id=0,
        **extra,
    )


def masked_lm(config: BertConfig) -> MaskedPositionsMlm:
    return MaskedPositionsMlm(BertForMaskedLM(config))


def task_model(
    auto_model: str, init: str, pretrained_dir: Path, labels: list[str]
) -> PreTrainedModel:
    """A task head on the pretrained encoder, or the same architecture from scratch.

    `init: random` is the honest baseline: identical shape, no pretraining.
    """
    auto_class = getattr(transformers, auto_model)
    label_kwargs = {}
    if labels:
        label_kwargs = {
            "num_labels": len(labels),
            "id2label": dict(enumerate(labels)),
            "label2id": {label: i for i, label in enumerate(labels)},
        }
    if init == "pretrained":
        return auto_class.from_pretrained(str(pretrained_dir), **label_kwargs)
    config = BertConfig.from_pretrained(str(pretrained_dir), **label_kwargs)
    return auto_class.from_config(config)


class MaskedPositionsMlm(torch.nn.Module):
    """Trains a BertForMaskedLM computing vocabulary logits only at masked positions.

    The vocabulary projection is the largest matmul of a small BERT; applying it to the
    ~15% of positions that carry a label gives the same loss for far less work.
    `hf_model` is what gets saved.
    """

    def __init__(self, hf_model: BertForMaskedLM):
        super().__init__()
        self.hf_model = hf_model

    def forward(self, input_ids, attention_mask, token_type_ids, labels) -> MaskedLMOutput:
        hidden = self.hf_model.bert(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
        ).last_hidden_state
        selected = labels != -100
        logits = self.hf_model.cls(hidden[selected])
        loss = torch.nn.functional.cross_entropy(logits, labels[selected])
        return MaskedLMOutput(loss=loss)
