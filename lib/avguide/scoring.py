"""Scoring any method's predictions against a corpus: the `avguide evaluate` command's library side.

Predictions follow FaceFormer's convention: one `<utterance>.npy` per utterance, float frames x (V*3)
((T, V, 3) is accepted too), named like the ground truth's `vertices_npy/<utterance>.npy`. The ground
truth is a corpus as the prepare stage writes it (`avguide.data.corpus.Corpus`). The metrics are the
project's (`avguide.metrics`): LVE, MVE, FDD, pooled over every frame of every scored utterance as
`avguide.training.run.score` pools them, and the static-template LVE for scale.

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
from avguide.metrics import fdd, lve, mve

log = logging.getLogger(__name__)

MAX_FRAME_GAP = 2
# Vertices per frame of each dataset's mesh (None: whatever the corpus's templates have).
DATASET_VERTICES = {"synth3d": None, "vocaset": 5023, "biwi": 23370}


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
        raise PredictionError(f"{path}: {arr.shape[1]} vertices per frame, but the ground truth in {where} "
                         f"has {n_vertices} (is it the same mesh?)")
    if not np.isfinite(arr).all():
        raise PredictionError(f"{path}: vertices contain NaN or infinite values")
    return arr.astype(np.float32, copy=False)


def match_lengths(pred: np.ndarray, gt: np.ndarray, pred_path: Path, gt_path: Path,
                  max_gap: int = MAX_FRAME_GAP) -> tuple[np.ndarray, np.ndarray]:
    """Both truncated to the shorter length if at most `max_gap` frames apart; else PredictionError."""
    if abs(len(pred) - len(gt)) > max_gap:
        raise PredictionError(f"{pred_path}: {len(pred)} frames, but the ground truth {gt_path} has {len(gt)} "
                         f"(more than {max_gap} frames apart; is the frame rate the corpus's?)")
    n = min(len(pred), len(gt))
    return pred[:n], gt[:n]


def score_predictions(pred_dir: str | Path, corpus: Corpus, dataset: str = "synth3d", split: str | None = None,
                      progress: bool = False) -> tuple[dict, pd.DataFrame]:
    """Overall metrics (dict) and one row per utterance (DataFrame) for the predictions in `pred_dir`.

    `split`: score exactly that split's utterances (each must have a prediction; others are ignored);
    None: every prediction in the folder (each must name an utterance of the corpus)."""
    pred_dir = Path(pred_dir)
    if dataset not in DATASET_VERTICES:
        raise PredictionError(f"--dataset must be one of {sorted(DATASET_VERTICES)}; got {dataset!r}")
    expected = DATASET_VERTICES[dataset]
    if expected is not None and corpus.n_vertices != expected:
        raise PredictionError(f"{corpus.root / 'templates.npz'}: {corpus.n_vertices} vertices per template, but "
                         f"{dataset} meshes have {expected}; is {corpus.root} a {dataset} corpus?")
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
            raise PredictionError(f"{pred_dir}: no prediction for {len(missing)} of the {len(wanted)} {split!r} "
                             f"utterances, e.g. {missing[0]}.npy")
        ignored = len(set(files) - set(wanted))
        if ignored:
            log.info("%s: %d predictions outside split %r ignored", pred_dir, ignored, split)
    else:
        unknown = sorted(set(files) - known)
        if unknown:
            raise PredictionError(f"{files[unknown[0]]}: no utterance {unknown[0]!r} in {corpus.root / 'manifest.csv'} "
                             f"({len(unknown)} unknown); expected names like {manifest['utterance'].iloc[0]}.npy")
        wanted = [u for u in manifest["utterance"] if u in files]  # the corpus's order, as the train stage scores
    topo = corpus.topology
    preds, gts, templates, rows = [], [], [], []
    for utt in tqdm(wanted, desc="evaluate", unit="utt", disable=not progress):
        row = corpus.row(utt)
        gt_path = corpus.root / row["vertices"]
        pred = load_prediction(files[utt], corpus.n_vertices, corpus.root)
        gt = corpus.vertices(utt)
        n_pred, n_gt = len(pred), len(gt)
        pred, gt = match_lengths(pred, gt, files[utt], gt_path)
        template = corpus.templates[row["subject"]]
        preds.append(pred)
        gts.append(gt)
        templates.append(template)
        rows.append({"utterance": utt, "subject": row["subject"], "split": row["split"], "pred_frames": n_pred,
                     "gt_frames": n_gt, "frames": len(pred), "LVE": lve(pred, gt, topo.lip_ids),
                     "MVE": mve(pred, gt), "FDD": fdd(pred, gt, template, topo.upper_face_ids)})
    static = [np.broadcast_to(t, p.shape) for t, p in zip(templates, preds)]
    per_utt = pd.DataFrame(rows)
    overall = {
        "dataset": dataset, "pred_dir": str(pred_dir), "gt_dir": str(corpus.root), "split": split,
        "utterances": len(rows), "frames": int(per_utt["frames"].sum()),
        "truncated": int((per_utt["pred_frames"] != per_utt["gt_frames"]).sum()),
        "LVE": lve(preds, gts, topo.lip_ids),
        "MVE": mve(preds, gts),
        "FDD": fdd(preds, gts, templates, topo.upper_face_ids),
        "static_template_LVE": lve(static, gts, topo.lip_ids),
    }
    return overall, per_utt
