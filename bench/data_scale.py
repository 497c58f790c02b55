"""Data at scale: prepare, tokenize and the first pretraining steps on 100 MB and 1 GB corpora.

    python bench/data_scale.py                       # 100 MB (with "before" and HF), then 1 GB
    python bench/data_scale.py --sizes 100           # one size
    python bench/data_scale.py --quick               # 20 MB, 5 steps: a smoke test (~3 min)

Synthetic corpora are WikiText-2's text (../shared/data/wikitext-2, headings and escapes
kept) in paragraphs reshuffled and repeated up to the size, written under --work (/tmp),
never into the repository. Every stage runs as users run it: `dvc repro <stage>` in a
scratch clone of this repository whose params.yaml points data.local.corpus at the files
(tokenize at 16k WordPiece, pretrain a tiny 2x128 BERT for --steps steps). Compared:
  after   this checkout's committed code (HEAD)
  before  the code at --before (default d04ce38: whole-corpus lists, .npy tokens); only up
          to --before-max-mb, as it holds ~140 bytes of memory per token
  hf      Hugging Face run_mlm.py's recipe on the same text file and tokenizer:
          load_dataset("text") + map(tokenize, batched, num_proc) + map(group_texts, num_proc)
  pack    lmforge's packing alone (same tokenizer, same num_proc): what `hf` does, ours
For each run: wall time, peak RSS (largest process, from the child's rusage via wait4; and
the whole process tree's sum, sampled every 0.2 s), tokens/s, bytes on disk, and for
pretrain the time from `dvc repro pretrain` to its first optimizer step (read from the
step bar). Results merge into bench/results/data_scale.json; a Markdown table is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import yaml

REPO = Path(__file__).resolve().parents[1]
WIKITEXT = REPO.parent / "shared" / "data" / "wikitext-2"
RESULTS = REPO / "bench" / "results" / "data_scale.json"
NUM_PROC = len(os.sched_getaffinity(0))
BEFORE = "d04ce38"  # main before corpora were streamed and memory-mapped

PARAMS = {
    "data": {"source": "local"},
    "tokenize": {"vocab_size": 16000},
    "model": {"hidden_size": 128, "num_layers": 2, "num_heads": 2, "intermediate_size": 512,
              "max_seq_len": 128},
    "pretrain": {"micro_batch_size": 32, "checkpoint_every": 1000, "eval_every": 1000},
}  # fmt: skip

HF_RECIPE = """
import json, sys, time
from itertools import chain
from datasets import load_dataset
from transformers import AutoTokenizer
text, tokenizer_dir, block, num_proc, cache = sys.argv[1:6]
block, num_proc = int(block), int(num_proc)
tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
t0 = time.perf_counter()
raw = load_dataset("text", data_files={"train": text}, cache_dir=cache)["train"]
t1 = time.perf_counter()
def tokenize_function(examples):
    return tokenizer(examples["text"], return_special_tokens_mask=True)
tokenized = raw.map(tokenize_function, batched=True, num_proc=num_proc, remove_columns=["text"])
t2 = time.perf_counter()
def group_texts(examples):  # run_mlm.py's, verbatim in substance
    concatenated = {k: list(chain(*examples[k])) for k in examples.keys()}
    total_length = len(concatenated[list(examples.keys())[0]]) // block * block
    return {k: [t[i : i + block] for i in range(0, total_length, block)]
            for k, t in concatenated.items()}
grouped = tokenized.map(group_texts, batched=True, num_proc=num_proc)
t3 = time.perf_counter()
print(json.dumps({"load_s": t1 - t0, "tokenize_s": t2 - t1, "group_s": t3 - t2,
                  "tokens": len(grouped) * block}))
"""

PACK_ONLY = """
import json, sys, time
from pathlib import Path
from lmforge.data.corpus import corpus_batches, corpus_documents
from lmforge.tokenizer import load_tokenizer
from lmforge.tokens import pack_corpus
parquet, tokenizer_dir, block, num_proc, out = sys.argv[1:6]
tokenizer = load_tokenizer(Path(tokenizer_dir))
t0 = time.perf_counter()
header = pack_corpus(tokenizer, corpus_batches(Path(parquet)), int(block), Path(out), "train",
                     int(num_proc), corpus_documents(Path(parquet)))
