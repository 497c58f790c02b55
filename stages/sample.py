"""Stage sample: write the offline sample data (text, CSV/JSONL, CoNLL, SQuAD) from params.

Its output, data/sample, is committed to git: a fresh clone has the files that
`data.source: sample` reads, and DVC re-runs this stage only when data.sample or seed change.
"""

import argparse
from pathlib import Path

from lmforge.artifacts import atomic_dir
from lmforge.config import load_params
from lmforge.data.sample import write_sample_data
from lmforge.stage import log, run_stage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("data/sample"))
    args = parser.parse_args()
    params = load_params()
    with atomic_dir(args.out) as tmp:
        write_sample_data(tmp, params.data.sample, params.seed)
    log.info("sample data written to %s", args.out)


if __name__ == "__main__":
    run_stage(main)
