"""Geometric metrics of predicted vertex sequences against the ground truth (numpy; metres in, metres² out).

- LVE, lip vertex error (FaceFormer): per frame the largest squared L2 error over the lip vertices,
  averaged over all frames of all sequences.
- MVE, mean vertex error: the L2 error of every vertex, averaged over vertices and all frames.
  (Unlike LVE it is a distance in metres, not squared: the mean, not the worst, vertex.)
- FDD, upper-face dynamics deviation (CodeTalker): per sequence, the standard deviation over time of
  each upper-face vertex's squared motion (displacement from the template), averaged over those
  vertices, ground truth minus prediction; averaged over sequences. Positive: the prediction moves
  the upper face less than the ground truth.
"""

from __future__ import annotations

import json
from importlib.resources import files

import jiwer
import numpy as np

from avguide.data.text import normalize_text
from avguide.face.visemes import load_table


def _pairs(pred, gt) -> list[tuple[np.ndarray, np.ndarray]]:
    """Sequences as (T, V, 3) arrays in matching pairs; lengths may differ by one frame (then trimmed)."""
    if isinstance(pred, np.ndarray) and pred.ndim in (2, 3):  # one sequence, (T, V, 3) or (T, V*3)
        pred, gt = [pred], [gt]
    if len(pred) != len(gt) or not len(pred):
        raise ValueError(f"need as many predicted as ground-truth sequences (> 0); got {len(pred)} and {len(gt)}")
    out = []
    for k, (p, g) in enumerate(zip(pred, gt)):
        p = np.asarray(p, np.float64).reshape(len(p), -1, 3)
        g = np.asarray(g, np.float64).reshape(len(g), -1, 3)
        if p.shape[1] != g.shape[1]:
            raise ValueError(f"sequence {k}: prediction has {p.shape[1]} vertices, ground truth {g.shape[1]}")
        if abs(len(p) - len(g)) > 1:
            raise ValueError(
                f"sequence {k}: prediction has {len(p)} frames, ground truth {len(g)} (more than one apart)"
            )
        n = min(len(p), len(g))
        out.append((p[:n], g[:n]))
    return out


def lve(pred, gt, lip_ids) -> float:
    """Lip vertex error: mean over frames of the max over lip vertices of the squared L2 error."""
    worst = [((p[:, lip_ids] - g[:, lip_ids]) ** 2).sum(-1).max(-1) for p, g in _pairs(pred, gt)]
    return float(np.concatenate(worst).mean())


def mve(pred, gt) -> float:
    """Mean vertex error: mean over frames and vertices of the L2 distance."""
    dist = [np.linalg.norm(p - g, axis=-1).ravel() for p, g in _pairs(pred, gt)]
    return float(np.concatenate(dist).mean())


def fdd(pred, gt, templates, upper_ids) -> float:
    """Upper-face dynamics deviation; `templates` is one (V, 3) template or one per sequence."""
    pairs = _pairs(pred, gt)
    templates = [templates] * len(pairs) if np.ndim(templates) == 2 else list(templates)
    if len(templates) != len(pairs):
        raise ValueError(f"need one template per sequence; got {len(templates)} for {len(pairs)} sequences")

    def dynamics(seq, template):
        motion = ((seq[:, upper_ids] - np.asarray(template, np.float64)[upper_ids]) ** 2).sum(-1)  # (T, U)
        return motion.std(axis=0).mean()

    return float(np.mean([dynamics(g, t) - dynamics(p, t) for (p, g), t in zip(pairs, templates)]))


# ---------------------------------------------------------------- transcripts (lip reading)

GAP = "∅"  # the empty side of an insertion or a deletion in an alignment


def _tokens(sentences) -> list[list[str]]:
    """jiwer transform: each sentence is already its tokens (a string: its characters, spaces included)."""
    return [list(s) for s in sentences]


def _levenshtein(ref, hyp) -> jiwer.WordOutput:
    """jiwer's minimum edit alignment of two token sequences (characters of a string, words, visemes)."""
    return jiwer.process_words([ref], [hyp], reference_transform=_tokens, hypothesis_transform=_tokens)


def edit_distance(ref, hyp) -> int:
    """Levenshtein distance between two sequences (substitutions, insertions, deletions all cost 1)."""
    out = _levenshtein(ref, hyp)
    return out.substitutions + out.deletions + out.insertions


def align(ref, hyp) -> list[tuple]:
    """A minimum edit alignment (jiwer's): (reference, hypothesis) pairs, GAP on the missing side of an insertion
    or a deletion. Its number of unequal pairs is edit_distance."""
    ref, hyp = list(ref), list(hyp)
    pairs = []
    for chunk in _levenshtein(ref, hyp).alignments[0]:
        r, h = ref[chunk.ref_start_idx : chunk.ref_end_idx], hyp[chunk.hyp_start_idx : chunk.hyp_end_idx]
        if chunk.type == "delete":
            pairs += [(a, GAP) for a in r]
        elif chunk.type == "insert":
            pairs += [(GAP, b) for b in h]
        else:  # equal or substitute: as many on each side
            pairs += list(zip(r, h))
    return pairs


