"""Scoring predicted vertex sequences (and the judge's transcripts of their renders): the one definition of the
project's metrics as every stage and command reports them.

`score` gives the overall figures, pooled over all frames of all utterances as `avguide.metrics` computes them
(LVE, MVE, FDD, the static-template LVE for scale; CER, WER, VER when transcripts are given; the lip-articulation
figures when the frame rate is given), and one row per utterance. `pooled` re-pools any group of those rows (with
`error_counts` added) into the same figures; the train stage, `avguide.evaluate`, the `avguide evaluate` command
and `avguide.report` all use them.

Lip articulation (`LIP_METRICS`; with `fps`): lip_mve_mm on any mesh; aperture_rmse_mm, MTM_ms and, with the
phoneme timings, closure_rate (and the ground truth's own gt_closure_rate) only on the synthetic template's
topology, the one mesh whose inner-lip midline vertices are known (avguide.face.template.midline_ids). On VOCASET's
and BIWI's meshes they are left out, not guessed.

`score_predictions` is the `avguide evaluate` command's library side (its overall figures include the lip
articulation; its per-utterance table keeps the geometry columns). Predictions follow FaceFormer's convention:
one `<utterance>.npy` per utterance, float frames x (V*3) ((T, V, 3) is accepted too), named like the ground
truth's `vertices_npy/<utterance>.npy`. The ground truth is a corpus as the prepare stage writes it
(`avguide.data.corpus.Corpus`).

Frame counts: FaceFormer's and CodeTalker's evaluation truncate prediction and ground truth to the
shorter; here only when they are at most `MAX_FRAME_GAP` frames apart (rounding of audio length to
frames), any larger gap is an error naming the file.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from avguide.data.corpus import Corpus
from avguide.face.template import midline_ids
from avguide.metrics import (
    aperture_rmse,
    cer,
    closure_counts,
    edit_distance,
    fdd,
    lip_mve,
    lve,
    mtm,
    mtm_per_sequence,
    mve,
    to_visemes,
    ver,
    wer,
)

log = logging.getLogger(__name__)

METRICS = ("LVE", "MVE", "FDD", "CER", "WER", "VER")
GEOMETRY = METRICS[:3]
LIP_METRICS = ("lip_mve_mm", "aperture_rmse_mm", "MTM_ms", "closure_rate")
JUDGE2_METRICS = ("CER_judge2", "WER_judge2", "VER_judge2")  # the second judge's, when it reads the renders too
JUDGES = {"judge": "", "judge2": "_judge2"}  # transcript column: suffix of its error columns and metrics
ROOT_POOLED = ("aperture_rmse_mm",)  # pooled as the square root of pooled squares
MAX_FRAME_GAP = 2
# Vertices per frame of each dataset's mesh (None: whatever the corpus's templates have).
DATASET_VERTICES = {"synth3d": None, "vocaset": 5023, "biwi": 23370}


def score(
    pred,
    true,
    templates,
    topology,
    refs=None,
    hyps=None,
    utterances=None,
    subjects=None,
    phonemes: pd.DataFrame | None = None,
    fps: float | None = None,
    hyps2=None,
) -> tuple[dict, pd.DataFrame]:
    """Overall figures and one row per utterance of predicted (T, V, 3) sequences against the true ones.

    Overall: LVE, MVE, FDD and static_template_LVE (the template held still), pooled over every frame of every
    utterance; with the judge's transcripts `hyps` of the renders and the references `refs`, also CER, WER, VER
    (and with the second judge's, `hyps2`, CER_judge2, WER_judge2, VER_judge2; rows get its transcript, judge2).
    Rows: utterance and subject (when given), n_frames, LVE, MVE, FDD (of that utterance alone), and with
    transcripts CER, reference, judge. `pooled(error_counts(rows))` gives the overall figures back.

    With the frame rate `fps`, also the lip articulation (overall and per row): lip_mve_mm; where the topology's
    inner-lip midline is known (the synthetic template), aperture_rmse_mm and MTM_ms, and with `phonemes`
    (phonemes.csv rows; those of utterances not in `utterances` are ignored) closure_rate with the rows' closures
    and bilabials counts, and overall gt_closure_rate, the ground truth's own. Without `fps` the figures are
    exactly those above (the train and guide stages' metrics.json)."""
    if phonemes is not None and fps is None:
        raise ValueError("score: phonemes given without fps; the closure rate needs the frame rate")
    static = [np.broadcast_to(t, p.shape) for t, p in zip(templates, pred)]
    overall = {
        "LVE": lve(pred, true, topology.lip_ids),
        "MVE": mve(pred, true),
        "FDD": fdd(pred, true, templates, topology.upper_face_ids),
        "static_template_LVE": lve(static, true, topology.lip_ids),
    }
    rows = [
        {
            "n_frames": min(len(p), len(t)),
            "LVE": lve([p], [t], topology.lip_ids),
            "MVE": mve([p], [t]),
            "FDD": fdd([p], [t], [tm], topology.upper_face_ids),
        }
        for p, t, tm in zip(pred, true, templates)
    ]
    if fps is not None:
        lips = lip_articulation(pred, true, topology, phonemes, fps, utterances)
        overall.update(lips.pop("overall"))
        for k, row in enumerate(rows):
            row.update({name: values[k] for name, values in lips.items()})
    if refs is not None:
        overall.update(CER=cer(refs, hyps), WER=wer(refs, hyps), VER=ver(refs, hyps))
        for row, r, h in zip(rows, refs, hyps):
            row.update(CER=cer([r], [h]), reference=r, judge=h)
    if hyps2 is not None:  # the second judge's transcripts of the same renders
        overall.update(CER_judge2=cer(refs, hyps2), WER_judge2=wer(refs, hyps2), VER_judge2=ver(refs, hyps2))
        for row, h in zip(rows, hyps2):
            row["judge2"] = h
    table = pd.DataFrame(rows)
    for name, values in (("subject", subjects), ("utterance", utterances)):
        if values is not None:
            table.insert(0, name, list(values))
    return overall, table


def lip_articulation(pred, true, topology, phonemes, fps: float, utterances=None) -> dict:
    """score's lip-articulation figures: {"overall": {figure: value}, column: [value per utterance], ...}."""
    pairs = [(np.asarray(p), np.asarray(t)) for p, t in zip(pred, true)]
    out = {
        "overall": {"lip_mve_mm": lip_mve(pred, true, topology.lip_ids)},
        "lip_mve_mm": [lip_mve([p], [t], topology.lip_ids) for p, t in pairs],
    }
    ids = midline_ids(getattr(topology, "faces", None))
    if ids is None:
        log.info("lip opening metrics skipped: the mesh's inner-lip midline vertices are not known (not synth3d)")
        return out
    upper, lower = ids

    def opening(seq):
        v = np.asarray(seq).reshape(len(seq), -1, 3)
        return (v[:, upper, 1] - v[:, lower, 1]).astype(np.float64)

    n = [min(len(p), len(t)) for p, t in pairs]
    pred_open = [opening(p)[:k] for (p, _), k in zip(pairs, n)]
    true_open = [opening(t)[:k] for (_, t), k in zip(pairs, n)]
    out["overall"].update(aperture_rmse_mm=aperture_rmse(pred_open, true_open), MTM_ms=mtm(pred_open, true_open, fps))
    out["aperture_rmse_mm"] = [aperture_rmse(p, t) for p, t in zip(pred_open, true_open)]
    out["MTM_ms"] = mtm_per_sequence(pred_open, true_open, fps).tolist()
    if phonemes is None:
        return out
    if utterances is None:
        raise ValueError("score: phonemes given without the utterances they belong to")
    utterances = list(utterances)
    phonemes = phonemes[phonemes["utterance"].isin(utterances)]
    counts = [closure_counts({u: p}, phonemes[phonemes["utterance"] == u], fps) for u, p in zip(utterances, pred_open)]
    closed, bilabials = sum(c for c, _ in counts), sum(b for _, b in counts)
    gt_closed, _ = closure_counts(dict(zip(utterances, true_open)), phonemes, fps)
    out["overall"].update(
        closure_rate=closed / bilabials if bilabials else float("nan"),
        gt_closure_rate=gt_closed / bilabials if bilabials else float("nan"),
    )
    out["closures"] = [c for c, _ in counts]
    out["bilabials"] = [b for _, b in counts]
    out["closure_rate"] = [c / b if b else float("nan") for c, b in counts]
    return out


def error_counts(rows: pd.DataFrame) -> pd.DataFrame:
    """`rows` (with reference and judge columns) plus character, word and viseme edits and reference lengths
    per row, so that any group of rows pools into corpus-level CER, WER and VER exactly as avguide.metrics does."""
    rows = rows.copy()
    refs = rows["reference"].astype(str).tolist()
    ref_visemes = to_visemes(refs)
    rows["chars"] = [len(r) for r in refs]
    rows["words"] = [len(r.split()) for r in refs]
    rows["visemes"] = [len(r) for r in ref_visemes]
    for judge, suffix in JUDGES.items():
        if judge not in rows:
            continue
        hyps = rows[judge].astype(str).tolist()
        rows[f"char_err{suffix}"] = [edit_distance(r, h) for r, h in zip(refs, hyps)]
        rows[f"word_err{suffix}"] = [edit_distance(r.split(), h.split()) for r, h in zip(refs, hyps)]
        rows[f"vis_err{suffix}"] = [edit_distance(r, h) for r, h in zip(ref_visemes, to_visemes(hyps))]
    return rows


def pooling_parts(rows: pd.DataFrame) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per metric, a numerator and a denominator per row: a group's pooled metric is sum / sum (for ROOT_POOLED
    metrics, its square root). LVE and MVE pool over frames (`n_frames` as weights), FDD over utterances, CER, WER
    and VER (rows with `error_counts`) over reference characters, words and visemes. The lip-articulation columns,
    where the rows have them: lip_mve_mm over frames, aperture_rmse_mm as squares over frames, MTM_ms over the
    utterances that have one (not NaN), closure_rate as closures over bilabials."""
    w, one = rows["n_frames"].to_numpy(float), np.ones(len(rows))
    parts = {
        "LVE": (rows["LVE"].to_numpy() * w, w),
        "MVE": (rows["MVE"].to_numpy() * w, w),
        "FDD": (rows["FDD"].to_numpy(), one),
    }

    def column(name):  # numbers, whatever a CSV made of them (an empty cell read as "" is NaN)
        return pd.to_numeric(rows[name], errors="coerce").to_numpy(float)

    if "lip_mve_mm" in rows:
        parts["lip_mve_mm"] = (column("lip_mve_mm") * w, w)
    if "aperture_rmse_mm" in rows:
        parts["aperture_rmse_mm"] = (column("aperture_rmse_mm") ** 2 * w, w)
    if "MTM_ms" in rows:
        value = column("MTM_ms")
        has = np.isfinite(value)
        parts["MTM_ms"] = (np.where(has, value, 0.0), has.astype(float))
    if "closures" in rows:
        parts["closure_rate"] = (column("closures"), column("bilabials"))
    for suffix in JUDGES.values():
        if f"char_err{suffix}" in rows:
            parts.update(
                {
                    f"CER{suffix}": (rows[f"char_err{suffix}"].to_numpy(), rows["chars"].to_numpy()),
                    f"WER{suffix}": (rows[f"word_err{suffix}"].to_numpy(), rows["words"].to_numpy()),
                    f"VER{suffix}": (rows[f"vis_err{suffix}"].to_numpy(), rows["visemes"].to_numpy()),
                }
            )
    return parts


def pooled(rows: pd.DataFrame) -> pd.Series:
    """The metrics of a group of per-utterance rows, pooled as `score` pools a whole run."""
    out = {}
    for m, (num, den) in pooling_parts(rows).items():
        total = den.sum()
        value = num.sum() / total if total else float("nan")  # no bilabial, no MTM in the group: undefined
        out[m] = np.sqrt(value) if m in ROOT_POOLED else value
    return pd.Series(out)


class PredictionError(ValueError):
    """A prediction file or folder is not what the FaceFormer convention says, or does not fit the corpus."""


def load_prediction(path: Path, n_vertices: int, where: Path) -> np.ndarray:
    """(T, V, 3) float32 prediction, checked: shape, vertex count against the ground truth's, finite."""
    try:
        arr = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as e:
        raise PredictionError(f"{path}: not a readable .npy array ({e})") from None
    if arr.ndim == 2 and arr.shape[1] % 3 == 0:
        arr = arr.reshape(len(arr), -1, 3)
    if arr.ndim != 3 or arr.shape[2] != 3 or len(arr) == 0:
        raise PredictionError(f"{path}: expected frames x (V*3) vertices (FaceFormer's .npy), found shape {arr.shape}")
    if arr.shape[1] != n_vertices:
        raise PredictionError(
            f"{path}: {arr.shape[1]} vertices per frame, but the ground truth in {where} "
            f"has {n_vertices} (is it the same mesh?)"
        )
    if not np.isfinite(arr).all():
        raise PredictionError(f"{path}: vertices contain NaN or infinite values")
    return arr.astype(np.float32, copy=False)


def match_lengths(
    pred: np.ndarray, gt: np.ndarray, pred_path: Path, gt_path: Path, max_gap: int = MAX_FRAME_GAP
) -> tuple[np.ndarray, np.ndarray]:
    """Both truncated to the shorter length if at most `max_gap` frames apart; else PredictionError."""
    if abs(len(pred) - len(gt)) > max_gap:
        raise PredictionError(
            f"{pred_path}: {len(pred)} frames, but the ground truth {gt_path} has {len(gt)} "
            f"(more than {max_gap} frames apart; is the frame rate the corpus's?)"
        )
    n = min(len(pred), len(gt))
    return pred[:n], gt[:n]


def score_predictions(
    pred_dir: str | Path, corpus: Corpus, dataset: str = "synth3d", split: str | None = None, progress: bool = False
) -> tuple[dict, pd.DataFrame]:
    """Overall metrics (dict) and one row per utterance (DataFrame) for the predictions in `pred_dir`.

    `split`: score exactly that split's utterances (each must have a prediction; others are ignored);
    None: every prediction in the folder (each must name an utterance of the corpus)."""
    pred_dir = Path(pred_dir)
    if dataset not in DATASET_VERTICES:
        raise PredictionError(f"--dataset must be one of {sorted(DATASET_VERTICES)}; got {dataset!r}")
    expected = DATASET_VERTICES[dataset]
    if expected is not None and corpus.n_vertices != expected:
        raise PredictionError(
            f"{corpus.root / 'templates.npz'}: {corpus.n_vertices} vertices per template, but "
            f"{dataset} meshes have {expected}; is {corpus.root} a {dataset} corpus?"
        )
    if not pred_dir.is_dir():
        raise PredictionError(f"{pred_dir}: prediction folder not found")
    files = {p.stem: p for p in sorted(pred_dir.glob("*.npy"))}
    if not files:
        raise PredictionError(f"{pred_dir}: no .npy predictions; expected <utterance>.npy files (frames x V*3)")
    manifest = corpus.manifest
    known = set(manifest["utterance"])
    if split is not None:
        wanted = corpus.split(split)["utterance"].tolist()
        if not wanted:
            raise PredictionError(f"{corpus.root / 'manifest.csv'}: no utterances in split {split!r}")
        missing = [u for u in wanted if u not in files]
        if missing:
            raise PredictionError(
                f"{pred_dir}: no prediction for {len(missing)} of the {len(wanted)} {split!r} "
                f"utterances, e.g. {missing[0]}.npy"
            )
        ignored = len(set(files) - set(wanted))
        if ignored:
            log.info("%s: %d predictions outside split %r ignored", pred_dir, ignored, split)
    else:
        unknown = sorted(set(files) - known)
        if unknown:
            raise PredictionError(
                f"{files[unknown[0]]}: no utterance {unknown[0]!r} in {corpus.root / 'manifest.csv'} "
                f"({len(unknown)} unknown); expected names like {manifest['utterance'].iloc[0]}.npy"
            )
        wanted = [u for u in manifest["utterance"] if u in files]  # the corpus's order, as the train stage scores
    preds, gts, templates, subjects, info = [], [], [], [], []
    for utt in tqdm(wanted, desc="evaluate", unit="utt", disable=not progress):
        row = corpus.row(utt)
        gt_path = corpus.root / row["vertices"]
        pred = load_prediction(files[utt], corpus.n_vertices, corpus.root)
        gt = corpus.vertices(utt)
        info.append({"split": row["split"], "pred_frames": len(pred), "gt_frames": len(gt)})
        pred, gt = match_lengths(pred, gt, files[utt], gt_path)
        preds.append(pred)
        gts.append(gt)
        templates.append(corpus.templates[row["subject"]])
        subjects.append(row["subject"])
    rates = sorted({float(corpus.row(u)["fps"]) for u in wanted})
    fps = rates[0] if len(rates) == 1 else None
    if fps is None:
        log.warning("%s: frame rates %s mixed; lip articulation not scored", corpus.root / "manifest.csv", rates)
    phonemes = corpus.phonemes() if fps is not None else None
    metrics, rows = score(preds, gts, templates, corpus.topology, None, None, wanted, subjects, phonemes, fps)
    per_utt = pd.concat(
        [
            rows[["utterance", "subject"]],
            pd.DataFrame(info),
            rows[["n_frames", *GEOMETRY]].rename(columns={"n_frames": "frames"}),
        ],
        axis=1,
    )
    overall = {
        "dataset": dataset,
        "pred_dir": str(pred_dir),
        "gt_dir": str(corpus.root),
        "split": split,
        "utterances": len(per_utt),
        "frames": int(per_utt["frames"].sum()),
        "truncated": int((per_utt["pred_frames"] != per_utt["gt_frames"]).sum()),
        **metrics,
    }
    return overall, per_utt
