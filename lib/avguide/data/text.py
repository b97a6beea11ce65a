"""The character vocabulary shared by the whole project (CTC and attention decoders of the lip reader).

Token ids::

    0  <blank>    CTC blank, also the padding id of token batches
    1  <sos/eos>  start and end of sentence, one shared token (as in ESPnet / auto-AVSR)
    2  " "        space
    3  "'"        apostrophe
    4.. a-z

Transcripts are normalised with `normalize_text` before `VOCAB.encode`; `encode` refuses anything
else, so no character is ever silently dropped.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

BLANK = "<blank>"
SOS_EOS = "<sos/eos>"
CHARS = " '" + "abcdefghijklmnopqrstuvwxyz"

_OUTSIDE = re.compile(r"[^a-z' ]")
_SPACES = re.compile(r" +")


def normalize_text(s: str) -> str:
    """Lower-case, map every character outside a-z, apostrophe and space to a space, collapse spaces, strip.

    A typographic apostrophe (U+2019) counts as an apostrophe: "Don’t" -> "don't".
    """
    s = s.lower().replace("\u2019", "'")
    return _SPACES.sub(" ", _OUTSIDE.sub(" ", s)).strip()


class Vocabulary:
    """Characters <-> ids. Use the module-level `VOCAB`; do not build others."""

    def __init__(self, chars: str = CHARS):
        self.tokens: tuple[str, ...] = (BLANK, SOS_EOS, *chars)
        self.blank: int = 0
        self.pad: int = 0
        self.sos: int = 1
        self.eos: int = 1
        self._index = {t: i for i, t in enumerate(self.tokens)}
        self._n_specials = 2

    def __len__(self) -> int:
        return len(self.tokens)

    def encode(self, text: str) -> list[int]:
        """Ids of the characters of a normalised transcript (no <sos/eos> added)."""
        for pos, ch in enumerate(text):
            if ch not in self._index:
                raise ValueError(
                    f"cannot encode {ch!r} (U+{ord(ch):04X}) at position {pos} of {text!r}: "
                    f"expected only a-z, apostrophe and space (run normalize_text first)"
                )
        if text != normalize_text(text):
            raise ValueError(
                f"text {text!r} is not normalised (leading, trailing or repeated spaces); "
                f"expected {normalize_text(text)!r}"
            )
        return [self._index[ch] for ch in text]

    def decode(self, ids: Iterable[int]) -> str:
        """Characters of `ids`, skipping <blank> and <sos/eos>. No CTC repeat collapsing: that is the decoder's job."""
        out = []
        for i in ids:
            i = int(i)
            if not 0 <= i < len(self.tokens):
                raise ValueError(f"token id {i} out of range: the vocabulary has ids 0..{len(self.tokens) - 1}")
            if i >= self._n_specials:
                out.append(self.tokens[i])
        return "".join(out)

    def __repr__(self) -> str:
        return f"Vocabulary({len(self)} tokens: blank={self.blank}, sos=eos={self.sos}, chars={CHARS!r})"


VOCAB = Vocabulary()
