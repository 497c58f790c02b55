"""Export a causal language model to ONNX with its key/value cache, and check it against
PyTorch over a multi-step decode.

One graph reads both the prompt (past length 0) and each later token (past length n): the
service then needs one session, one set of weights in memory and one int8 model, and a
prompt pass is just a step with many new tokens (see lmforge.decoder for its inputs).

The exporter is torch's TorchScript one on a small wrapper, because none of the maintained
ones fits the pinned stack: optimum-onnx (0.1.0, the only release) requires
transformers < 4.58; onnxruntime-genai's model builder (0.18) has no GPT-2 builder; and
onnxruntime's own `transformers/models/gpt2` helper passes the past as tuples, which
transformers 5 refuses (`'tuple' object has no attribute 'get_query_offset'`).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from transformers import DynamicCache

from lmforge.decoder import DecoderShape


def decoder_shape(config) -> DecoderShape:
    """The graph's feeding parameters from a transformers GPT-2 config."""
    return DecoderShape(
        n_layer=config.n_layer,
        n_head=config.n_head,
        head_dim=config.n_embd // config.n_head,
        max_positions=config.n_positions,
        eos_token_id=config.eos_token_id,
    )


class _CachedStep(torch.nn.Module):
    """The model with its cache as flat tensors: (ids, mask, positions, *past) ->
    (logits, *present), the layout of lmforge.decoder."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, position_ids, *past):
        pairs = [(past[i], past[i + 1]) for i in range(0, len(past), 2)]
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=DynamicCache(pairs),
            use_cache=True,
        )
        present = [t for layer in out.cache.layers for t in (layer.keys, layer.values)]
        return (out.logits, *present)


def export_decoder(model: torch.nn.Module, path: Path, opset: int) -> DecoderShape:
    """Trace `model` (eager attention) into `path`; return what feeding the graph needs.

    The trace runs on two left-padded rows with a non-empty past, so that the padding mask
    and the cache length stay graph inputs rather than constants of the trace.
    """
    shape = decoder_shape(model.config)
    rows, past, new = 2, 3, 2
    ids = torch.randint(1, model.config.vocab_size, (rows, new))
    mask = torch.ones(rows, past + new, dtype=torch.long)
    mask[1, :2] = 0  # row 1: two padding columns at the start of its cache
    positions = (mask.cumsum(1) - 1).clamp(min=0)[:, past:]
    cache = [
        torch.randn(rows, shape.n_head, past, shape.head_dim) for _ in range(2 * shape.n_layer)
    ]
    dims = {0: "batch", 2: "past"}
    axes = {
        "input_ids": {0: "batch", 1: "new"},
        "attention_mask": {0: "batch", 1: "total"},
        "position_ids": {0: "batch", 1: "new"},
        "logits": {0: "batch", 1: "new"},
        **{name: dims for name in shape.input_names()[3:]},
        **{name: {0: "batch", 2: "total"} for name in shape.output_names()[1:]},
    }
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        # Tracer and deprecation warnings about the legacy exporter are expected here.
        warnings.simplefilter("ignore")
        # eval() on the wrapper: the exporter restores the wrapper's mode afterwards, and a
        # fresh Module is in training mode (dropout on in the caller's model from then on).
        torch.onnx.export(
            _CachedStep(model).eval(),
            (ids, mask, positions, *cache),
            str(path),
            input_names=shape.input_names(),
            output_names=shape.output_names(),
            dynamic_axes=axes,
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )
    return shape


def torch_greedy(
    model: torch.nn.Module, prompt_ids: list[int], steps: int
) -> tuple[list[int], list[np.ndarray]]:
    """PyTorch's greedy continuation with its own cache: new ids and last-position logits
    per step, the reference for `Decoder.greedy`."""
    ids, seen = [], []
    with torch.inference_mode():
        prompt = torch.tensor([prompt_ids])
        out = model(input_ids=prompt, attention_mask=torch.ones_like(prompt), use_cache=True)
        for _ in range(steps):
            last = out.logits[0, -1].float().numpy()
            seen.append(last)
            ids.append(int(np.argmax(last)))
            out = model(input_ids=torch.tensor([[ids[-1]]]), cache=out.cache, use_cache=True)
    return ids, seen
