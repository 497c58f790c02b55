"""One-screen summary of the last run's metrics (the end of `make run`)."""

from __future__ import annotations

import json
from pathlib import Path

from lmforge.config import TASKS


def _load(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def render(metrics_dir: Path = Path("metrics")) -> str:
    pre = _load(metrics_dir / "pretrain.json")
    lines = [
        "lmforge run summary",
        f"pretrain   eval_loss {pre.get('eval_loss', '-')}  perplexity {pre.get('eval_perplexity', '-')}"
        f"  steps {pre.get('steps', '-')}  tokens/s {pre.get('tokens_per_second', '-')}",
        "",
        f"{'task':<15}{'metric':<16}{'torch':>8}{'onnx':>8}{'int8':>8}"
        f"{'ms torch':>10}{'ms int8':>9}{'MB fp32':>9}{'MB int8':>9}",
    ]
    # The tasks this run fine-tuned (finetune's keys: the encoder's three, or generation).
    for task in (t for t in TASKS if (metrics_dir / "finetune" / f"{t}.json").is_file()):
        fine = _load(metrics_dir / "finetune" / f"{task}.json")
        comp = _load(metrics_dir / "compress" / f"{task}.json")
        name = comp.get("metric_name", "")
        extras = ", ".join(
            f"{k} {v:.4f}"
            for k, v in fine.items()
            if k
            in ("accuracy", "f1_macro", "f1", "precision", "recall", "exact_match", "perplexity")
        )
        runtimes = [comp.get(r, {}) for r in ("torch", "onnx_fp32", "onnx_int8")]
        scores = "".join(f"{r.get('metric', float('nan')):>8.4f}" for r in runtimes)
        lines.append(
            f"{task:<15}{name:<16}{scores}"
            f"{runtimes[0].get('latency_ms', float('nan')):>10.2f}"
            f"{runtimes[2].get('latency_ms', float('nan')):>9.2f}"
            f"{runtimes[1].get('size_mb', float('nan')):>9.2f}"
            f"{runtimes[2].get('size_mb', float('nan')):>9.2f}"
        )
        lines.append(f"{'':<15}finetune: {extras}")
    return "\n".join(lines)


if __name__ == "__main__":
    print(render())
