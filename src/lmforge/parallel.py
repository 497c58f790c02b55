"""Ordered, bounded fan-out of batches to worker processes (tokenizer training and packing)."""

from __future__ import annotations

import multiprocessing
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any


def ordered_map(
    function: Callable[[Any], Any],
    items: Iterable[Any],
    num_proc: int,
    initializer: Callable[..., None],
    initargs: tuple,
) -> Iterator[Any]:
    """`function(item)` for every item, in order, computed by `num_proc` processes.

    At most two items per process are in flight, so memory stays bounded however many
    items there are (`Pool.imap` would queue them all). Processes are spawned, not forked:
    the parent may have started Rust threads (tokenizers) already.
    """
    context = multiprocessing.get_context("spawn")
    with context.Pool(num_proc, initializer=initializer, initargs=initargs) as pool:
        pending: deque = deque()
        for item in items:
            pending.append(pool.apply_async(function, (item,)))
            if len(pending) >= 2 * num_proc:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()
