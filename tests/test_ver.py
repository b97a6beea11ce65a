"""VER, the viseme error rate: text -> IPA (phonemizer, espeak) -> visemes (ipa_visemes.json) -> edit distance."""

import json
from importlib.resources import files

import numpy as np
import pytest

import avguide.metrics
from avguide.data.synthetic import load_grammar, sample_sentences
from avguide.face.visemes import load_table
from avguide.metrics import cer, ipa_viseme_table, phonemize, to_visemes, ver


def test_identical_texts_have_no_viseme_errors():
    texts = ["bin blue at f two now", "place red with z nine please"]
    assert ver(texts, texts) == 0.0
    assert ver("lay green in k seven soon", "lay green in k seven soon") == 0.0


def test_lip_alike_words_are_the_same_visemes():
    """bin/pin (and fast/vast) differ in sound, not on the lips: VER 0 where CER is not."""
    assert to_visemes(["bin"]) == to_visemes(["pin"]) == [["PP", "ih", "nn"]]
    assert ver("bin", "pin") == 0.0 and cer("bin", "pin") > 0
    assert ver("fast", "vast") == 0.0 and cer("fast", "vast") > 0


def test_a_case_computed_by_hand():
    # "bin blue"  -> b ɪ n b l uː   -> PP ih nn PP nn ou      (6 visemes)
    # "pin green" -> p ɪ n ɡ ɹ iː n -> PP ih nn kk RR ih nn   (7)
    # after the shared PP ih nn: [PP nn ou] -> [kk RR ih nn] needs 4 edits (one match at most, 4 hyp symbols)
    # "fast" / "vast" -> FF aa SS DD both: 0 edits of 4.  VER = (4 + 0) / (6 + 4)
    assert to_visemes(["bin blue", "pin green"]) == [
        ["PP", "ih", "nn", "PP", "nn", "ou"],
        ["PP", "ih", "nn", "kk", "RR", "ih", "nn"],
    ]
    assert ver(["bin blue", "fast"], ["pin green", "vast"]) == pytest.approx(0.4)
    assert ver("at", "") == 1.0  # nothing read: every reference viseme deleted
    with pytest.raises(ValueError, match="references are all empty"):
        ver([""], ["bin"])
    with pytest.raises(ValueError, match="as many hypotheses"):
        ver(["bin"], [])


def test_every_phoneme_of_the_grammar_is_in_the_table():
    """Every phoneme espeak-ng gives the project's words, alone and in sentences, has visemes."""
    grammar = load_grammar()
    words = sorted({w for slot in grammar["slots"].values() for w in slot})
    sentences = sample_sentences(200, np.random.default_rng(0), grammar)
    table = ipa_viseme_table()
    seen = {p for seq in phonemize(words + sentences) for p in seq}
    assert seen and not seen - set(table), f"missing from ipa_visemes.json: {sorted(seen - set(table))}"
    assert all(len(v) for v in to_visemes(words))


def test_an_unknown_phoneme_is_an_error_naming_it(monkeypatch):
    table = dict(ipa_viseme_table())
    del table["ɪ"]
    monkeypatch.setattr(avguide.metrics, "ipa_viseme_table", lambda: table)
    with pytest.raises(ValueError, match="'ɪ'.*'bin'.*ipa_visemes.json"):
        ver("bin", "pin")


def test_table_agrees_with_the_rigs_visemes():
    """Each IPA symbol gets the visemes visemes.json gives the espeak-ng phoneme it stands for, and only
    viseme classes that visemes.json defines."""
    raw = json.loads(files("avguide.face").joinpath("ipa_visemes.json").read_text(encoding="utf-8"))
    rig = load_table()
    table = ipa_viseme_table()
    assert {v for vs in table.values() for v in vs} <= set(rig.visemes)
    for ipa, mnemonic in raw["espeak"].items():
        assert table[ipa] == rig.of(mnemonic), (ipa, mnemonic)
    assert len(raw["espeak"]) >= 0.8 * len(table)  # nearly every entry is cross-checked
