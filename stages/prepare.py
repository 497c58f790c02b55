"""Stage prepare: read the configured data source, validate it, write data/prepared."""

import argparse
from pathlib import Path

from lmforge.config import load_params
from lmforge.data.prepare import prepare
from lmforge.stage import log, run_stage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--raw", type=Path, default=Path("data/raw"))
    parser.add_argument("--out", type=Path, default=Path("data/prepared"))
    args = parser.parse_args()
    params = load_params()
    summary = prepare(params.data, params.seed, args.out, args.raw)
    args.raw.mkdir(parents=True, exist_ok=True)  # a DVC out: empty unless data.source is sample
    log.info("prepared %s", summary)


if __name__ == "__main__":
    run_stage(main)
