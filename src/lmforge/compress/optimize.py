"""Graph optimization with onnxruntime's transformer optimizer (attention, layer-norm and
GELU fusion), the graph that quantization then works on.

Two fusion profiles, because which is faster depends on the CPU and onnxruntime build:
"full" fuses everything the optimizer knows (Attention, EmbedLayerNormalization,
SkipLayerNormalization with bias, BiasGelu); "lean" fuses only LayerNormalization and
BiasGelu and leaves attention as MatMul/Softmax, so that onnxruntime folds each bias into
its (int8) MatMul at load time. The compress stage uses `compress.graph_profile` (a param,
so a build never depends on a timing); bench/inference.py times both.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

PROFILES: dict[str, dict[str, bool]] = {
    "full": {},
    "lean": {
        "enable_attention": False,
        "enable_skip_layer_norm": False,
        "enable_bias_skip_layer_norm": False,
        "enable_embed_layer_norm": False,
    },
    # The causal LM (model_type gpt2): LayerNorm, SkipLayerNorm and FastGelu fusion. Its
    # attention stays MatMul/Softmax: onnxruntime's GPT-2 Attention fusion expects the
    # past as one stacked tensor per layer, not the key/value pair the export keeps.
    "decoder": {"enable_attention": False},
}


def optimize_graph(
    src: Path,
    dst: Path,
    num_heads: int,
    hidden_size: int,
    profile: str = "full",
    model_type: str = "bert",
) -> dict[str, int]:
    """Fuse the graph `src` (a BERT, or a GPT-2 with model_type "gpt2") into `dst`; return
    the count of each fused operator.

    num_heads and hidden_size must be given: the optimizer cannot always infer them from
    the exported graph, and attention then silently stays unfused.
    """
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    options = FusionOptions(model_type)
    for name, value in PROFILES[profile].items():
        setattr(options, name, value)
    with quiet_logging():
        model = optimize_model(
            str(src),
            model_type=model_type,
            num_heads=num_heads,
            hidden_size=hidden_size,
            optimization_options=options,
        )
        model.save_model_to_file(str(dst))
        stats = model.get_fused_operator_statistics()
    return {op: int(n) for op, n in stats.items() if n}


@contextlib.contextmanager
def quiet_logging() -> Iterator[None]:
    """Only errors from onnxruntime's Python tools, which log every fusion and pass.

    Their modules log under top-level names (fusion_base, onnx_model, ...) and on the root
    logger, so the root level is what filters them.
    """
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)
