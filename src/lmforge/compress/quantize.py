"""int8 dynamic quantization of an ONNX graph with onnxruntime.quantization.

Weights are stored as 8-bit integers; activations are quantized to uint8 at run time
(dynamic quantization supports uint8 activations only, so the formats are U8S8 or U8U8).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import onnx

from lmforge.compress.optimize import quiet_logging

# Which input of each quantizable operator holds the weight (an initializer).
WEIGHT_INPUT = {"MatMul": 1, "Attention": 1, "EmbedLayerNormalization": 2, "Gather": 0}


@dataclass(frozen=True)
class QuantOptions:
    """One way to quantize: weight format, granularity, range, and nodes kept in fp32."""

    weight_type: str = "int8"  # "int8" (U8S8) or "uint8" (U8U8)
    per_channel: bool = False
    reduce_range: bool = False  # 7-bit weights: avoids saturation on CPUs without VNNI
    keep_fp32: tuple[str, ...] = field(default=())

    @property
    def label(self) -> str:
        parts = ["U8S8" if self.weight_type == "int8" else "U8U8"]
        parts.append("per-channel" if self.per_channel else "per-tensor")
        if self.reduce_range:
            parts.append("reduce-range")
        if self.keep_fp32:
            parts.append(f"{len(self.keep_fp32)} fp32 nodes")
        return "/".join(parts)

    def to_dict(self) -> dict:
        return {
            "label": self.label,
            "weight_type": self.weight_type,
            "per_channel": self.per_channel,
            "reduce_range": self.reduce_range,
            "keep_fp32": list(self.keep_fp32),
        }


def candidates(preferred: QuantOptions) -> list[QuantOptions]:
    """`preferred` first, then the other formats, cheapest kernels first.

    U8S8 uses the VNNI/AVX2 integer kernels; per-channel scales add a little work per
    output; U8U8 takes a slower path on x86. reduce_range costs nothing at run time.
    """
    grid = [
        QuantOptions(weight_type, per_channel, reduce_range)
        for weight_type in ("int8", "uint8")
        for per_channel in (False, True)
        for reduce_range in (False, True)
    ]
    return [preferred] + [c for c in grid if c != preferred]


def quantize(src: Path, dst: Path, options: QuantOptions, only: list[str] | None = None) -> None:
    """Write the int8 version of `src` to `dst` (only the nodes in `only`, when given)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    weight_type = QuantType.QInt8 if options.weight_type == "int8" else QuantType.QUInt8
    with quiet_logging():  # quantize_dynamic warns about pre-processing on the root logger
        quantize_dynamic(
            str(src),
            str(dst),
            per_channel=options.per_channel,
            reduce_range=options.reduce_range,
            weight_type=weight_type,
            nodes_to_quantize=only,
            nodes_to_exclude=list(options.keep_fp32),
            # Fused operators (Attention, SkipLayerNormalization, ...) carry no type
            # information for shape inference; their outputs are float.
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )


def quantizable_nodes(path: Path) -> list[str]:
    """Names of the nodes dynamic quantization turns into int8 (weights stored as int8)."""
    graph = onnx.load(str(path)).graph
    weights = {init.name for init in graph.initializer}
    names = []
    for node in graph.node:
        index = WEIGHT_INPUT.get(node.op_type)
        if index is not None and len(node.input) > index and node.input[index] in weights:
            names.append(node.name)
    return names
