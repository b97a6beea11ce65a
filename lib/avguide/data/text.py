"""The character vocabulary shared by the whole project (CTC and attention decoders of the lip reader).

Token ids::

    0  <blank>    CTC blank, also the padding id of token batches
    1  <sos/eos>  start and end of sentence, one shared token (as in ESPnet / auto-AVSR)
    2  " "        space
    3  "'"        apostrophe
    4.. a-z

Transcripts are normalised with `normalize_text` before `VOCAB.encode`; `encode` refuses anything
else, so no character is ever silently dropped.

`SentencePieceVocabulary` is the other vocabulary a reader can carry: the word pieces of auto-AVSR's published
readers (avguide.models.autoavsr), from its SentencePiece model and units files. Batches still hold VOCAB's ids;
such a reader re-encodes their text.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

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


WORD_BOUNDARY = "\u2581"  # SentencePiece's mark of a word start


def units_beside(model: str | Path) -> Path:
    """Where auto-AVSR keeps the units of a SentencePiece model: spm/unigram/unigram5000.model ->
    spm/unigram/unigram5000_units.txt."""
    model = Path(model)
    return model.with_name(model.stem + "_units.txt")


class SentencePieceVocabulary:
    """Word pieces <-> ids, numbered as auto-AVSR numbers its outputs: 0 <blank>, then the lines of a units file
    ("<unk> 1", then "piece id" with ids 2, 3, ... in order), then <sos/eos>. The ids are the units file's, not the
    SentencePiece model's own: auto-AVSR listed the pieces its training text was encoded into, sorted (5,047 units
    with <unk>; 5,049 outputs), so both files are needed.

    `encode` (text -> ids) runs the SentencePiece model through the `sentencepiece` package, imported on first
    use; `decode` needs only the units (pieces joined, the word-start mark read as a space, <unk> dropped, then
    `normalize_text`). Texts are upper-cased before encoding when the units have no lower-case letter (auto-AVSR's
    are upper case)."""

    def __init__(self, model: str | Path, units: str | Path | None = None):
        self.model = Path(model)
        self.units = Path(units) if units is not None else units_beside(model)
        if not self.units.is_file():
            raise FileNotFoundError(f"{self.units}: no units file (lines 'piece id', as auto-AVSR's *_units.txt)")
        pieces = []
        for n, line in enumerate(self.units.read_text(encoding="utf-8").splitlines(), 1):
            fields = line.split()
            if len(fields) != 2 or fields[1] != str(n):
                raise ValueError(f"{self.units}, line {n}: expected 'piece {n}', found {line!r}")
            pieces.append(fields[0])
        self.tokens: tuple[str, ...] = (BLANK, *pieces, SOS_EOS)
        self.blank = self.pad = 0
        self.sos = self.eos = len(self.tokens) - 1
        self._index = {t: i for i, t in enumerate(self.tokens)}
        self.unk = self._index.get("<unk>")
        letters = "".join(p for p in pieces if not (p.startswith("<") and p.endswith(">")))  # not <unk>
        self.upper = any(c.isupper() for c in letters) and not any(c.islower() for c in letters)
        self._processor = None

    def __len__(self) -> int:
        return len(self.tokens)

    def processor(self):
        """The SentencePiece model (loaded once)."""
        if self._processor is None:
            try:
                import sentencepiece
            except ImportError:
                raise ImportError(
                    f"encoding text with {self.model} needs the sentencepiece package (pip install sentencepiece); "
                    "decoding does not"
                ) from None
            if not self.model.is_file():
                raise FileNotFoundError(f"{self.model}: no SentencePiece model file")
            self._processor = sentencepiece.SentencePieceProcessor(model_file=str(self.model))
        return self._processor

    def encode(self, text: str) -> list[int]:
        """Ids of the pieces of `text` (no <sos/eos> added); a piece outside the units is <unk>."""
        pieces = self.processor().encode(text.upper() if self.upper else text, out_type=str)
        return [self._index.get(p, self.unk) for p in pieces]

    def decode(self, ids: Iterable[int]) -> str:
        """The normalised text of `ids`, skipping <blank>, <unk> and <sos/eos>."""
        out = []
        for i in ids:
            i = int(i)
            if not 0 <= i < len(self.tokens):
                raise ValueError(f"token id {i} out of range: the vocabulary has ids 0..{len(self.tokens) - 1}")
            if i not in (self.blank, self.sos, self.unk):
                out.append(self.tokens[i])
        return normalize_text("".join(out).replace(WORD_BOUNDARY, " "))

    def __repr__(self) -> str:
        return f"SentencePieceVocabulary({len(self)} tokens: {self.model.name}, {self.units.name})"
