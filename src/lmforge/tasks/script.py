"""Chinese, Japanese and Korean ideographs: text that holds them is read a character at
a time (CMRC 2018's QA scoring, the Resume NER data's one character per token).

Standard library only: the serving path imports this module.
"""

from __future__ import annotations

from collections.abc import Sequence

# The CJK Unified Ideographs blocks and their extensions and compatibility forms, as
# BERT's tokenizer (and `tokenizers`' BertNormalizer) define "Chinese characters".
_CJK_RANGES = (
    (0x4E00, 0x9FFF),
    (0x3400, 0x4DBF),
    (0x20000, 0x2A6DF),
    (0x2A700, 0x2B73F),
    (0x2B740, 0x2B81F),
    (0x2B820, 0x2CEAF),
    (0xF900, 0xFAFF),
    (0x2F800, 0x2FA1F),
)


def is_cjk(char: str) -> bool:
    code = ord(char)
    return any(low <= code <= high for low, high in _CJK_RANGES)


def has_cjk(text: str) -> bool:
    return any(is_cjk(char) for char in text)


def join_tokens(tokens: Sequence[str]) -> str:
    """A tokenized sentence as raw text: Chinese is written without spaces, so the tokens
    of a sentence with CJK characters are joined with nothing, others with a space."""
    return ("" if any(has_cjk(token) for token in tokens) else " ").join(tokens)
