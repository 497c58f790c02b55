"""Train the tokenizer of each model.arch with `tokenizers` (WordPiece for BERT, byte-level
BPE for GPT-2); save and load it; run the tokenize step.

The saved folder holds `tokenizer.json` (read by `tokenizers` in the service) and the
Hugging Face files, so `AutoTokenizer.from_pretrained(folder)` works too.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
from tokenizers import (
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)

from lmforge.wordpiece import PREFIX, build_vocab, count_words

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
# GPT-2's one special token: it ends every document and stands in as bos, pad and unk. Its id
# is the tokenizer's (0 in the one lmforge trains, 50256 in GPT-2's): always looked up.
EOS = "<|endoftext|>"
# With tokenize.split_cjk false, the longest run of CJK characters (between punctuation or
# spaces) WordPiece splits into pieces; a longer one is one [UNK]. Matching is quadratic
# in a word's length, so the bound is not unlimited.
LONGEST_CJK_RUN = 2000
# What each special token is to `transformers`, per model.arch.
TOKEN_ROLES = {
    "bert": {
        "unk_token": "[UNK]", "pad_token": "[PAD]", "cls_token": "[CLS]",
        "sep_token": "[SEP]", "mask_token": "[MASK]",
    },
    "gpt2": {"bos_token": EOS, "eos_token": EOS, "unk_token": EOS, "pad_token": EOS},
}  # fmt: skip


def train_tokenizer(
    texts: Iterable[str],
    vocab_size: int,
    min_frequency: int,
    lowercase: bool,
    num_proc: int = 1,
    split_cjk: bool = True,
) -> Tokenizer:
    """A BERT-style WordPiece tokenizer (normalizer, pre-tokenizer, [CLS]/[SEP] template).

    `split_cjk` false keeps runs of CJK characters together as words (see
    TokenizeConfig.split_cjk); such a run lasts up to the next punctuation or space, so
    the longest word WordPiece reads rather than calls [UNK] is raised from 100 characters.
    The vocabulary is built by `lmforge.wordpiece` rather than `tokenizers`' WordPieceTrainer,
    whose ties fall in hash-map order: the same texts give the same bytes in every process.
    """
    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(
        lowercase=lowercase, strip_accents=lowercase, handle_chinese_chars=split_cjk
    )
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece(prefix=PREFIX)
    vocab = build_vocab(
        count_words(tokenizer, texts, num_proc), vocab_size, min_frequency, SPECIAL_TOKENS
    )
    tokenizer.model = models.WordPiece(
        {token: i for i, token in enumerate(vocab)},
        unk_token="[UNK]",
        continuing_subword_prefix=PREFIX,
        max_input_chars_per_word=100 if split_cjk else LONGEST_CJK_RUN,
    )
    # As upstream training does: special tokens in text are matched whole, never split.
    tokenizer.add_special_tokens(SPECIAL_TOKENS)
    cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    return tokenizer


def train_byte_bpe(texts: Iterable[str], vocab_size: int, min_frequency: int) -> Tokenizer:
    """GPT-2's byte-level BPE: text is read as UTF-8 bytes and all 256 of them are in the
    vocabulary, so nothing is ever unknown and decoding gives back the exact text.

    No normalizer (text stays as written) and no post-processor: encoding a prompt gives
    its tokens only. `tokenizers`' BpeTrainer breaks ties by pair ids that follow the
    sorted byte alphabet, so, unlike its WordPiece trainer, it is deterministic (tested).
    """
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer)
    return tokenizer


def train_for(
    arch: str,
    texts: Iterable[str],
    vocab_size: int,
    min_frequency: int,
    lowercase: bool,
    num_proc: int = 1,
    split_cjk: bool = True,
) -> Tokenizer:
    """The tokenizer model.arch reads with: WordPiece for bert, byte-level BPE for gpt2."""
    if arch == "gpt2":
        return train_byte_bpe(texts, vocab_size, min_frequency)
    return train_tokenizer(texts, vocab_size, min_frequency, lowercase, num_proc, split_cjk)


def save_tokenizer(
    tokenizer: Tokenizer, out_dir: Path, model_max_length: int, arch: str = "bert"
) -> None:
    """Write tokenizer.json plus the Hugging Face PreTrainedTokenizerFast files."""
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, model_max_length=model_max_length, **TOKEN_ROLES[arch]
    )
    fast.save_pretrained(str(out_dir))


def load_tokenizer(folder: Path) -> Tokenizer:
    return Tokenizer.from_file(str(Path(folder) / "tokenizer.json"))


def unk_rate(tokenizer: Tokenizer, blocks: np.ndarray) -> float:
    """Share of the text's tokens (special tokens aside) that are [UNK]: characters the
    vocabulary lacks, which no model can read (none for a byte-level BPE: it has no [UNK])."""
    if tokenizer.token_to_id("[UNK]") is None:
        return 0.0
    special = [tokenizer.token_to_id(token) for token in SPECIAL_TOKENS]
    text_tokens = int((~np.isin(blocks, special)).sum())
    unknown = int((blocks == tokenizer.token_to_id("[UNK]")).sum())
    return unknown / max(text_tokens + unknown, 1)


def run_tokenize(
    prepared_corpus: dict[str, Path],
    vocab_size: int,
    min_frequency: int,
    lowercase: bool,
    block_len: int,
    tokenizer_dir: Path,
    tokens_dir: Path,
    train_sample_mb: int = 64,
    num_proc: int = 1,
    checkpoint_dir: Path | None = None,
    arch: str = "bert",
    split_cjk: bool = True,
) -> dict:
    """Train on a sample of the train split (or take the checkpoint's tokenizer: its
    vocabulary is the weights'), save the tokenizer, pack both splits into blocks
    (as `arch` reads them, see lmforge.tokens.BLOCK_LAYOUTS).

    `prepared_corpus` maps split to its Parquet file. The tokenizer learns from every k-th
    document, about `train_sample_mb` MB of text (all of it when the split is smaller).
    """
    from lmforge.artifacts import atomic_dir
    from lmforge.checkpoints import save_tokenizer_of
    from lmforge.data.corpus import corpus_batches, corpus_documents, sample_documents
    from lmforge.tokens import BLOCK_LAYOUTS, pack_corpus

    with atomic_dir(tokenizer_dir) as tmp:
        if checkpoint_dir is None:
            sample = sample_documents(prepared_corpus["train"], train_sample_mb << 20)
            tokenizer = train_for(
                arch, sample, vocab_size, min_frequency, lowercase, num_proc, split_cjk
            )
            save_tokenizer(tokenizer, tmp, block_len, arch)
        else:
            tokenizer = save_tokenizer_of(checkpoint_dir, tmp, block_len, arch)
    summary = {"vocab_size": tokenizer.get_vocab_size(), "block_len": block_len}
    with atomic_dir(tokens_dir) as tmp:
        for split, path in prepared_corpus.items():
            header = pack_corpus(
                tokenizer, corpus_batches(path), block_len, tmp, split, num_proc,
                total_documents=corpus_documents(path), layout=BLOCK_LAYOUTS[arch],
            )  # fmt: skip
            summary[f"{split}_blocks"] = header["blocks"]
            summary[f"{split}_tokens"] = header["tokens"]
    return summary
