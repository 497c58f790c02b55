"""Stage compress: ONNX export, int8 and measurements of one task (`python -m stages.compress ner`)."""

import argparse
from pathlib import Path

from lmforge.artifacts import write_json
from lmforge.compress import compress_task
from lmforge.config import TASKS, load_params
from lmforge.stage import log, run_stage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("task", choices=TASKS)
    parser.add_argument(
        "--finetuned", type=Path, default=None, help="default artifacts/finetuned/<task>"
    )
    parser.add_argument("--prepared", type=Path, default=Path("data/prepared"))
    parser.add_argument("--out", type=Path, default=None, help="default artifacts/serving/<task>")
    parser.add_argument(
        "--metrics", type=Path, default=None, help="default metrics/compress/<task>.json"
    )
    args = parser.parse_args()
    params = load_params()
    task = args.task
    metrics = compress_task(
        task,
        args.finetuned or Path("artifacts/finetuned") / task,
        args.prepared,
        args.out or Path("artifacts/serving") / task,
        params.compress,
    )
    write_json(args.metrics or Path("metrics/compress") / f"{task}.json", metrics)
    summary = {k: metrics[k] for k in ("torch", "onnx_fp32", "onnx_int8") if metrics[k]}
    log.info(
        "compress %s: %s", task, {k: (v["metric"], v["latency_ms"]) for k, v in summary.items()}
    )


if __name__ == "__main__":
    run_stage(main)
