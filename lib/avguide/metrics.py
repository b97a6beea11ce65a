"""Geometric metrics of predicted vertex sequences against the ground truth (numpy; metres in, metres² out).

- LVE, lip vertex error (FaceFormer): per frame the largest squared L2 error over the lip vertices,
  averaged over all frames of all sequences.
- MVE, mean vertex error: the L2 error of every vertex, averaged over vertices and all frames.
  (Unlike LVE it is a distance in metres, not squared: the mean, not the worst, vertex.)
- FDD, upper-face dynamics deviation (CodeTalker): per sequence, the standard deviation over time of
  each upper-face vertex's squared motion (displacement from the template), averaged over those
  vertices, ground truth minus prediction; averaged over sequences. Positive: the prediction moves
  the upper face less than the ground truth.

Lip articulation (millimetres and milliseconds out; opening curves are metres, as
avguide.face.template.lip_opening gives them, one value per frame, frame k at time k / fps):

- lip MVE: the L2 error of every lip vertex, averaged over lip vertices and all frames (MVE on the lips).
- aperture RMSE: root mean square over all frames of the predicted minus the true inner-lip opening.
- closure rate: the share of bilabial phonemes (p, b, m: viseme PP) during which the inner-lip opening falls
  below a threshold (0.5 mm) at some frame inside the phoneme's interval [start, end]; an interval with no frame
  inside takes the frame nearest its middle. The ground truth's own rate is the reference for a prediction's.
  The threshold is below the synthetic template's rest opening (0.8 mm; at 1 mm a face that never moves would
  "close" every bilabial): on the test subjects the ground truth closes 94 %, the static template 0 %.
- MTM, mean temporal misalignment (Chae-Yeon et al., "Perceptually Accurate 3D Talking Head Generation",
  CVPR 2025; as their evaluation/evaluate_MTM.py computes it): both opening curves smoothed by a Gaussian of
  sigma 2 frames; aligned by derivative dynamic time warping (DDTW: DTW on first differences, cost |dx - dy|);
  local maxima and minima of each smoothed curve (scipy.signal.find_peaks, no prominence); every pair on the
  warping path that joins a ground-truth extremum to a predicted extremum of the same kind, the predicted one
  lying between the ground-truth extremum's neighbouring extrema (or the curve's ends), gives |Δt|; a sequence's
  MTM is the mean |Δt| of its pairs (none: undefined, NaN), the corpus' the mean over the sequences that have
  pairs. In milliseconds (frames x 1000 / fps). A prediction that never moves has no extrema: MTM undefined.
  The paper's curve is the distance between two outer-lip midline vertices of FLAME with VOCASET's ground truth
  halved to 30 fps; here it is the inner-lip opening curve, both sequences at the corpus' frame rate.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from importlib.resources import files

import jiwer
import numpy as np
import pandas as pd
from scipy.ndimage import gaussian_filter1d
from scipy.signal import find_peaks

from avguide.data.text import normalize_text
from avguide.face.visemes import load_table


def _pairs(pred, gt, ids=None) -> list[tuple[np.ndarray, np.ndarray]]:
    """Sequences as (T, V, 3) arrays in matching pairs; lengths may differ by one frame (then trimmed). With `ids`,
    only those vertices (selected before the conversion to float64, which is what costs)."""
    if isinstance(pred, np.ndarray) and pred.ndim in (2, 3):  # one sequence, (T, V, 3) or (T, V*3)
        pred, gt = [pred], [gt]
    if len(pred) != len(gt) or not len(pred):
        raise ValueError(f"need as many predicted as ground-truth sequences (> 0); got {len(pred)} and {len(gt)}")
    out = []
    for k, (p, g) in enumerate(zip(pred, gt)):
        p, g = np.asarray(p).reshape(len(p), -1, 3), np.asarray(g).reshape(len(g), -1, 3)
        if p.shape[1] != g.shape[1]:
            raise ValueError(f"sequence {k}: prediction has {p.shape[1]} vertices, ground truth {g.shape[1]}")
        if ids is not None:
            p, g = p[:, ids], g[:, ids]
        p, g = p.astype(np.float64, copy=False), g.astype(np.float64, copy=False)
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


# ---------------------------------------------------------------- lip articulation (mm, ms)

BILABIAL_VISEME = "PP"  # avguide/face/visemes.json: p, b, m (and espeak-ng's m-, B) show this closure viseme
CLOSURE_THRESHOLD_MM = 0.5  # below the synthetic template's rest opening (0.8 mm)
MTM_SIGMA_FRAMES = 2.0  # Gaussian smoothing of the opening curves before MTM (the CVPR 2025 paper's code)
PHONEME_COLUMNS = ("utterance", "viseme", "start_s", "end_s")


def lip_mve(pred, gt, lip_ids) -> float:
    """Lip mean vertex error (mm): mean over lip vertices and all frames of the L2 distance."""
    lip_ids = np.asarray(lip_ids)
    if lip_ids.ndim != 1 or not lip_ids.size or not np.issubdtype(lip_ids.dtype, np.integer) or lip_ids.min() < 0:
        raise ValueError(f"lip_ids must be a non-empty list of vertex ids; got {lip_ids!r}")
    try:
        pairs = _pairs(pred, gt, lip_ids)
    except IndexError:
        raise ValueError(f"lip_ids reach vertex {lip_ids.max()}, beyond the sequences' vertices") from None
    dist = [np.linalg.norm(p - g, axis=-1).ravel() for p, g in pairs]
    return 1000 * float(np.concatenate(dist).mean())


def _curve(curve, what: str) -> np.ndarray:
    curve = np.asarray(curve, np.float64)
    if curve.ndim != 1 or not len(curve):
        raise ValueError(f"{what}: expected a lip-opening curve of shape (frames,), found shape {curve.shape}")
    if not np.isfinite(curve).all():
        raise ValueError(f"{what}: the lip-opening curve contains NaN or infinite values")
    return curve


def _curve_pairs(pred, gt) -> list[tuple[np.ndarray, np.ndarray]]:
    """Opening curves as 1-D arrays in matching pairs (one curve or a list); lengths one frame apart are trimmed."""
    if isinstance(pred, np.ndarray) and pred.ndim == 1:
        pred, gt = [pred], [gt]
    if len(pred) != len(gt) or not len(pred):
        raise ValueError(f"need as many predicted as ground-truth curves (> 0); got {len(pred)} and {len(gt)}")
    out = []
    for k, (p, g) in enumerate(zip(pred, gt)):
        p, g = _curve(p, f"predicted curve {k}"), _curve(g, f"ground-truth curve {k}")
        if abs(len(p) - len(g)) > 1:
            raise ValueError(f"curve {k}: prediction has {len(p)} frames, ground truth {len(g)} (more than one apart)")
        n = min(len(p), len(g))
        out.append((p[:n], g[:n]))
    return out


def aperture_rmse(pred_open, gt_open) -> float:
    """Aperture RMSE (mm): root mean square over all frames of predicted minus true inner-lip opening (metres)."""
    err = np.concatenate([p - g for p, g in _curve_pairs(pred_open, gt_open)])
    return 1000 * float(np.sqrt(np.mean(err**2)))


def phoneme_frames(start_s: float, end_s: float, fps: float, n_frames: int) -> np.ndarray:
    """Frames k (time k / fps) inside [start_s, end_s], within 0..n_frames-1; none inside: the frame nearest the
    interval's middle."""
    if end_s < start_s:
        raise ValueError(f"phoneme interval ends before it starts: [{start_s}, {end_s}] s")
    lo = max(int(np.ceil(start_s * fps - 1e-9)), 0)
    hi = min(int(np.floor(end_s * fps + 1e-9)), n_frames - 1)
    if lo > hi:
        return np.array([int(np.clip(np.round(0.5 * (start_s + end_s) * fps), 0, n_frames - 1))])
    return np.arange(lo, hi + 1)


