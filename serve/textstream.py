"""Generated token ids to text, piece by piece, for streaming.

A byte-level BPE token is a run of bytes, not always whole characters (a Chinese character
or an emoji spans up to four bytes, often split over tokens), so bytes wait until they
complete a character; and text that could be the start of a stop sequence waits until it
turns out not to be one. Every piece handed out is valid text, and the pieces join to
the full response.
"""

from __future__ import annotations

import codecs

from tokenizers import Tokenizer


def _byte_decoder() -> dict[str, int]:
    """GPT-2's printable stand-in character for each byte, inverted (what ByteLevel uses)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    chars, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            chars[chr(byte)] = byte
        else:
            chars[chr(256 + extra)] = byte
            extra += 1
    return chars


def token_bytes(tokenizer: Tokenizer) -> list[bytes]:
    """The bytes of every token id (special tokens: empty); ValueError when the tokenizer is
    not byte-level (a token with a character outside the 256 byte stand-ins)."""
    table = _byte_decoder()
    special = {t.content for t in tokenizer.get_added_tokens_decoder().values() if t.special}
    vocab = tokenizer.get_vocab(with_added_tokens=True)
    out = [b""] * (max(vocab.values()) + 1)
    for token, index in vocab.items():
        if token in special:
            continue
        try:
            out[index] = bytes(table[c] for c in token)
        except KeyError:
            raise ValueError(f"token {token!r} is not byte-level BPE") from None
    return out


class TextStream:
    """Feed token ids; take text pieces that are safe to show.

    `stop` strings end the text before them: once one appears, `stopped` is set and the
    text stays cut there.
    """

    def __init__(self, table: list[bytes], stop: list[str]) -> None:
        self._table = table
        self._stop = [s for s in stop if s]
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.text = ""  # decoded so far (whole characters only)
        self._sent = 0  # characters of self.text handed out
        self.stopped = False

    def push(self, token_id: int) -> str:
        """Add one token; return the text that became safe to show (maybe "")."""
        if self.stopped:
            return ""
        piece = self._table[token_id] if token_id < len(self._table) else b""
        self.text += self._utf8.decode(piece)
        search_from = max(self._sent - max((len(s) for s in self._stop), default=0), 0)
        cut = min((i for s in self._stop if (i := self.text.find(s, search_from)) >= 0), default=-1)
        if cut >= 0:
            self.text, self.stopped = self.text[:cut], True
            return self._take(len(self.text))
        return self._take(len(self.text) - self._held())

    def finish(self) -> str:
        """The rest of the text once generation has ended (held-back text included)."""
        if not self.stopped:
            self.text += self._utf8.decode(b"", final=True)
        return self._take(len(self.text))

    def _held(self) -> int:
        """Length of the longest end of the text that begins some stop string."""
        longest = 0
        for stop in self._stop:
            for n in range(min(len(stop) - 1, len(self.text)), longest, -1):
                if self.text.endswith(stop[:n]):
                    longest = n
                    break
        return longest

    def _take(self, end: int) -> str:
        end = max(end, self._sent)
        piece, self._sent = self.text[self._sent : end], end
        return piece
