"""A deterministic WordPiece vocabulary: the BPE-style build of `tokenizers`' WordPieceTrainer
with ids that never depend on iteration order.

`tokenizers`' trainer gives continuation symbols (`##x`) ids in hash-map order, and ties
between equally frequent pairs are broken by those ids, so two processes training on the
same text get different vocabularies (huggingface/tokenizers#1794). Here words are counted
with the tokenizer's own normalizer and pre-tokenizer, every id is assigned in a fixed
order, and the merge loop picks the most frequent pair, then the pair of smaller ids: the
same text gives the same vocabulary in any process. The result feeds a standard
`tokenizers` WordPiece model.
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Iterable, Iterator
from itertools import islice

from tokenizers import Tokenizer

from lmforge.parallel import ordered_map

PREFIX = "##"

Pair = tuple[int, int]


def count_words(tokenizer: Tokenizer, texts: Iterable[str], num_proc: int = 1) -> Counter[str]:
    """How often each word occurs, as the tokenizer's normalizer and pre-tokenizer split text.

    Splitting text into words is most of a tokenizer's training time, so it is done once
    per distinct space-separated chunk rather than per occurrence: the BERT normalizer maps
    characters one by one (whitespace to a space) and the pre-tokenizer splits at spaces,
    so the words of a text are the words of its chunks. Batches of texts are counted by
    `num_proc` processes; the sum is the same for any number.
    """
    init = (tokenizer.to_str(),)
    batches = _batched(texts, COUNT_BATCH)
    if num_proc <= 1:
        _init_counter(*init)
        parts = map(_count_batch, batches)
    else:
        parts = ordered_map(_count_batch, batches, num_proc, _init_counter, init)
    counts: Counter[str] = Counter()
    for part in parts:
        counts.update(part)
    return counts


COUNT_BATCH = 1024  # texts per task
CHUNK_CACHE = 1 << 18  # distinct chunks whose words a counting process remembers (~50 MB)
_counter: dict = {}


def _init_counter(tokenizer_json: str) -> None:
    tokenizer = Tokenizer.from_str(tokenizer_json)
    _counter.update(
        normalizer=tokenizer.normalizer, pre_tokenizer=tokenizer.pre_tokenizer, words_of={}
    )


def _count_batch(texts: list[str]) -> Counter[str]:
    chunks: Counter[str] = Counter()
    for text in texts:
        chunks.update(text.replace("\n", " ").split(" "))
    words_of: dict[str, list[str]] = _counter["words_of"]
    counts: Counter[str] = Counter()
    for chunk, n in chunks.items():
        words = words_of.get(chunk)
        if words is None:
            if len(words_of) >= CHUNK_CACHE:
                words_of.clear()
            words = words_of[chunk] = _words(chunk)
        for word in words:
            counts[word] += n
    return counts


def _words(text: str) -> list[str]:
    normalizer = _counter["normalizer"]
    if normalizer is not None:
        text = normalizer.normalize_str(text)
    return [word for word, _ in _counter["pre_tokenizer"].pre_tokenize_str(text)]


def _batched(texts: Iterable[str], size: int) -> Iterator[list[str]]:
    iterator = iter(texts)
    while batch := list(islice(iterator, size)):
        yield batch


def build_vocab(
    word_counts: dict[str, int], vocab_size: int, min_frequency: int, special_tokens: list[str]
) -> list[str]:
    """Tokens in id order: special tokens, characters, `##` characters, then merges.

    Merging stops at `vocab_size` tokens or when the best pair occurs fewer than
    `min_frequency` times; every character is kept even past `vocab_size` (as upstream).
    Ties go to the pair of smaller ids, as upstream, but the ids themselves never depend
    on iteration order: characters sorted, then `##` characters sorted, then merges.
    """
    words = sorted(w for w in word_counts if w)
    freq = [word_counts[w] for w in words]
    chars = sorted({c for w in words for c in w})
    inner = sorted({PREFIX + c for w in words for c in w[1:]})
    vocab = list(dict.fromkeys([*special_tokens, *chars, *inner]))
    ids = {token: i for i, token in enumerate(vocab)}
    seqs = [[ids[w[0]], *(ids[PREFIX + c] for c in w[1:])] for w in words]

    counts: Counter[Pair] = Counter()
    where: dict[Pair, set[int]] = {}
    for i, seq in enumerate(seqs):
        for pair in zip(seq, seq[1:], strict=False):
            counts[pair] += freq[i]
            where.setdefault(pair, set()).add(i)
    # Max-heap on count, then the smaller (left, right) ids; stale entries are skipped on pop.
    heap = [(-n, pair) for pair, n in counts.items()]
    heapq.heapify(heap)

    while len(vocab) < vocab_size and heap:
        negative, pair = heapq.heappop(heap)
        if counts.get(pair, 0) != -negative:
            continue
        if -negative < min_frequency:
            break
        merged = vocab[pair[0]] + vocab[pair[1]][len(PREFIX) :]
        if merged not in ids:
            ids[merged] = len(vocab)
            vocab.append(merged)
        changed: Counter[Pair] = Counter()
        for i in where.pop(pair):
            before = _pairs(seqs[i])
            seqs[i] = _merge(seqs[i], pair, ids[merged])
            after = _pairs(seqs[i])
            for p, n in before.items():
                changed[p] -= n * freq[i]
            for p, n in after.items():
                changed[p] += n * freq[i]
                where.setdefault(p, set()).add(i)
        for p, delta in changed.items():
            if delta:
                counts[p] += delta
                if counts[p] > 0:
                    heapq.heappush(heap, (-counts[p], p))
                else:
                    del counts[p]
    return vocab


def _pairs(seq: list[int]) -> Counter[Pair]:
    return Counter(zip(seq, seq[1:], strict=False))


def _merge(seq: list[int], pair: Pair, merged: int) -> list[int]:
    out, i = [], 0
    while i < len(seq):
        if i + 1 < len(seq) and seq[i] == pair[0] and seq[i + 1] == pair[1]:
            out.append(merged)
            i += 2
        else:
            out.append(seq[i])
            i += 1
    return out
