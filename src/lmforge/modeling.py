"""Build Hugging Face models from the typed model params: a BERT encoder or a GPT-2
decoder (model.arch), for pretraining and for the tasks."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
import transformers
from tokenizers import Tokenizer
from transformers import (
    AutoConfig,
    BertConfig,
    BertForPreTraining,
    GPT2Config,
    GPT2LMHeadModel,
    PreTrainedModel,
)
from transformers.utils import ModelOutput

from lmforge.config import ModelConfig
from lmforge.tokenizer import EOS

# The config keys of each architecture's hidden-layer (not attention) dropout: the ones
# model.dropout sets (bert_config, gpt2_config).
HIDDEN_DROPOUT = {"bert": ("hidden_dropout_prob",), "gpt2": ("resid_pdrop", "embd_pdrop")}


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


def gpt2_config(model: ModelConfig, vocab_size: int, eos_id: int, **extra) -> GPT2Config:
    """`<|endoftext|>` (the tokenizer's `eos_id`) stands in as bos, eos and pad."""
    return GPT2Config(
        vocab_size=vocab_size,
        n_embd=model.hidden_size,
        n_layer=model.num_layers,
        n_head=model.num_heads,
        n_inner=model.intermediate_size,
        n_positions=model.max_seq_len,
        resid_pdrop=model.dropout,
        embd_pdrop=model.dropout,
        attn_pdrop=model.attention_dropout,
        bos_token_id=eos_id,
        eos_token_id=eos_id,
        pad_token_id=eos_id,
        **extra,
    )


def masked_lm(config: BertConfig) -> MaskedPositionsMlm:
    return MaskedPositionsMlm(BertForPreTraining(config))


def pretraining_model(model: ModelConfig, tokenizer: Tokenizer) -> torch.nn.Module:
    """What model.arch pretrains from scratch: BERT under the masked-LM (+ sentence order)
    loss, or GPT-2 whose own loss, given labels = input_ids, is next-token prediction."""
    vocab_size = tokenizer.get_vocab_size()
    if model.arch == "gpt2":
        return GPT2LMHeadModel(gpt2_config(model, vocab_size, tokenizer.token_to_id(EOS)))
    return masked_lm(bert_config(model, vocab_size))


def task_model(
    auto_model: str,
    init: str,
    pretrained_dir: Path,
    labels: list[str],
    dropout: float | None = None,
) -> PreTrainedModel:
    """A task head on the pretrained model, or the same architecture from scratch.

    `init: random` is the honest baseline: identical shape, no pretraining. `dropout`
    replaces the pretrained config's hidden-layer dropout (None keeps it).
    """
    auto_class = getattr(transformers, auto_model)
    config = AutoConfig.from_pretrained(str(pretrained_dir))
    if labels:
        config.num_labels = len(labels)
        config.id2label = dict(enumerate(labels))
        config.label2id = {label: i for i, label in enumerate(labels)}
    if dropout is not None:
        for key in HIDDEN_DROPOUT[config.model_type]:
            setattr(config, key, dropout)
    if init == "pretrained":
        return auto_class.from_pretrained(str(pretrained_dir), config=config)
    return auto_class.from_config(config)


@dataclass
class PretrainOutput(ModelOutput):
    loss: torch.Tensor | None = None
    mlm_loss: torch.Tensor | None = None
    order_loss: torch.Tensor | None = None


class MaskedPositionsMlm(torch.nn.Module):
    """Pretraining loss of a BertForPreTraining: masked LM (+ sentence order when labelled).

    Vocabulary logits are computed only at masked positions: the vocabulary projection
    is the largest matmul of a small BERT, and the ~15% of positions that carry a label
    give the same loss for far less work. `hf_model` is what gets saved.
    """

    def __init__(self, hf_model: BertForPreTraining):
        super().__init__()
        self.hf_model = hf_model

    def forward(
        self, input_ids, attention_mask, token_type_ids, labels, sentence_order_label=None
    ) -> PretrainOutput:
        hidden, pooled = self.hf_model.bert(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
        )[:2]
        heads = self.hf_model.cls
        selected = labels != -100
        mlm_logits = heads.predictions(hidden[selected])
        mlm_loss = F.cross_entropy(mlm_logits, labels[selected])
        if sentence_order_label is None:
            return PretrainOutput(loss=mlm_loss, mlm_loss=mlm_loss)
        # Sentence order (ALBERT's SOP) trains [CLS] and the pooler, which MLM never
        # touches: without it a classifier must learn to pool from scratch.
        order_loss = F.cross_entropy(heads.seq_relationship(pooled), sentence_order_label)
        return PretrainOutput(loss=mlm_loss + order_loss, mlm_loss=mlm_loss, order_loss=order_loss)
