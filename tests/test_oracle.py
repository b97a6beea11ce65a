"""The oracle bound on a tiny synthetic corpus: the corpus' own rig driven by the true phoneme timings with the mean
style. It has the ground truth's frame counts, scores far better than the static template without being the
ground truth, closes the lips on the bilabials, and with the generator's own per-utterance draws replayed it is the
ground truth (up to phonemes.csv's rounding of times to the microsecond)."""

import shutil

import numpy as np
import pytest

from avguide.data.corpus import Corpus, CorpusError
from avguide.data.synthetic import SyntheticConfig, build_corpus, make_subjects, non_speech_motion
from avguide.face.rig import Rig
from avguide.face.template import build_face
from avguide.oracle import oracle_sequences, speech_parameters, utterance_timing
from avguide.scoring import score

CFG = {"seed": 0, "subjects": {"test": 1}, "sentences_per_subject": 2}  # "put blue by ...": 5 bilabials


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return Corpus(build_corpus(tmp_path_factory.mktemp("corpus"), SyntheticConfig.from_dict(CFG), progress=False))


@pytest.fixture(scope="module")
def oracle(corpus):
    return oracle_sequences(corpus, "test", CFG)


def test_oracle_scores_between_the_static_template_and_the_truth(corpus, oracle):
    rows = corpus.split("test")
    utterances = rows["utterance"].tolist()
    true = [corpus.vertices(u) for u in utterances]
    assert [len(o) for o in oracle] == [len(t) for t in true] == rows["n_frames"].tolist()
    assert all(o.shape[1:] == t.shape[1:] and o.dtype == np.float32 for o, t in zip(oracle, true))
    templates = [corpus.templates[s] for s in rows["subject"]]
    phonemes = corpus.phonemes()
    assert (phonemes["viseme"] == "PP").sum() >= 4  # the tiny corpus has bilabials to close
    overall, _ = score(oracle, true, templates, corpus.topology, utterances=utterances, phonemes=phonemes, fps=25.0)
    assert 0 < overall["LVE"] < 0.5 * overall["static_template_LVE"]
    assert 0 < overall["aperture_rmse_mm"] < 4.0 and overall["MTM_ms"] < 80.0  # this subject lags 40 ms
    assert overall["closure_rate"] >= 0.9, overall


def test_with_the_generators_draws_replayed_the_oracle_is_the_ground_truth(corpus):
    """The oracle's keys and rig are the generator's: put back what the oracle leaves out (the subject's style,
    the utterance's articulation strength and timing jitter, blinks and brows, drawn from the generator's own
    random stream) and the ground truth comes out, to well under a micrometre."""
    cfg = SyntheticConfig.from_dict(CFG)
    subjects = make_subjects(cfg)
    phonemes = corpus.phonemes()
    for row in corpus.split("test").itertuples(index=False):
        si = [s.name for s in subjects].index(row.subject)
        ui = int(row.sentence.removeprefix("sentence")) - 1
        subject = subjects[si]
        rng = np.random.default_rng([cfg.seed, 3, si, ui])  # as avguide.data.synthetic._write_subject
        rng.integers(2**31)  # the voice's seed
        times = np.arange(row.n_frames) / cfg.fps + subject.av_lag_s
        gain = subject.gain * max(0.2, rng.normal(1.0, cfg.variation.articulation_sd))
        if rng.random() < cfg.variation.hypo_prob:
            gain *= cfg.variation.hypo_gain
        segments, duration = utterance_timing(corpus, phonemes, row.utterance)
        speech = speech_parameters(segments, duration, times, gain, cfg.variation.timing_jitter_s, rng)
        params = np.concatenate([speech, non_speech_motion(times, subject, rng)], 1)
        replayed = Rig(build_face(subject.shape), asymmetry=subject.asymmetry).pose(params)
        assert np.abs(replayed - corpus.vertices(row.utterance)).max() < 1e-6, row.utterance


def test_oracle_needs_the_synthetic_corpus_and_its_config(corpus, tmp_path):
    with pytest.raises(CorpusError, match="seed 3"):
        oracle_sequences(corpus, "test", {**CFG, "seed": 3})
    with pytest.raises(CorpusError, match="no utterances in split 'train'"):
        oracle_sequences(corpus, "train", CFG)
    copy = tmp_path / "no_phonemes"
    shutil.copytree(corpus.root, copy)
    (copy / "phonemes.csv").unlink()
    with pytest.raises(CorpusError, match="only the synthetic corpus"):
        oracle_sequences(copy, "test", CFG)
