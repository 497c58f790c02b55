"""Build Hugging Face models from the typed model params: a BERT encoder or a GPT-2
decoder (model.arch), for pretraining and for the tasks."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
import transformers
from tokenizers import Tokenizer
from transformers import (
    AutoConfig,
    BertConfig,
    BertForMaskedLM,
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
    replaced_loss: torch.Tensor | None = None


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


class ReplacedTokenDetection(torch.nn.Module):
    """ELECTRA pretraining of a BertForPreTraining (`hf_model`, the discriminator).

    A one-layer-in-four generator, sharing the encoder's embeddings, predicts the masked
    tokens (masked LM); its samples replace them, and the encoder learns at every position
    whether the token there is the original. MLM learns from the ~15% of positions that
    are masked, this from all of them: the ELECTRA paper's gain at small compute. Loss:
    generator MLM + 50 x replaced-token detection (the paper's weight) + sentence order.
    `mlm_loss` is the generator's, which is what held-out perplexity then measures.
    """

    DETECTION_WEIGHT = 50.0

    def __init__(self, hf_model: BertForPreTraining):
        super().__init__()
        self.hf_model = hf_model
        config = copy.deepcopy(hf_model.config)
        config.num_hidden_layers = max(1, config.num_hidden_layers // 4)
        self.generator = BertForMaskedLM(config)
        # Shared embeddings (and the generator's output projection tied to them) are
        # ELECTRA's choice: the discriminator alone would train only the embeddings of
        # tokens the generator proposes.
        self.generator.bert.embeddings = hf_model.bert.embeddings
        self.generator.cls.predictions.decoder.weight = (
            hf_model.bert.embeddings.word_embeddings.weight
        )
        hidden = config.hidden_size
        self.detector = torch.nn.Sequential(
            torch.nn.Linear(hidden, hidden), torch.nn.GELU(), torch.nn.Linear(hidden, 1)
        )

    def forward(
        self, input_ids, attention_mask, token_type_ids, labels, sentence_order_label=None
    ) -> PretrainOutput:
        selected = labels != -100
        generated = self.generator.bert(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
        )[0]
        mlm_logits = self.generator.cls(generated[selected])
        mlm_loss = F.cross_entropy(mlm_logits, labels[selected])
        original = torch.where(selected, labels, input_ids)
        with torch.no_grad():
            sampled = torch.distributions.Categorical(logits=mlm_logits.float()).sample()
        corrupted = original.clone()
        corrupted[selected] = sampled
        hidden, pooled = self.hf_model.bert(
            input_ids=corrupted, attention_mask=attention_mask, token_type_ids=token_type_ids
        )[:2]
        replaced = (corrupted != original).to(hidden.dtype)
        scores = self.detector(hidden).squeeze(-1)
        counted = attention_mask.bool()
        replaced_loss = F.binary_cross_entropy_with_logits(scores[counted], replaced[counted])
        loss = mlm_loss + self.DETECTION_WEIGHT * replaced_loss
        order_loss = None
        if sentence_order_label is not None:
            order_loss = F.cross_entropy(
                self.hf_model.cls.seq_relationship(pooled), sentence_order_label
            )
            loss = loss + order_loss
        return PretrainOutput(
            loss=loss, mlm_loss=mlm_loss, order_loss=order_loss, replaced_loss=replaced_loss
        )
