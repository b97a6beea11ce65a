"""The oracle bound: what a perfect audio-driven animator could reach on the synthetic corpus.

The corpus' own rig (avguide.data.synthetic) driven by each utterance's true phoneme timings (phonemes.csv), with
the subject's own face shape (its template: the test subjects' templates are given to every animator), but with
what the audio does not tell set to its mean:

- the speaking style: articulation gain the middle of the style's gain range (1.0 by default), no left-right
  asymmetry and no audio-visual lag (their ranges are symmetric about 0);
- no per-utterance variation: no articulation-strength noise, no hypo-articulation, no viseme timing jitter;
- no blinks; the brows held still at their mean level (mean brow amplitude x 2/pi, the mean of |sin|).

Frame k is at time k / fps, as in the corpus, and every sequence has the ground truth's frame count.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from avguide.data.audio import SAMPLE_RATE, load_wav
from avguide.data.corpus import Corpus, CorpusError
from avguide.data.synthetic import StyleRanges, Subject, SyntheticConfig, make_subjects
from avguide.face.rig import Rig
from avguide.face.template import build_face
from avguide.face.visemes import articulate, viseme_keys

MEAN_ABS_SINE = 2 / np.pi  # the mean of |sin| over a period: the brow drift's mean level per unit amplitude


def speech_parameters(
    segments, duration_s: float, times: np.ndarray, gain: float, jitter_s: float = 0.0, rng=None, where: str = ""
) -> np.ndarray:
    """(T, 6) speech parameters at `times` from phoneme segments [(phoneme, start_s, end_s)], keyed as the corpus
    generator keys them (avguide.data.synthetic.speak_and_move): silence at 0 and at the end of the audio."""
    keys = [(0.0, 0.1, "sil")] + viseme_keys(segments, where) + [(duration_s, 0.1, "sil")]
    return articulate(keys, times, gain=gain, jitter_s=jitter_s, rng=rng)


def mean_subject(subject: Subject, style: StyleRanges) -> Subject:
    """The subject with its voice and face shape but the mean speaking style and non-speech motion."""
    return replace(
        subject,
        gain=float(np.mean(style.gain)),
        asymmetry=0.0,
        av_lag_s=0.0,
        blink_rate_hz=0.0,
        brow_amplitude=float(np.mean(style.brow_amplitude)),
    )


def oracle_parameters(segments, duration_s: float, n_frames: int, fps: float, subject: Subject, where: str = ""):
    """(T, 8) rig parameters of the oracle for a `mean_subject`: no lag, no variation, no blinks, still brows."""
    times = np.arange(n_frames) / fps + subject.av_lag_s
    speech = speech_parameters(segments, duration_s, times, subject.gain, where=where)
    still = np.column_stack([np.zeros(n_frames), np.full(n_frames, MEAN_ABS_SINE * subject.brow_amplitude)])
    return np.concatenate([speech, still], 1)


def corpus_subjects(corpus: Corpus, synthetic_cfg: dict) -> dict[str, Subject]:
    """The corpus' subjects as the generator made them from `synthetic_cfg` (params.yaml's prepare.synthetic plus
    the global `seed`), checked: each template must be the one its face shape builds."""
    cfg = SyntheticConfig.from_dict(synthetic_cfg)
    subjects = {s.name: s for s in make_subjects(cfg)}
    where = corpus.root / "templates.npz"
    for name in sorted(set(corpus.manifest["subject"])):
        if name not in subjects:
            raise CorpusError(
                f"{where}: subject {name!r} is not one the synthetic config makes ({sorted(subjects)}); "
                f"is synthetic_cfg (seed {cfg.seed}, subjects {cfg.subjects}) the one the corpus was built with?"
            )
        built = build_face(subjects[name].shape).vertices
        gap = float(np.abs(built - corpus.templates[name]).max())
        if gap > 1e-6:
            raise CorpusError(
                f"{where}: the template of {name!r} is up to {1000 * gap:.3f} mm from the face the synthetic config "
                f"(seed {cfg.seed}) builds for it; pass params.yaml's prepare.synthetic and the seed of this corpus"
            )
    return subjects


def utterance_timing(corpus: Corpus, phonemes, utterance: str) -> tuple[list, float]:
    """The utterance's phoneme segments [(phoneme, start_s, end_s)] in order and its audio's duration (s)."""
    rows = phonemes[phonemes["utterance"] == utterance].sort_values("index")
    if rows.empty:
        raise CorpusError(f"{corpus.root / 'phonemes.csv'}: no phonemes for utterance {utterance!r}")
    segments = list(zip(rows["phoneme"], rows["start_s"].astype(float), rows["end_s"].astype(float)))
    return segments, len(load_wav(corpus.root / corpus.row(utterance)["wav"])) / SAMPLE_RATE


def oracle_sequences(corpus: Corpus | str | Path, split: str, synthetic_cfg: dict) -> list[np.ndarray]:
    """(T, V, 3) float32 oracle sequences of the utterances of `split`, in the manifest's order (that of
    corpus.split(split) and of the test dataset), each with the ground truth's frame count."""
    corpus = corpus if isinstance(corpus, Corpus) else Corpus(corpus)
    phonemes = corpus.phonemes()
    if phonemes is None:
        raise CorpusError(
            f"{corpus.root / 'phonemes.csv'}: not found; the oracle needs the exact phoneme timings, which only "
            f"the synthetic corpus has"
        )
    rows = corpus.split(split)
    if rows.empty:
        raise CorpusError(f"{corpus.root / 'manifest.csv'}: no utterances in split {split!r}")
    style = SyntheticConfig.from_dict(synthetic_cfg).style
    subjects = corpus_subjects(corpus, synthetic_cfg)
    rigs, out = {}, []
    for row in rows.itertuples(index=False):
        subject = mean_subject(subjects[row.subject], style)
        if row.subject not in rigs:
            rigs[row.subject] = Rig(build_face(subject.shape), asymmetry=subject.asymmetry)
        segments, duration = utterance_timing(corpus, phonemes, row.utterance)
        params = oracle_parameters(segments, duration, int(row.n_frames), float(row.fps), subject, row.utterance)
        out.append(rigs[row.subject].pose(params))
    return out
