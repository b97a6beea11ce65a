"""The synthetic corpus: determinism, audio/motion agreement, articulation measured on the mesh, the tables."""

import json

import numpy as np
import pandas as pd
import pytest
from corpus_hashes import SMALL_3D, committed, file_hashes

from avguide.data.corpus import Corpus
from avguide.data.speech import Voice, phoneme_inventory, synthesize
from avguide.data.synthetic import SyntheticConfig, build_corpus, load_grammar, sample_sentences
from avguide.face.rig import PARAMETERS, Rig
from avguide.face.template import PARTS, build_face, lip_opening
from avguide.face.visemes import VisemeError, articulate, load_table, viseme_keys

SMALL = dict(subjects={"train": 2, "val": 1, "test": 1}, sentences_per_subject=6)  # corpus_hashes.SMALL_3D, seed 7


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return Corpus(
        build_corpus(tmp_path_factory.mktemp("c") / "synth3d", SyntheticConfig(seed=7, **SMALL), progress=False)
    )


@pytest.mark.slow
def test_the_committed_bytes(corpus):
    """The corpus built here is byte for byte the one whose hashes are committed (tests/corpus_hashes.py)."""
    assert SyntheticConfig(seed=7, **SMALL) == SMALL_3D
    assert file_hashes(corpus.root) == committed("synth3d")


def test_same_seed_same_bytes_other_seed_other_data(corpus, tmp_path, digest):
    again = build_corpus(tmp_path / "again", SyntheticConfig(seed=7, **SMALL), progress=False, workers=1)
    assert digest(again) == digest(corpus.root)
    other = build_corpus(tmp_path / "other", SyntheticConfig(seed=8, **SMALL), progress=False)
    assert (other / "manifest.csv").read_bytes() != (corpus.root / "manifest.csv").read_bytes()


def test_layout_and_splits(corpus):
    m = corpus.manifest
    assert len(m) == 4 * 6
    assert corpus.n_vertices >= 3000
    subjects = corpus.subjects
    assert [len(subjects[s]) for s in ("train", "val", "test")] == [2, 1, 1]
    assert not set(subjects["train"]) & set(subjects["test"])
    for row in m.itertuples():
        assert (corpus.root / row.wav).is_file() and (corpus.root / row.vertices).is_file()
    assert (corpus.root / "phonemes.csv").is_file()


def test_audio_and_motion_lengths_agree(corpus):
    for row in corpus.manifest.itertuples():
        audio, verts = corpus.load(row.utterance)
        assert verts.shape == (row.n_frames, corpus.n_vertices, 3)
        assert abs(len(audio) / 16000 * row.fps - row.n_frames) <= 1.0


def test_bilabials_close_the_lips_and_open_vowels_open_the_jaw(corpus):
    """Measured on the mesh: inner-lip distance at the midpoint of each p/b/m and each open vowel."""
    phonemes = pd.read_csv(corpus.root / "phonemes.csv")
    lag = {s["name"]: s["av_lag_s"] for s in json.loads((corpus.root / "subjects.json").read_text())["subjects"]}
    closed, opened = [], []
    for row in corpus.manifest.itertuples():
        gap = lip_opening(corpus.vertices(row.utterance))
        for p in phonemes[phonemes.utterance == row.utterance].itertuples():
            frame = int(round(((p.start_s + p.end_s) / 2 - lag[row.subject]) * row.fps))
            near = gap[max(frame - 1, 0) : frame + 2]  # the midpoint lies between two frames at 25 fps
            if p.viseme == "PP":
                closed.append(near.min())
            elif p.viseme in ("aa", "aa+ih", "aa+ou"):
                opened.append(near.max())
    assert len(closed) >= 5 and len(opened) >= 5
    assert max(closed) < 0.5e-3, f"bilabial inner-lip distance up to {max(closed) * 1e3:.2f} mm"
    assert np.median(opened) > 6e-3, f"open vowels open only {np.median(opened) * 1e3:.2f} mm"


def test_rig_closure_is_exact_whatever_the_jaw_does():
    mesh = build_face()
    rig = Rig(mesh, asymmetry=0.1)
    params = np.zeros((3, len(PARAMETERS)))
    params[:, 0] = [0.0, 0.5, 1.0]  # jaw
    params[:, 3] = 1.0  # closure
    up, low = mesh.contour_ids()
    v = rig.pose(params)
    assert np.abs(v[:, up, 1] - v[:, low, 1]).max() < 1e-6
    params[:, 3] = 0.0
    assert lip_opening(rig.pose(params))[2] > 0.012  # wide open without closure


