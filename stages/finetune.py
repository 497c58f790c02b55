"""Stage finetune: train and evaluate one task of `finetune` (`python -m stages.finetune ner`)."""

import argparse
from pathlib import Path

from lmforge.artifacts import write_json
from lmforge.config import TASKS, load_params
from lmforge.errors import ConfigError
from lmforge.finetune import run_finetune
from lmforge.stage import log, run_stage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("task", choices=TASKS)
    parser.add_argument("--pretrained", type=Path, default=Path("artifacts/pretrained"))
    parser.add_argument("--prepared", type=Path, default=Path("data/prepared"))
    parser.add_argument("--out", type=Path, default=None, help="default artifacts/finetuned/<task>")
    parser.add_argument(
        "--metrics", type=Path, default=None, help="default metrics/finetune/<task>.json"
    )
    parser.add_argument(
        "--plots", type=Path, default=None, help="default plots/finetune/<task>.csv"
    )
    args = parser.parse_args()
    params = load_params()
    task = args.task
    if task not in params.finetune.tasks:
        raise ConfigError(f"finetune.{task} is not set in params.yaml: nothing to train")
    metrics = run_finetune(
        task, getattr(params.finetune, task), params.seed, args.pretrained, args.prepared,
        args.out or Path("artifacts/finetuned") / task,
        args.plots or Path("plots/finetune") / f"{task}.csv",
    )  # fmt: skip
    write_json(args.metrics or Path("metrics/finetune") / f"{task}.json", metrics)
    log.info("finetune %s %s", task, metrics)


if __name__ == "__main__":
    run_stage(main)