def closure_counts(open_curves, phonemes: pd.DataFrame, fps: float, threshold_mm: float = CLOSURE_THRESHOLD_MM):
    """(closed, bilabials): how many bilabial phonemes (viseme PP) of `phonemes` (phonemes.csv rows: utterance,
    viseme, start_s, end_s) see the inner-lip opening below `threshold_mm` at a frame of their interval, and how
    many there are. `open_curves`: {utterance: opening curve (metres)}, or one curve when `phonemes` holds one
    utterance. Counts add up over groups of utterances (closure_rate is their ratio)."""
    missing = [c for c in PHONEME_COLUMNS if c not in phonemes.columns]
    if missing:
        raise ValueError(f"phonemes (phonemes.csv rows) lack columns {missing}; have {list(phonemes.columns)}")
    if not fps > 0:
        raise ValueError(f"fps must be positive; got {fps}")
    if not isinstance(open_curves, Mapping):
        utterances = phonemes["utterance"].unique()
        if len(utterances) > 1:
            raise ValueError(f"one opening curve given for the phonemes of {len(utterances)} utterances; pass a dict")
        open_curves = dict.fromkeys(utterances, open_curves)
    curves = {u: _curve(c, f"opening curve of {u!r}") for u, c in open_curves.items()}
    bilabial = phonemes[phonemes["viseme"] == BILABIAL_VISEME]
    closed = 0
    for utt, start, end in bilabial[["utterance", "start_s", "end_s"]].itertuples(index=False):
        if utt not in curves:
            raise ValueError(f"no opening curve for utterance {utt!r} of the phonemes")
        curve = curves[utt]
        closed += int(1000 * curve[phoneme_frames(start, end, fps, len(curve))].min() < threshold_mm)
    return closed, len(bilabial)


