"""The deterministic WordPiece build: the same text gives the same files in any process."""

from __future__ import annotations

import hashlib
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from lmforge.tokenizer import SPECIAL_TOKENS, save_tokenizer, train_tokenizer
from lmforge.wordpiece import build_vocab
from support import REPO

TRAIN_AND_SAVE = """
import sys
from pathlib import Path
from lmforge.data.text import read_corpus
from lmforge.tokenizer import save_tokenizer, train_tokenizer
texts = read_corpus("data/sample/corpus/train.txt")
save_tokenizer(train_tokenizer(texts, 3000, 2, True), Path(sys.argv[1]), 128)
"""


def _digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_two_processes_save_identical_bytes(tmp_path):
    """`tokenizers`' own trainer fails this (ties in hash-map order, tokenizers#1794)."""
    digests = []
    for run, hash_seed in enumerate(("1", "2")):
        env = dict(os.environ, PYTHONHASHSEED=hash_seed)
        env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), str(REPO)])
        out = tmp_path / f"run{run}"
        subprocess.run(
            [sys.executable, "-c", TRAIN_AND_SAVE, str(out)], cwd=REPO, env=env, check=True
        )
        digests.append(_digests(out))
    assert "tokenizer.json" in digests[0]
    assert digests[0] == digests[1]


def test_vocabulary_does_not_depend_on_word_order():
    words = {"low": 5, "lower": 2, "newest": 6, "widest": 3, "new": 2, "wide": 2}
    expected = build_vocab(words, 60, 2, SPECIAL_TOKENS)
    shuffled = list(words.items())
    for seed in range(5):
        random.Random(seed).shuffle(shuffled)
        assert build_vocab(dict(shuffled), 60, 2, SPECIAL_TOKENS) == expected


def test_merges_by_count_then_smaller_ids():
    # Characters get ids in sorted order, then `##` characters, then merges in order.
    vocab = build_vocab({"ab": 3, "cd": 3, "abd": 1}, 100, 2, ["[UNK]"])
    assert vocab[:9] == ["[UNK]", "a", "b", "c", "d", "##b", "##d", "ab", "cd"]
    # ("ab", "##d") occurs once: below min_frequency 2, so merging stops there.
    assert vocab == vocab[:9]
    assert build_vocab({"ab": 3, "cd": 3, "abd": 1}, 8, 1, ["[UNK]"])[-1] == "ab"


def test_trained_tokenizer_is_a_standard_fast_tokenizer(tmp_path):
    from transformers import AutoTokenizer

    texts = ["The cat sat on the mat.", "The cats sat on the mats!"] * 3
    tokenizer = train_tokenizer(texts, 60, 1, True)
    save_tokenizer(tokenizer, tmp_path, 32)
    fast = AutoTokenizer.from_pretrained(str(tmp_path))
    ids = fast("the cats sat")["input_ids"]
    assert fast.convert_ids_to_tokens(ids)[0] == "[CLS]"
    assert fast.decode(ids, skip_special_tokens=True) == "the cats sat"
    assert tokenizer.encode("[MASK] cat").tokens[1] == "[MASK]"


def test_words_counted_in_parallel_give_the_same_tokenizer():
    from lmforge.data.text import read_corpus

    texts = read_corpus(REPO / "data/sample/corpus/train.txt") * 3
    assert len(texts) > 2 * 1024  # several batches, so both processes count some
    serial = train_tokenizer(texts, 3000, 2, True).to_str()
    assert train_tokenizer(iter(texts), 3000, 2, True, num_proc=2).to_str() == serial


@pytest.mark.parametrize("lowercase", [True, False])
def test_counting_by_chunks_equals_splitting_each_text(lowercase):
    from collections import Counter

    from lmforge.wordpiece import count_words

    tokenizer = train_tokenizer(["warm up"], 40, 1, lowercase)
    texts = [
        "Ünïcödé café\u00a0naïve\u3000résumé\tdéjà\u2028vu\u0085x \x1cy  end.",
        "高勇在北京工作，住在“北京”。 U.S. $5 €5 a_b (x)",
        "ΟΔΟΣ ΟΔΟΣ\nline two\r\nthree \u0301accent ﬁne ＡＢＣ 😀!",
        "",
        " leading and trailing ",
    ] * 3
    reference: Counter[str] = Counter()
    for text in texts:
        normalized = tokenizer.normalizer.normalize_str(text)
        reference.update(w for w, _ in tokenizer.pre_tokenizer.pre_tokenize_str(normalized))
    assert count_words(tokenizer, texts) == reference
