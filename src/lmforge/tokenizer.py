"""Train a WordPiece tokenizer with `tokenizers`; save and load it; pack a corpus into blocks.

The saved folder holds `tokenizer.json` (read by `tokenizers` in the service) and the
Hugging Face files, so `AutoTokenizer.from_pretrained(folder)` works too.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from tokenizers.trainers import WordPieceTrainer

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def train_tokenizer(
    texts: Iterable[str], vocab_size: int, min_frequency: int, lowercase: bool
) -> Tokenizer:
    """A BERT-style WordPiece tokenizer (normalizer, pre-tokenizer, [CLS]/[SEP] template)."""
    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=lowercase, strip_accents=lowercase)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece()
    trainer = WordPieceTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=SPECIAL_TOKENS
    )
    tokenizer.train_from_iterator(texts, trainer)
    cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    return tokenizer


def save_tokenizer(tokenizer: Tokenizer, out_dir: Path, model_max_length: int) -> None:
    """Write tokenizer.json plus the Hugging Face PreTrainedTokenizerFast files."""
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=model_max_length,
    )
    fast.save_pretrained(str(out_dir))


def load_tokenizer(folder: Path) -> Tokenizer:
    return Tokenizer.from_file(str(Path(folder) / "tokenizer.json"))


def pack_blocks(tokenizer: Tokenizer, documents: Iterable[str], block_len: int) -> np.ndarray:
    """Concatenate documents ([SEP] between them) into [CLS] ... [SEP] rows of `block_len`.

    Packing wastes no positions on padding; the tail shorter than a block is dropped.
    """
    cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.no_truncation()
    tokenizer.no_padding()
    stream: list[int] = []
    for enc in tokenizer.encode_batch(list(documents), add_special_tokens=False):
        if enc.ids:
            stream.extend(enc.ids)
            stream.append(sep_id)
    body = block_len - 2
    rows = len(stream) // body
    ids = np.asarray(stream[: rows * body], dtype=np.int32).reshape(rows, body)
    cls_col = np.full((rows, 1), cls_id, np.int32)
    sep_col = np.full((rows, 1), sep_id, np.int32)
    return np.concatenate([cls_col, ids, sep_col], axis=1)


def run_tokenize(
    corpus: dict[str, list[str]],
    vocab_size: int,
    min_frequency: int,
    lowercase: bool,
    block_len: int,
    tokenizer_dir: Path,
    tokens_dir: Path,
    checkpoint_dir: Path | None = None,
) -> dict:
    """Train on the corpus's train split (or take the checkpoint's tokenizer: its vocabulary
    is the weights'), save the tokenizer, pack both splits into blocks."""
    from lmforge.artifacts import atomic_dir
    from lmforge.checkpoints import save_tokenizer_of

    with atomic_dir(tokenizer_dir) as tmp:
        if checkpoint_dir is None:
            tokenizer = train_tokenizer(corpus["train"], vocab_size, min_frequency, lowercase)
            save_tokenizer(tokenizer, tmp, block_len)
        else:
            tokenizer = save_tokenizer_of(checkpoint_dir, tmp, block_len)
    summary = {"vocab_size": tokenizer.get_vocab_size(), "block_len": block_len}
    with atomic_dir(tokens_dir) as tmp:
        for split, documents in corpus.items():
            blocks = pack_blocks(tokenizer, documents, block_len)
            np.save(tmp / f"{split}.npy", blocks)
            summary[f"{split}_blocks"] = len(blocks)
            summary[f"{split}_tokens"] = int(blocks.size)
    return summary
