"""Stage checkpoint: import `model.checkpoint` (local dir or hub id, of model.arch's family)
for tokenize and pretrain.

Later stages read the imported folder, never the source. With `model.checkpoint: null`
it writes a manifest saying so, and the pipeline trains from scratch.
"""

import argparse
from pathlib import Path

from lmforge.checkpoints import import_checkpoint
from lmforge.config import load_params
from lmforge.stage import log, run_stage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("artifacts/checkpoint"))
    args = parser.parse_args()
    m = load_params().model
    manifest = import_checkpoint(m.checkpoint, m.trust_pickle, m.max_seq_len, args.out, m.arch)
    log.info("checkpoint %s", manifest)


if __name__ == "__main__":
    run_stage(main)
