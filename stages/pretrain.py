"""Stage pretrain: masked-LM or next-token pretraining (model.arch) through DeepSpeed, on
`pretrain.num_procs` ranks, from scratch or continued from the imported checkpoint
(`pretrain.max_steps: 0`: none).

With num_procs > 1 the script relaunches itself under torchrun; a DeepSpeed or torchrun
launcher that already set RANK (multi-node, see README) runs it directly.
"""

import argparse
import os
import subprocess
import sys
from pathlib import Path

from lmforge.artifacts import write_json
from lmforge.checkpoints import start_folder
from lmforge.config import load_params
from lmforge.stage import log, run_stage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--checkpoint", type=Path, default=Path("artifacts/checkpoint"))
    parser.add_argument("--tokenizer", type=Path, default=Path("artifacts/tokenizer"))
    parser.add_argument("--tokens", type=Path, default=Path("data/tokens"))
    parser.add_argument("--checkpoints", type=Path, default=Path("checkpoints/pretrain"))
    parser.add_argument("--out", type=Path, default=Path("artifacts/pretrained"))
    parser.add_argument("--metrics", type=Path, default=Path("metrics/pretrain.json"))
    parser.add_argument("--plots", type=Path, default=Path("plots/pretrain.csv"))
    args = parser.parse_args()
    params = load_params()
    m = params.model
    start = start_folder(args.checkpoint, m.checkpoint, m.max_seq_len, m.arch)
    relaunch = params.pretrain.num_procs > 1 and params.pretrain.max_steps > 0
    if relaunch and "RANK" not in os.environ:
        launch = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
        launch += [f"--nproc_per_node={params.pretrain.num_procs}", "-m", "stages.pretrain"]
        sys.exit(subprocess.run(launch + sys.argv[1:]).returncode)

    from lmforge.pretrain import run_pretrain  # imports torch and DeepSpeed: after the relaunch

    metrics = run_pretrain(
        params.pretrain, params.model, params.seed, args.tokenizer, args.tokens,
        args.checkpoints, args.out, args.plots, start,
    )  # fmt: skip
    if os.environ.get("RANK", "0") == "0":
        write_json(args.metrics, metrics)
        log.info("pretrain %s", metrics)


if __name__ == "__main__":
    run_stage(main)
