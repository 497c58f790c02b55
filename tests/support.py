"""Constants and helpers the test modules share (fixtures live in conftest.py)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

# A model small enough that a DeepSpeed run of a dozen steps takes seconds.
TINY_MODEL = {
    "hidden_size": 32,
    "num_layers": 1,
    "num_heads": 2,
    "intermediate_size": 64,
    "max_seq_len": 32,
    "dropout": 0.0,
    "attention_dropout": 0.0,
}


def default_params() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text())


def run_checked(args: list[str], cwd: Path, env: dict) -> str:
    """Run a command; fail the test with the end of its output if it fails."""
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    assert result.returncode == 0, (
        f"{' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    )
    return result.stdout


def repo_copy(root: Path) -> dict:
    """Copy the working tree (tracked and untracked-but-not-ignored files) to `root` as a
    fresh git repository, as a clean clone would have it; return the env to run DVC in it."""
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=REPO, capture_output=True, text=True, check=True,
    ).stdout.split("\0")  # fmt: skip
    for name in filter(None, files):
        source = REPO / name
        if source.is_file():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, root / name)
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env["PATH"]])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), str(root / "src")]))
    env.pop("LMFORGE_ARTIFACTS", None)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    run_checked([*git, "init", "-q"], root, env)
    run_checked([*git, "add", "-A"], root, env)
    run_checked([*git, "commit", "-qm", "copy"], root, env)
    return env
