"""Stage prepare: read the configured data source (the corpus and the tasks of model.arch
it holds), validate it, write data/prepared."""

import argparse
from pathlib import Path

from lmforge.config import load_params
from lmforge.data.prepare import prepare
from lmforge.stage import log, run_stage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sample", type=Path, default=Path("data/sample"))
    parser.add_argument("--out", type=Path, default=Path("data/prepared"))
    args = parser.parse_args()
    params = load_params()
    summary = prepare(params.data, args.out, args.sample, task_names=params.prepared_tasks)
    log.info("prepared %s", summary)


if __name__ == "__main__":
    run_stage(main)