print(json.dumps({"pack_s": time.perf_counter() - t0, "tokens": header["tokens"]}))
"""


# --- corpora -------------------------------------------------------------------------------


def make_corpus(folder: Path, megabytes: int) -> dict:
    """train.txt of `megabytes` MB: WikiText-2 paragraphs, reshuffled on every repetition."""
    folder.mkdir(parents=True, exist_ok=True)
    train = folder / f"train-{megabytes}MB.txt"
    valid = WIKITEXT / "wiki.valid.tokens"
    if not train.exists():
        text = (WIKITEXT / "wiki.test.tokens").read_text(encoding="utf-8") + valid.read_text(
            encoding="utf-8"
        )
        paragraphs = [p for p in text.split("\n \n") if p.strip()]
        rng = random.Random(megabytes)
        target, written = megabytes << 20, 0
        tmp = train.with_suffix(".partial")
        with tmp.open("w", encoding="utf-8") as f:
            while written < target:
                rng.shuffle(paragraphs)
                for p in paragraphs:
                    f.write(p + "\n \n")
                    written += len(p.encode()) + 3
                    if written >= target:
                        break
        tmp.rename(train)
    return {"train": str(train), "validation": str(valid)}


# --- measuring a child --------------------------------------------------------------------


def measure(cmd: list[str], cwd: Path, env: dict, first_step: bytes | None = None) -> dict:
    """Wall time, peak RSS (largest process; sum over the tree) and output of a command."""
    began = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out = bytearray()
    seen: dict = {}

    def read() -> None:
        while chunk := proc.stdout.read1(65536):
            out.extend(chunk)
            if first_step and "first_step_s" not in seen and first_step in out[-200_000:]:
                seen["first_step_s"] = time.perf_counter() - began

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    tree_peak = 0
    parent = psutil.Process(proc.pid)
    while proc.poll() is None:
        try:
            procs = [parent, *parent.children(recursive=True)]
            tree_peak = max(tree_peak, sum(_rss(p) for p in procs))
        except psutil.NoSuchProcess:
            pass
        time.sleep(0.2)
    reader.join()
    result = {
        "wall_s": round(time.perf_counter() - began, 1),
        "tree_peak_rss_mb": round(tree_peak / 2**20),
        "returncode": proc.returncode,
        "output": out.decode(errors="replace"),
        **seen,
    }
    return result


def _rss(p: psutil.Process) -> int:
    try:
        return p.memory_info().rss
    except psutil.NoSuchProcess:
        return 0


RUSAGE = (
    "import json, resource, subprocess, sys; r = subprocess.run(sys.argv[1:]).returncode; "
    "u = resource.getrusage(resource.RUSAGE_CHILDREN); "
    "print('RUSAGE ' + json.dumps({'maxrss_mb': round(u.ru_maxrss / 1024)})); sys.exit(r)"
)


def run_measured(cmd: list[str], cwd: Path, env: dict, first_step: bytes | None = None) -> dict:
    """`measure` through a fresh Python that reports its children's rusage: the largest RSS
    of any process under it (children's rusage folds in their own waited-for children)."""
    result = measure([sys.executable, "-c", RUSAGE, *cmd], cwd, env, first_step)
    lines = result["output"].splitlines()
    usage = [json.loads(line[7:]) for line in lines if line.startswith("RUSAGE ")]
    result["peak_rss_mb"] = usage[-1]["maxrss_mb"] if usage else None
    if result["returncode"] != 0:
        raise SystemExit(f"{' '.join(cmd)} failed in {cwd}:\n{result['output'][-4000:]}")
    return result


def last_json(output: str) -> dict:
    return json.loads([line for line in output.splitlines() if line.startswith("{")][-1])


def du(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


# --- one checkout, one corpus -------------------------------------------------------------


def checkout(work: Path, name: str, ref: str) -> Path:
    folder = work / name
    shutil.rmtree(folder, ignore_errors=True)
    subprocess.run(["git", "clone", "-q", "--no-checkout", str(REPO), str(folder)], check=True)
    subprocess.run(["git", "-C", str(folder), "checkout", "-q", ref], check=True)
    # The "before" pipeline (d04ce38) declares data/raw as an output, which a local source
    # never writes: DVC would fail its prepare stage. Today's dvc.yaml has no such line.
    dvc_yaml = folder / "dvc.yaml"
    dvc_yaml.write_text(dvc_yaml.read_text().replace("      - data/raw\n", "", 1))
    return folder


def write_params(folder: Path, corpus: dict, steps: int) -> None:
    params = yaml.safe_load((folder / "params.yaml").read_text())
    for paths in params["data"]["local"].values():  # shared data: absolute paths
        for key, value in paths.items():
            if key in ("train", "validation"):
                paths[key] = str((REPO / value).resolve())
    params["data"]["local"]["corpus"] = corpus
    for group, values in PARAMS.items():
        params[group].update(values)
    params["pretrain"]["max_steps"] = steps
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def stage_env(folder: Path) -> dict:
    env = dict(os.environ)
    env.update(
        PYTHONPATH=f"{folder / 'src'}:{folder}", OMP_NUM_THREADS="1", DS_ACCELERATOR="cpu",
        HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1",
    )  # fmt: skip
    env.setdefault("TORCH_EXTENSIONS_DIR", str(Path(sys.prefix) / "torch_extensions"))
    return env


def run_pipeline(folder: Path, corpus: dict, steps: int, old: bool) -> dict:
    """dvc repro prepare, tokenize, pretrain in `folder`; per stage figures."""
    write_params(folder, corpus, steps)
    env = stage_env(folder)
    out: dict = {}
    # Stages that only fingerprint the input files (inputs@<entry>) or import a checkpoint
    # (none here) run first, unmeasured: prepare and tokenize depend on their outputs.
    names = subprocess.run(
        ["dvc", "stage", "list", "--name-only"], cwd=folder, env=env,
        capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    helpers = [n for n in names if n.startswith("inputs@") or n == "checkpoint"]
    if helpers:
        subprocess.run(["dvc", "repro", "-s", *helpers], cwd=folder, env=env, check=True)
    for name in ("prepare", "tokenize", "pretrain"):
        marker = f" 1/{steps} ".encode() if name == "pretrain" else None
        result = run_measured(["dvc", "repro", "-s", name], folder, env, marker)
        out[name] = {k: result.get(k) for k in ("wall_s", "peak_rss_mb", "tree_peak_rss_mb")}
        if name == "pretrain":
            out[name]["first_step_s"] = result.get("first_step_s")
    out["prepare"]["bytes_on_disk"] = du(folder / "data/prepared/corpus")
    out["tokenize"]["bytes_on_disk"] = du(folder / "data/tokens")
    out["tokenize"]["tokens"] = tokens_of(folder, old)
    out["tokenize"]["tokens_per_s"] = round(out["tokenize"]["tokens"] / out["tokenize"]["wall_s"])
    out["pretrain"]["metrics"] = json.loads((folder / "metrics/pretrain.json").read_text())
    return out


def tokens_of(folder: Path, old: bool) -> int:
    if old:
        import numpy as np

        return int(np.load(folder / "data/tokens/train.npy", mmap_mode="r").size)
    return json.loads((folder / "data/tokens/train.json").read_text())["tokens"]


def run_side_by_side(after: Path, corpus: dict, work: Path) -> dict:
    """HF run_mlm.py's recipe and lmforge's packing alone, same tokenizer, same num_proc."""
    env = stage_env(after)
    tokenizer = after / "artifacts/tokenizer"
    cache = work / "hf-cache"
    shutil.rmtree(cache, ignore_errors=True)
    hf = run_measured(
        ["python", "-c", HF_RECIPE, corpus["train"], str(tokenizer), "128", str(NUM_PROC),
         str(cache)], after, env,
    )  # fmt: skip
    hf_times = last_json(hf["output"])
    hf_bytes = du(cache)
    shutil.rmtree(cache, ignore_errors=True)
    pack_dir = work / "pack-only"
    shutil.rmtree(pack_dir, ignore_errors=True)
    pack_dir.mkdir()
    pack = run_measured(
        ["python", "-c", PACK_ONLY, str(after / "data/prepared/corpus/train.parquet"),
         str(tokenizer), "128", str(NUM_PROC), str(pack_dir)], after, env,
    )  # fmt: skip
    pack_times = last_json(pack["output"])
    shutil.rmtree(pack_dir, ignore_errors=True)
    return {
        "hf": {
            "wall_s": hf["wall_s"], "peak_rss_mb": hf["peak_rss_mb"],
            "tree_peak_rss_mb": hf["tree_peak_rss_mb"], "bytes_on_disk": hf_bytes,
            **{k: round(v, 1) for k, v in hf_times.items() if k.endswith("_s")},
            "tokens": hf_times["tokens"],
            "tokens_per_s": round(hf_times["tokens"] / hf["wall_s"]),
            "map_tokens_per_s": round(
                hf_times["tokens"] / (hf_times["tokenize_s"] + hf_times["group_s"])
            ),
        },
        "pack": {
            "wall_s": pack["wall_s"], "peak_rss_mb": pack["peak_rss_mb"],
            "tree_peak_rss_mb": pack["tree_peak_rss_mb"], "pack_s": round(pack_times["pack_s"], 1),
            "tokens": pack_times["tokens"],
            "tokens_per_s": round(pack_times["tokens"] / pack["wall_s"]),
            "map_tokens_per_s": round(pack_times["tokens"] / pack_times["pack_s"]),
        },
    }  # fmt: skip


def bench_size(megabytes: int, args, work: Path) -> dict:
    corpus = make_corpus(work / "corpus", megabytes)
    result: dict = {"corpus_bytes": Path(corpus["train"]).stat().st_size, "num_proc": NUM_PROC}
    print(f"== {megabytes} MB", flush=True)
    after = checkout(work, f"after-{megabytes}", "HEAD")
    result["after"] = run_pipeline(after, corpus, args.steps, old=False)
    print(json.dumps(result["after"]), flush=True)
    if megabytes <= args.hf_max_mb:
        result.update(run_side_by_side(after, corpus, work))
        print(json.dumps({k: result[k] for k in ("hf", "pack")}), flush=True)
    shutil.rmtree(after)
    if megabytes <= args.before_max_mb:
        base = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", args.before],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
        before = checkout(work, f"before-{megabytes}", base)
        result["before"] = {"commit": base[:12], **run_pipeline(before, corpus, args.steps, True)}
        print(json.dumps(result["before"]), flush=True)
        shutil.rmtree(before)
    return result


def table(results: dict) -> str:
    rows = [
        "| corpus | run | prepare s | prepare peak RSS | tokenize s | tokenize peak RSS "
        "| tokens | tokens/s | on disk (prepared + tokens) | first pretrain step s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for size, r in sorted(results.items(), key=lambda kv: int(kv[0])):
        mb = f"{int(size) / 1000:g} GB" if int(size) >= 1000 else f"{size} MB"
        for run in ("before", "after"):
            if run not in r:
                continue
            p, t, s = r[run]["prepare"], r[run]["tokenize"], r[run]["pretrain"]
            rows.append(
                f"| {mb} | {run} | {p['wall_s']} | {_rss_cell(p)} | {t['wall_s']} | "
                f"{_rss_cell(t)} | {t['tokens'] / 1e6:.1f}M | {t['tokens_per_s']:,} | "
                f"{(p['bytes_on_disk'] + t['bytes_on_disk']) / 2**20:.0f} MB | "
                f"{s['first_step_s']:.1f} |"
            )
        for run, label in (("pack", "lmforge packing alone"), ("hf", "HF run_mlm recipe")):
            if run in r:
                x = r[run]
                rows.append(
                    f"| {mb} | {label} | | | {x['wall_s']} | {_rss_cell(x)} | "
                    f"{x['tokens'] / 1e6:.1f}M | {x['tokens_per_s']:,} | "
                    f"{_mb(x.get('bytes_on_disk'))} | |"
                )
    return "\n".join(rows)


def _mb(size: int | None) -> str:
    return "" if size is None else f"{size / 2**20:.0f} MB"


def _rss_cell(x: dict) -> str:
    return f"{x['peak_rss_mb'] / 1024:.2f} GB ({x['tree_peak_rss_mb'] / 1024:.2f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="100,1000", help="corpus sizes in MB, comma separated")
    parser.add_argument("--steps", type=int, default=50, help="pretraining steps")
    parser.add_argument("--before-max-mb", type=int, default=100)
    parser.add_argument(
        "--before", default=BEFORE, help=f"the commit to compare with (default {BEFORE})"
    )
    parser.add_argument("--hf-max-mb", type=int, default=100)
    parser.add_argument("--work", type=Path, default=Path("/tmp/lmforge-data-scale"))
    parser.add_argument("--quick", action="store_true", help="20 MB, 5 steps")
    args = parser.parse_args()
    sizes = [20] if args.quick else [int(s) for s in args.sizes.split(",")]
    if args.quick:
        args.steps = 5
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    for megabytes in sizes:
        # Per run: a size's runs not measured this time (before, hf) keep their figures.
        results.setdefault(str(megabytes), {}).update(bench_size(megabytes, args, args.work))
        RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(table(results))


if __name__ == "__main__":
    main()
