"""Token files: packing (serial = parallel), dtype choice, header, the memory-mapped reader,
and the bounded sample the tokenizer trains on."""

from __future__ import annotations

import json
import mmap

import numpy as np
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers

from lmforge.data.corpus import corpus_batches, sample_documents, write_corpus
from lmforge.errors import DataError
from lmforge.tokens import open_blocks, pack_corpus, token_dtype

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def word_tokenizer(words: int) -> Tokenizer:
    """One id per word `w<i>`: token ids are predictable, the vocabulary as large as asked."""
    vocab = {t: i for i, t in enumerate(SPECIALS + [f"w{i}" for i in range(words)])}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return tokenizer


def documents(count: int, words: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [
        " ".join(f"w{w}" for w in rng.integers(0, words, rng.integers(0, 40))) for _ in range(count)
    ]


def reference_blocks(docs: list[str], block_len: int) -> np.ndarray:
    """The packing rule written plainly: ids + [SEP] per non-empty document, cut in rows."""
    stream = []
    for d in docs:
        if d:
            stream += [int(w[1:]) + len(SPECIALS) for w in d.split()] + [3]
    body = block_len - 2
    rows = len(stream) // body
    ids = np.array(stream[: rows * body]).reshape(rows, body)
    return np.concatenate([np.full((rows, 1), 2), ids, np.full((rows, 1), 3)], axis=1)


def batches(docs: list[str], size: int) -> list[list[str]]:
    return [docs[i : i + size] for i in range(0, len(docs), size)]


def test_dtype_is_uint16_while_the_vocabulary_fits():
    assert token_dtype(1 << 16) == np.uint16
    assert token_dtype((1 << 16) + 1) == np.uint32


def test_packing_header_and_memory_map(tmp_path):
    docs = documents(500, 300)
    header = pack_corpus(word_tokenizer(300), batches(docs, 37), 16, tmp_path, "train")
    expected = reference_blocks(docs, 16)
    assert header == json.loads((tmp_path / "train.json").read_text())
    assert header["dtype"] == "uint16" and header["block_len"] == 16
    assert header["blocks"] == len(expected) and header["tokens"] == expected.size
    assert header["documents"] == 500 and header["vocab_size"] == 305
    assert (tmp_path / "train.bin").stat().st_size == expected.size * 2
    for random_access in (False, True):
        blocks, read_header = open_blocks(tmp_path, "train", random_access)
        assert read_header == header and not blocks.flags.writeable
        owner = blocks
        while isinstance(owner, np.ndarray):
            owner = owner.base
        if isinstance(owner, memoryview):
            owner = owner.obj
        assert isinstance(owner, mmap.mmap)  # mapped, not read into memory
        np.testing.assert_array_equal(blocks, expected)


def test_a_vocabulary_over_65536_is_stored_as_uint32(tmp_path):
    docs = ["w0 w69999 w65600", "w1 w2 w70000"]  # w70000 is unknown: [UNK]
    header = pack_corpus(word_tokenizer(70_000), [docs], 4, tmp_path, "validation")
    assert header["dtype"] == "uint32"
    blocks, _ = open_blocks(tmp_path, "validation")
    assert blocks.dtype == np.uint32
    np.testing.assert_array_equal(
        blocks, [[2, 5, 70004, 3], [2, 65605, 3, 3], [2, 6, 7, 3], [2, 1, 3, 3]]
    )


def test_parallel_packing_writes_the_same_file(tmp_path):
    docs = documents(3000, 500, seed=1)
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    one = pack_corpus(word_tokenizer(500), batches(docs, 64), 32, tmp_path / "one", "train")
    two = pack_corpus(word_tokenizer(500), batches(docs, 64), 32, tmp_path / "two", "train", 2)
    assert one == two
    assert (tmp_path / "one/train.bin").read_bytes() == (tmp_path / "two/train.bin").read_bytes()


def test_reader_refuses_a_file_that_disagrees_with_its_header(tmp_path):
    with pytest.raises(DataError, match="run the tokenize stage first"):
        open_blocks(tmp_path, "train")
    pack_corpus(word_tokenizer(50), [documents(200, 50)], 8, tmp_path, "train")
    data = (tmp_path / "train.bin").read_bytes()
    (tmp_path / "train.bin").write_bytes(data[:-2])
    with pytest.raises(DataError, match="re-run the tokenize stage"):
        open_blocks(tmp_path, "train")


def test_an_empty_split_opens_as_no_blocks(tmp_path):
    pack_corpus(word_tokenizer(50), [["w1 w2"]], 8, tmp_path, "validation")
    blocks, header = open_blocks(tmp_path, "validation")
    assert blocks.shape == (0, 8) and header["blocks"] == 0


def test_tokenizer_sample_is_every_kth_document_within_the_budget(tmp_path, monkeypatch):
    import lmforge.data.corpus as corpus_module

    monkeypatch.setattr(corpus_module, "BATCH_DOCUMENTS", 7)  # strides cross batches
    docs = [f"document {i:04d} " + "x" * 80 for i in range(1000)]  # ~95 bytes each
    path = tmp_path / "c.parquet"
    write_corpus(path, docs)
    assert [d for b in corpus_batches(path) for d in b] == docs
    sample = list(sample_documents(path, budget_bytes=10_000))
    stride = 1000 // len(sample) + (1000 % len(sample) > 0)
    assert 9 <= stride <= 11 and sample == docs[::stride]
    assert sum(map(len, sample)) <= 10_000
    assert list(sample_documents(path, budget_bytes=10**9)) == docs  # within budget: all
