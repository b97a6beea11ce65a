import pytest
import torch

from avguide.data.text import CHARS, VOCAB, normalize_text


def test_layout():
    assert VOCAB.blank == VOCAB.pad == 0
    assert VOCAB.sos == VOCAB.eos == 1
    assert len(VOCAB) == 2 + 2 + 26
    assert VOCAB.tokens[:4] == ("<blank>", "<sos/eos>", " ", "'")
    assert VOCAB.encode("az") == [4, 29]


def test_round_trip():
    text = "don't stop me now"
    ids = VOCAB.encode(text)
    assert len(ids) == len(text)
    assert all(2 <= i < len(VOCAB) for i in ids)
    assert VOCAB.decode(ids) == text
    assert VOCAB.decode(torch.tensor(ids)) == text


def test_every_character_has_its_own_id():
    text = "a" + CHARS  # "a '" + a-z: normalised, holds every character
    ids = VOCAB.encode(text)
    assert ids[1:] == list(range(2, len(VOCAB)))
    assert VOCAB.decode(ids) == text


def test_decode_skips_specials():
    h, i = VOCAB.encode("hi")
    assert VOCAB.decode([VOCAB.sos, h, VOCAB.blank, VOCAB.blank, i, VOCAB.eos, VOCAB.pad]) == "hi"


def test_decode_rejects_out_of_range_id():
    with pytest.raises(ValueError, match="token id 30 out of range"):
        VOCAB.decode([4, 30])


@pytest.mark.parametrize(
    "text, char",
    [("Hello", "'H'"), ("a,b", "','"), ("it’s", "'’'"), ("x1", "'1'"), ("<blank>", "'<'")],
)
def test_encode_names_the_offending_character(text, char):
    with pytest.raises(ValueError, match=char):
        VOCAB.encode(text)


@pytest.mark.parametrize("text", ["a  b", " a", "a ", " "])
def test_encode_rejects_unnormalised_spacing(text):
    with pytest.raises(ValueError, match="not normalised"):
        VOCAB.encode(text)


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("Hello, World!", "hello world"),
        ("  DON'T   stop ", "don't stop"),
        ("It’s 5 o'clock", "it's o'clock"),
        ("a\tb\nc", "a b c"),
        ("well-known", "well known"),
        ("?!", ""),
        ("", ""),
    ],
)
def test_normalize_text(raw, expected):
    assert normalize_text(raw) == expected


def test_normalised_text_always_encodes():
    raw = "Ünïcode & digits 123 — mixed!  CASE's"
    text = normalize_text(raw)
    assert normalize_text(text) == text
    assert VOCAB.decode(VOCAB.encode(text)) == text
