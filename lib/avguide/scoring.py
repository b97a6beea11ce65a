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
(`avguide.data.corpus.Corpus`); `score_folder` scores against the public code's processed folder of VOCASET or
BIWI instead (vertices_npy/ and the region files the user gives, at the frame rates of that dataset's convention).

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
    exactly those above (the train and guide stages' metrics.json). Without `templates` (None) FDD and
    static_template_LVE are None, as FDD is without upper-face ids (an empty `topology.upper_face_ids`); the rows'
    FDD is then NaN."""
    if phonemes is not None and fps is None:
        raise ValueError("score: phonemes given without fps; the closure rate needs the frame rate")
    upper = topology.upper_face_ids
    with_fdd = templates is not None and upper is not None and len(upper) > 0
    per_item = templates if templates is not None else [None] * len(pred)
    overall = {
        "LVE": lve(pred, true, topology.lip_ids),
        "MVE": mve(pred, true),
        "FDD": fdd(pred, true, templates, upper) if with_fdd else None,
        "static_template_LVE": None,
    }
    if templates is not None:
        static = [np.broadcast_to(t, p.shape) for t, p in zip(templates, pred)]
        overall["static_template_LVE"] = lve(static, true, topology.lip_ids)
    rows = [
        {
            "n_frames": min(len(p), len(t)),
            "LVE": lve([p], [t], topology.lip_ids),
            "MVE": mve([p], [t]),
            "FDD": fdd([p], [t], [tm], upper) if with_fdd else float("nan"),
        }
        for p, t, tm in zip(pred, true, per_item)
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


# --- the public code's processed folders (FaceFormer / CodeTalker convention) ------------------------------------

ANIMATOR_FPS = {"vocaset": 30.0, "biwi": 25.0}  # the frame rate the published animators predict at
PROCESSED_GT_FPS = {"vocaset": 60.0, "biwi": 25.0}  # vertices_npy/ of FaceFormer's processed folders (VOCASET: 60)
CONDITION = "_condition_"  # FaceFormer's and CodeTalker's test output: <utterance>_condition_<style>.npy


def _region_default(given, gt_dir: Path, name: str) -> Path | None:
    if given is not None:
        return Path(given)
    path = gt_dir / "regions" / name
    return path if path.is_file() else None


def _folder_templates(given, gt_dir: Path, n_vertices: int) -> tuple[dict[str, np.ndarray] | None, Path | None]:
    """{subject: (V, 3)} from `given` (.pkl as FaceFormer's templates.pkl, .npz, or one (V, 3) .npy for every
    subject, key "*"), else GT_DIR/templates.pkl or templates.npz when there; (None, None) when none."""
    from avguide.data.corpus import load_templates
    from avguide.data.readers import read_templates

    if given is None:
        found = [gt_dir / n for n in ("templates.pkl", "templates.npz") if (gt_dir / n).is_file()]
        if not found:
            return None, None
        given = found[0]
    path = Path(given)
    if not path.is_file():
        raise PredictionError(f"{path}: templates file not found")
    suffix = path.suffix.lower()
    if suffix == ".pkl":
        templates = read_templates(path)  # a pickle: read only because the user's folder or option names it
    elif suffix == ".npz":
        templates = load_templates(path)
    elif suffix == ".npy":
        templates = {"*": np.load(path, allow_pickle=False).astype(np.float32).reshape(-1, 3)}
    else:
        raise PredictionError(f"{path}: unknown templates format {suffix!r}; expected .pkl, .npz or a (V, 3) .npy")
    for subject, t in templates.items():
        if t.shape != (n_vertices, 3):
            raise PredictionError(f"{path}: template of {subject!r} has shape {t.shape}, expected ({n_vertices}, 3)")
    return templates, path


def score_folder(
    pred_dir: str | Path,
    gt_dir: str | Path,
    dataset: str,
    lips: str | Path | None = None,
    upper_face: str | Path | None = None,
    templates: str | Path | None = None,
    gt_fps: float | None = None,
    progress: bool = False,
) -> tuple[dict, pd.DataFrame]:
    """`score_predictions` for ground truth in the public code's processed layout (FaceFormer / CodeTalker):
    GT_DIR/vertices_npy/<utterance>.npy (frames x V*3), with `dataset` "vocaset" or "biwi".

    The convention `dataset` sets: the predictions' frame rate (ANIMATOR_FPS: 30 VOCASET, 25 BIWI), the ground
    truth's (`gt_fps`, default PROCESSED_GT_FPS: VOCASET's processed vertices are 60 fps and every second frame is
    kept, as FaceFormer's loader does; BIWI's 25), and the region files: `lips` (LVE, lip MVE; default
    GT_DIR/regions/lve.txt, required) and `upper_face` (FDD; default GT_DIR/regions/fdd.txt, else FDD is not
    scored), text or .npy vertex ids. `templates` (FDD and the static template's LVE; default GT_DIR/templates.pkl
    or .npz, else those two are None): the subject of an utterance is its name up to the last '_' (VOCASET
    FaceTalk_..._TA_sentence01, BIWI F1_e01).

    Predictions: `<utterance>.npy`, or `<utterance>_condition_<style>.npy` as the public test scripts write them
    (each style's prediction is one row, scored against the same ground truth). Every prediction needs its
    ground truth. One utterance is in memory at a time; the overall figures pool the rows as `pooled` does
    (equal to `score` over all at once up to rounding)."""
    from avguide.data.corpus import Topology, load_vertices
    from avguide.data.readers import read_vertex_ids

    pred_dir, gt_dir = Path(pred_dir), Path(gt_dir)
    if dataset not in ANIMATOR_FPS:
        raise PredictionError(
            f"{gt_dir}: a processed folder (vertices_npy/) is scored with --dataset vocaset or biwi; got {dataset!r} "
            f"(a synth3d ground truth is the corpus folder the prepare stage writes)"
        )
    n_vertices, fps = DATASET_VERTICES[dataset], ANIMATOR_FPS[dataset]
    gt_fps = float(gt_fps or PROCESSED_GT_FPS[dataset])
    step = gt_fps / fps
    if step < 1 or abs(step - round(step)) > 1e-9:
        raise PredictionError(f"--gt-fps {gt_fps:g}: must be a whole multiple of {dataset}'s {fps:g} fps")
    step = int(round(step))
    npy_dir = gt_dir / "vertices_npy"
    if not npy_dir.is_dir():
        raise PredictionError(f"{npy_dir}: folder not found; expected the ground truth's <utterance>.npy files")
    lips_path = _region_default(lips, gt_dir, "lve.txt")
    if lips_path is None:
        raise PredictionError(
            f"{gt_dir}: no lip region; pass --lips (vertex ids, e.g. FaceFormer's regions/lve.txt; "
            f"looked for {gt_dir / 'regions' / 'lve.txt'})"
        )
    upper_path = _region_default(upper_face, gt_dir, "fdd.txt")
    topology = Topology(
        faces=np.zeros((0, 3), np.int64),
        lip_ids=read_vertex_ids(lips_path, n_vertices),
        upper_face_ids=np.zeros(0, np.int64) if upper_path is None else read_vertex_ids(upper_path, n_vertices),
    )
    subject_templates, templates_path = _folder_templates(templates, gt_dir, n_vertices)
    if upper_path is None:
        log.info("FDD not scored: no upper-face region (--upper-face, or %s)", gt_dir / "regions" / "fdd.txt")
    if subject_templates is None:
        log.info("FDD and the static template's LVE not scored: no templates (--templates, or templates.pkl)")
    if not pred_dir.is_dir():
        raise PredictionError(f"{pred_dir}: prediction folder not found")
    files = sorted(pred_dir.glob("*.npy"))
    if not files:
        raise PredictionError(f"{pred_dir}: no .npy predictions; expected <utterance>.npy files (frames x V*3)")
    rows, static = [], []
    for path in tqdm(files, desc="evaluate", unit="utt", disable=not progress):
        utt, _, style = path.stem.partition(CONDITION)
        gt_path = npy_dir / f"{utt}.npy"
        if not gt_path.is_file():
            raise PredictionError(f"{path}: no ground truth {gt_path}; expected predictions named like its files")
        subject = utt.rsplit("_", 1)[0]
        template = None
        if subject_templates is not None:
            template = subject_templates.get(subject, subject_templates.get("*"))
            if template is None:
                raise PredictionError(
                    f"{templates_path}: no template for subject {subject!r} (of {path.name}); it has "
                    f"{', '.join(sorted(subject_templates))}"
                )
        pred = load_prediction(path, n_vertices, gt_dir)
        raw = load_vertices(gt_path, n_vertices)
        gt = raw[::step]
        try:
            pred, gt = match_lengths(pred, gt, path, gt_path)
        except PredictionError as e:
            ratio = max(1, round(len(raw) / len(pred)))  # what the lengths say the ground truth's rate is
            fits = abs(len(pred) - -(-len(raw) // ratio)) <= MAX_FRAME_GAP
            hint = f"; the ground truth looks like {ratio * fps:g} fps: pass --gt-fps {ratio * fps:g}" if fits else ""
            raise PredictionError(f"{e} (ground truth at {gt_fps:g} fps, every {step} kept){hint}") from None
        metrics, row = score([pred], [gt], None if template is None else [template], topology)
        static.append(metrics["static_template_LVE"])
        info = {"utterance": utt, "subject": subject, "style": style or None, "pred_frames": len(pred)}
        rows.append(
            {
                **info,
                "gt_frames": len(raw),
                **row.to_dict("records")[0],
                "lip_mve_mm": lip_mve([pred], [gt], topology.lip_ids),
            }
        )
    table = pd.DataFrame(rows)
    figures = pooled(table)
    w = table["n_frames"].to_numpy(float)
    with_fdd = subject_templates is not None and upper_path is not None
    overall = {
        "dataset": dataset,
        "pred_dir": str(pred_dir),
        "gt_dir": str(gt_dir),
        "split": None,
        "utterances": len(table),
        "frames": int(w.sum()),
        "truncated": int((table["pred_frames"] != (table["gt_frames"] + step - 1) // step).sum()),
        "fps": fps,
        "gt_fps": gt_fps,
        "lips": str(lips_path),
        "upper_face": None if upper_path is None else str(upper_path),
        "templates": None if templates_path is None else str(templates_path),
        "LVE": float(figures["LVE"]),
        "MVE": float(figures["MVE"]),
        "FDD": float(figures["FDD"]) if with_fdd else None,
        "static_template_LVE": float(np.dot(static, w) / w.sum()) if subject_templates is not None else None,
        "lip_mve_mm": float(figures["lip_mve_mm"]),
    }
    log.info("aperture, MTM and closure rate not scored: the %s mesh's inner-lip midline is not known", dataset)
    per_utt = table.rename(columns={"n_frames": "frames"})[
        ["utterance", "subject", "style", "pred_frames", "gt_frames", "frames", *GEOMETRY]
    ]
    return overall, per_utt