def test_teeth_show_when_the_mouth_opens():
    mesh = build_face()
    rig = Rig(mesh)
    params = np.zeros((2, len(PARAMETERS)))
    params[1, 0] = 1.0
    rest, open_ = rig.pose(params)
    up_teeth = (mesh.part == PARTS["teeth"]) & ~mesh.teeth_lower
    mid = mesh.contour_ids()[0][len(mesh.contour_ids()[0]) // 2]
    mid_low = mesh.contour_ids()[1][len(mesh.contour_ids()[1]) // 2]
    # Closed: the upper teeth's edge hides behind the lips' meeting line. Open: the gap exposes them.
    assert rest[mid, 1] - rest[mid_low, 1] < 1e-3
    assert open_[mid_low, 1] < open_[up_teeth, 1].min() - 5e-3
    assert (open_[up_teeth, 2] > open_[mesh.part == PARTS["mouth"], 2].min()).all()
    assert (
        mesh.albedo[mesh.part == PARTS["teeth"]].min()
        > 0.8
        > 0.2
        > mesh.albedo[mesh.ring < 0][mesh.part[mesh.ring < 0] == PARTS["mouth"]].max()
    )


def test_template_regions():
    mesh = build_face()
    assert mesh.faces.min() == 0 and mesh.faces.max() == len(mesh.vertices) - 1
    assert 500 < len(mesh.lip_ids) < len(mesh.vertices) / 2
    assert len(mesh.upper_face_ids) > 100
    assert not set(mesh.lip_ids) & set(mesh.upper_face_ids)
    assert (mesh.vertices[mesh.upper_face_ids, 1] > mesh.vertices[mesh.lip_ids, 1].max()).all()


def test_every_english_espeak_phoneme_has_a_viseme():
    table = load_table()
    for voice_table in ("en-us", "en"):
        inventory = phoneme_inventory(voice_table)
        spoken = {p for p, kind in inventory.items() if kind not in (1, 9) and p.isprintable()}  # not stress/virtual
        assert spoken <= set(table.phonemes), sorted(spoken - set(table.phonemes))


def test_unknown_phoneme_is_named():
    with pytest.raises(VisemeError, match=r"'Xq'.*utterance u1"):
        viseme_keys([("p", 0.0, 0.1), ("Xq", 0.1, 0.2)], where="utterance u1")


def test_espeak_timings_are_exact_and_ordered():
    speech = synthesize("bin blue at p two now", Voice("en-us+m3", rate=160, pitch=40))
    starts = [s for _, s, _ in speech.phonemes]
    assert starts == sorted(starts)
    assert speech.phonemes[0][0] == "b"
    assert all(e > s for _, s, e in speech.phonemes)
    assert speech.phonemes[-1][2] <= len(speech.audio) / 16000 + 1e-9
    # energy rises right after the first phoneme starts: the event is where the sound is
    i = int(speech.phonemes[0][1] * 16000)
    assert np.abs(speech.audio[:i]).max() < 0.05 < np.abs(speech.audio[i : i + 4000]).max()
    with pytest.raises(ValueError, match="empty"):
        synthesize("  ")


def test_grammar_has_lip_alike_pairs_and_sentences_are_distinct():
    grammar = load_grammar()
    words = {w for slot in grammar["slots"].values() for w in slot}
    assert grammar["lip_alike"] and all(set(pair) <= words for pair in grammar["lip_alike"])
    sentences = sample_sentences(50, np.random.default_rng(0), grammar)
    assert len(set(sentences)) == 50 and all(len(s.split()) == 6 for s in sentences)


def test_coarticulation_keeps_motion_continuous():
    keys = viseme_keys([("_", 0.0, 0.1), ("b", 0.1, 0.16), ("aa", 0.16, 0.4), ("m", 0.4, 0.46), ("_", 0.46, 0.9)])
    times = np.arange(0, 0.9, 0.001)
    p = articulate(keys, times)
    assert np.abs(np.diff(p, axis=0)).max() < 0.1  # no jumps at 1 kHz
    assert p[np.searchsorted(times, 0.13), 3] > 0.95  # closure at the b
    assert p[np.searchsorted(times, 0.28), 0] > 0.7  # jaw open at the vowel
    assert p[-1, 0] < 0.05  # back to rest in the pause
