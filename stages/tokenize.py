"""Stage tokenize: train the tokenizer of model.arch (WordPiece for bert, byte-level BPE
for gpt2), or take the checkpoint's, and pack the corpus into token blocks."""

import argparse
import os
from pathlib import Path

from lmforge.checkpoints import start_folder
from lmforge.config import load_params
from lmforge.data.prepare import prepared_corpus
from lmforge.stage import log, run_stage
from lmforge.tokenizer import run_tokenize


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--prepared", type=Path, default=Path("data/prepared"))
    parser.add_argument("--checkpoint", type=Path, default=Path("artifacts/checkpoint"))
    parser.add_argument("--tokenizer", type=Path, default=Path("artifacts/tokenizer"))
    parser.add_argument("--tokens", type=Path, default=Path("data/tokens"))
    args = parser.parse_args()
    params = load_params()
    m = params.model
    start = start_folder(args.checkpoint, m.checkpoint, m.max_seq_len, m.arch)
    corpus = {split: prepared_corpus(args.prepared, split) for split in ("train", "validation")}
    t = params.tokenize
    summary = run_tokenize(
        corpus, t.vocab_size, t.min_frequency, t.lowercase, m.max_seq_len,
        args.tokenizer, args.tokens, t.train_sample_mb, num_proc=len(os.sched_getaffinity(0)),
        checkpoint_dir=start, arch=m.arch, split_cjk=t.split_cjk,
    )  # fmt: skip
    log.info("tokenized %s", summary)


if __name__ == "__main__":
    run_stage(main)