def closure_rate(open_curves, phonemes: pd.DataFrame, fps: float, threshold_mm: float = CLOSURE_THRESHOLD_MM):
    """Share of the bilabial phonemes whose interval sees the lips closed (opening below `threshold_mm`); see
    closure_counts for the arguments. No bilabial phoneme: an error (the rate is undefined)."""
    closed, bilabials = closure_counts(open_curves, phonemes, fps, threshold_mm)
    if not bilabials:
        raise ValueError(f"no bilabial phonemes (viseme {BILABIAL_VISEME}): the closure rate is undefined")
    return closed / bilabials


def _ddtw_path(x: np.ndarray, y: np.ndarray) -> list[tuple[int, int]]:
    """Warping path of derivative DTW (first differences, cost |dx - dy|), traced back preferring a match, then
    a step in x, then a step in y on ties (as the MTM paper's code)."""
    dx, dy = np.diff(x, prepend=x[0]), np.diff(y, prepend=y[0])
    cost = np.abs(dx[:, None] - dy[None, :]).tolist()
    n, m = len(dx), len(dy)
    inf = float("inf")
    acc = [[0.0] + [inf] * m] + [[inf] * (m + 1) for _ in range(n)]
    for i in range(1, n + 1):
        prev, row, c = acc[i - 1], acc[i], cost[i - 1]
        for j in range(1, m + 1):
            row[j] = c[j - 1] + min(prev[j], row[j - 1], prev[j - 1])
    path, i, j = [], n, m
    while i > 0 and j > 0:
        path.append((i - 1, j - 1))
        step = int(np.argmin([acc[i - 1][j - 1], acc[i - 1][j], acc[i][j - 1]]))
        i, j = (i - 1, j - 1) if step == 0 else (i - 1, j) if step == 1 else (i, j - 1)
    return path[::-1]


def _extrema(curve: np.ndarray) -> dict[int, str]:
    kinds = {int(k): "max" for k in find_peaks(curve)[0]}
    kinds.update({int(k): "min" for k in find_peaks(-curve)[0]})
    return kinds


def matched_extrema(pred_open, gt_open) -> list[tuple[int, int]]:
    """MTM's (ground-truth frame, predicted frame) pairs of one sequence: extrema of the same kind joined by the
    DDTW path of the smoothed curves, the predicted one between the ground-truth one's neighbouring extrema."""
    ((p, g),) = _curve_pairs(np.asarray(pred_open), np.asarray(gt_open))
    p, g = gaussian_filter1d(p, MTM_SIGMA_FRAMES), gaussian_filter1d(g, MTM_SIGMA_FRAMES)
    ext_g, ext_p = _extrema(g), _extrema(p)
    order = sorted(ext_g)
    pairs = []
    for i, j in _ddtw_path(g, p):
        if i in ext_g and ext_p.get(j) == ext_g[i]:
            pos = order.index(i)
            left = order[pos - 1] if pos > 0 else 0
            right = order[pos + 1] if pos < len(order) - 1 else len(g) - 1
            if left <= j <= right:
                pairs.append((i, j))
    return pairs


def mtm_per_sequence(pred_open, gt_open, fps: float) -> np.ndarray:
    """Each sequence's MTM (ms): the mean |Δt| of its matched extrema; NaN where none match."""
    if not fps > 0:
        raise ValueError(f"fps must be positive; got {fps}")
    out = []
    for p, g in _curve_pairs(pred_open, gt_open):
        pairs = matched_extrema(p, g)
        out.append(1000 / fps * np.mean([abs(i - j) for i, j in pairs]) if pairs else np.nan)
    return np.array(out, np.float64)


def mtm(pred_open, gt_open, fps: float) -> float:
    """Mean temporal misalignment (ms) of the opening curves' extrema (see the module docstring): the mean over
    sequences of each one's mean |Δt|, sequences without matched extrema left out; NaN if none has any."""
    per_sequence = mtm_per_sequence(pred_open, gt_open, fps)
    finite = per_sequence[np.isfinite(per_sequence)]
    return float(finite.mean()) if len(finite) else float("nan")


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