def _error_rate(refs, hyps, split) -> float:
    if isinstance(refs, str):
        refs, hyps = [refs], [hyps]
    refs, hyps = list(refs), list(hyps)
    if len(refs) != len(hyps) or not refs:
        raise ValueError(f"need as many hypotheses as references (> 0); got {len(refs)} and {len(hyps)}")
    errors = sum(edit_distance(split(r), split(h)) for r, h in zip(refs, hyps))
    total = sum(len(split(r)) for r in refs)
    if total == 0:
        raise ValueError("the references are all empty: the error rate is undefined")
    return errors / total


def cer(refs, hyps) -> float:
    """Corpus character error rate: total character edit distance / total reference characters (spaces count)."""
    return _error_rate(refs, hyps, list)


def wer(refs, hyps) -> float:
    """Corpus word error rate: total word edit distance / total reference words."""
    return _error_rate(refs, hyps, str.split)


# ---------------------------------------------------------------- visemes (what the lips show)
# VER, viseme error rate: text -> IPA phonemes (phonemizer's espeak backend on the libespeak-ng that
# espeakng-loader ships, en-us, no stress) -> visemes (avguide/face/ipa_visemes.json, the 15 classes of
# visemes.json) -> edit distance over the viseme sequences (word boundaries dropped) / reference visemes,
# pooled over the corpus like cer and wer. "bin" and "pin" look the same on the lips: VER 0, CER > 0.

_ESPEAK_BACKEND = None


def _espeak_backend():
    """phonemizer's espeak backend on espeakng-loader's library and data (no system espeak needed)."""
    global _ESPEAK_BACKEND
    if _ESPEAK_BACKEND is None:
        import espeakng_loader
        from phonemizer.backend import EspeakBackend
        from phonemizer.backend.espeak.wrapper import EspeakWrapper

        EspeakBackend.set_library(espeakng_loader.get_library_path())
        EspeakWrapper.set_data_path(espeakng_loader.get_data_path())
        _ESPEAK_BACKEND = EspeakBackend(
            "en-us", with_stress=False, preserve_punctuation=False, language_switch="remove-flags"
        )
    return _ESPEAK_BACKEND


def ipa_viseme_table() -> dict[str, tuple[str, ...]]:
    """{IPA phoneme: visemes} from avguide/face/ipa_visemes.json, checked against visemes.json's classes."""
    raw = json.loads(files("avguide.face").joinpath("ipa_visemes.json").read_text(encoding="utf-8"))
    classes = set(load_table().visemes)
    table = {p: tuple(v) for p, v in raw["phonemes"].items()}
    for p, visemes in table.items():
        unknown = [v for v in visemes if v not in classes]
        if unknown or not visemes:
            raise ValueError(
                f"ipa_visemes.json: phoneme {p!r} maps to {list(visemes)}; expected one or two of "
                f"the viseme classes of visemes.json {sorted(classes)}"
            )
    return table


def phonemize(texts: list[str]) -> list[list[str]]:
    """IPA phonemes of each text (normalised first; word boundaries dropped), as espeak-ng says them."""
    from phonemizer.separator import Separator

    texts = [normalize_text(t) for t in texts]
    out = [""] * len(texts)
    spoken = [k for k, t in enumerate(texts) if t]
    if spoken:
        ipa = _espeak_backend().phonemize(
            [texts[k] for k in spoken], separator=Separator(phone=" ", word=" | "), strip=True, njobs=1
        )
        for k, line in zip(spoken, ipa):
            out[k] = line
    return [[p for p in line.split() if p != "|"] for line in out]


def to_visemes(texts: list[str]) -> list[list[str]]:
    """Viseme sequence of each text; a phoneme missing from ipa_visemes.json is an error naming it."""
    table = ipa_viseme_table()
    out = []
    for text, phonemes in zip(texts, phonemize(texts)):
        missing = sorted({p for p in phonemes if p not in table})
        if missing:
            raise ValueError(
                f"phoneme(s) {missing} of {text!r} are not in avguide/face/ipa_visemes.json; "
                f"add them there (with the visemes the lips show)"
            )
        out.append([v for p in phonemes for v in table[p]])
    return out


def ver(refs, hyps) -> float:
    """Corpus viseme error rate: total viseme edit distance / total reference visemes."""
    if isinstance(refs, str):
        refs, hyps = [refs], [hyps]
    refs, hyps = list(refs), list(hyps)
    if len(refs) != len(hyps) or not refs:
        raise ValueError(f"need as many hypotheses as references (> 0); got {len(refs)} and {len(hyps)}")
    visemes = to_visemes(refs + hyps)
    ref_v, hyp_v = visemes[: len(refs)], visemes[len(refs) :]
    total = sum(len(r) for r in ref_v)
    if total == 0:
        raise ValueError("the references are all empty: the viseme error rate is undefined")
    return sum(edit_distance(r, h) for r, h in zip(ref_v, hyp_v)) / total
