"""VOCASET -> our corpus layout (see `avguide.data.corpus`).

    prepare_vocaset(out_dir, *, raw_dir=None, processed_dir=None, transcripts_dir, regions_dir, faces_path,
                    fps=30, processed_fps=30, splits=None, max_trim_s=None, skip_broken=None) -> Path

Give exactly one of:

- `raw_dir`, the release from voca.is.tue.mpg.de: data_verts.npy (N, 5023, 3) float32 at 60 fps,
  raw_audio_fixed.pkl ({subject: {sentence: {'audio': int16 or float array, 'sample_rate': 22000}}}),
  templates.pkl ({subject: (5023, 3)}), subj_seq_to_idx.pkl ({subject: {sentence: {frame: row}}}).
  As FaceFormer: rows in frame-number order, every 2nd frame kept (60 -> 30 fps).
  Broken items (no audio, empty index, lengths more than `max_trim_s` apart; default 0.2 s) are
  skipped with a warning; smaller drifts (VOCA's capture is 59-61 fps against the audio) are trimmed.
- `processed_dir`: wav/<subject>_<sentence>.wav (any rate, mono or stereo), vertices_npy/<subject>_<sentence>.npy
  (T, 5023*3) at `processed_fps`, templates.pkl. Default strict: lengths must agree within one frame
  and any broken item is an error. FaceFormer's process_voca_data.py keeps all 60 fps frames: pass
  processed_fps=60 for its output.

Also: `faces_path` (.npy (F, 3), .ply such as FLAME_sample.ply, or .obj), `regions_dir` with lve.txt
(lip ids, FaceFormer) and fdd.txt (upper-face ids, CodeTalker), `transcripts_dir` with <sentence>.txt
(or <subject>_<sentence>.txt, or a transcripts.csv with columns sentence,text[,subject]).
Splits by subject, FaceFormer's table (`VOCASET_SPLITS`), or `splits` = {split: [subject or
<subject>_<sentence>, ...]}.

The pickles are unpickled (pickle can run code): they are only read from the folders you pass.
Everything written is WAV/NPY/NPZ/CSV/JSON; prepare_report.json counts written, skipped and trimmed items.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from avguide.data.audio import resample
from avguide.data.corpus import CorpusError
from avguide.data.readers import (
    BrokenItem,
    Utterance,
    load_pickle,
    processed_utterances,
    read_templates,
    require_dir,
    require_file,
    write_corpus,
)

log = logging.getLogger(__name__)

RAW_FPS = 60
VOCASET_SPLITS: dict[str, list[str]] = {
    "train": [
        "FaceTalk_170728_03272_TA", "FaceTalk_170904_00128_TA", "FaceTalk_170725_00137_TA",
        "FaceTalk_170915_00223_TA", "FaceTalk_170811_03274_TA", "FaceTalk_170913_03279_TA",
        "FaceTalk_170904_03276_TA", "FaceTalk_170912_03278_TA",
    ],
    "val": ["FaceTalk_170811_03275_TA", "FaceTalk_170908_03277_TA"],
    "test": ["FaceTalk_170809_00138_TA", "FaceTalk_170731_00024_TA"],
}  # fmt: skip


def prepare_vocaset(
    out_dir: str | Path,
    *,
    raw_dir: str | Path | None = None,
    processed_dir: str | Path | None = None,
    transcripts_dir: str | Path,
    regions_dir: str | Path,
    faces_path: str | Path,
    fps: int = 30,
    processed_fps: int = 30,
    splits: Mapping[str, list[str]] | None = None,
    max_trim_s: float | None = None,
    skip_broken: bool | None = None,
) -> Path:
    """Write VOCASET as a corpus in `out_dir` (see the module docstring); returns `out_dir`."""
    if (raw_dir is None) == (processed_dir is None):
        raise ValueError("pass exactly one of raw_dir (the VOCASET release) or processed_dir (wav/ + vertices_npy/)")
    raw = raw_dir is not None
    root = require_dir(raw_dir if raw else processed_dir, "the VOCASET release" if raw else "processed VOCASET")
    templates_path = root / "templates.pkl"
    templates = read_templates(templates_path)
    n_vertices = next(iter(templates.values())).shape[0]
    utterances = _raw_utterances(root, n_vertices) if raw else processed_utterances(root, n_vertices)
    return write_corpus(
        out_dir,
        utterances,
        dataset="VOCASET",
        templates=templates,
        templates_source=templates_path,
        faces_path=faces_path,
        regions_dir=regions_dir,
        transcripts_dir=transcripts_dir,
        splits=VOCASET_SPLITS if splits is None else splits,
        fps=fps,
        source_fps=RAW_FPS if raw else processed_fps,
        max_trim_s=(0.2 if raw else 0.0) if max_trim_s is None else max_trim_s,
        skip_broken=raw if skip_broken is None else skip_broken,
    )


def _raw_utterances(raw_dir: Path, n_vertices: int) -> list[Utterance]:
    verts_path = require_file(raw_dir / "data_verts.npy", "VOCASET vertices, (N, 5023, 3) float32 at 60 fps")
    data_verts = np.load(verts_path, mmap_mode="r", allow_pickle=False)
    if data_verts.ndim != 3 or data_verts.shape[2] != 3:
        raise CorpusError(f"{verts_path}: expected an (N, V, 3) array, found shape {data_verts.shape}")
    if data_verts.shape[1] != n_vertices:
        raise CorpusError(f"{verts_path}: {data_verts.shape[1]} vertices per frame, the templates have {n_vertices}")
    audio_path = raw_dir / "raw_audio_fixed.pkl"
    index_path = raw_dir / "subj_seq_to_idx.pkl"
    audio = _nested_dict(load_pickle(audio_path, "{subject: {sentence: {'audio', 'sample_rate'}}}"), audio_path)
    index = _nested_dict(load_pickle(index_path, "{subject: {sentence: {frame: row of data_verts}}}"), index_path)
    keys = {(s, q) for d in (audio, index) for s in d for q in d[s]}
    return [
        Utterance(s, q, _raw_loader(s, q, data_verts, audio, index, audio_path, index_path), f"{audio_path} [{s}][{q}]")
        for s, q in sorted(keys)
    ]


def _nested_dict(obj: object, path: Path) -> dict:
    if not isinstance(obj, dict) or not all(isinstance(v, dict) for v in obj.values()):
        raise CorpusError(f"{path}: expected a dict subject -> dict sentence -> entry, found {type(obj).__name__}")
    return obj


def _raw_loader(
    subject: str, sentence: str, data_verts: np.ndarray, audio: dict, index: dict, audio_path: Path, index_path: Path
) -> Callable[[], tuple[np.ndarray, np.ndarray]]:
    def load() -> tuple[np.ndarray, np.ndarray]:
        frames = index.get(subject, {}).get(sentence)
        if frames is None:
            raise BrokenItem(f"{index_path}: no frame index for [{subject}][{sentence}] (audio only)")
        if not frames:
            raise BrokenItem(f"{index_path}: empty frame index for [{subject}][{sentence}]")
        rows = [frames[k] for k in sorted(frames)]
        if min(rows) < 0 or max(rows) >= len(data_verts):
            raise BrokenItem(f"{index_path}: [{subject}][{sentence}] indexes rows {min(rows)}..{max(rows)}, "
                             f"data_verts.npy has {len(data_verts)}")  # fmt: skip
        entry = audio.get(subject, {}).get(sentence)
        if entry is None:
            raise BrokenItem(f"{audio_path}: no audio for [{subject}][{sentence}]")
        if not isinstance(entry, dict) or "audio" not in entry or "sample_rate" not in entry:
            raise BrokenItem(f"{audio_path}: [{subject}][{sentence}] is not a dict with 'audio' and 'sample_rate'")
        wav = _to_float_mono(np.asarray(entry["audio"]))
        return resample(wav, int(entry["sample_rate"])), np.asarray(data_verts[rows], dtype=np.float32)

    return load


def _to_float_mono(wav: np.ndarray) -> np.ndarray:
    """Integer PCM -> [-1, 1) float32 (int16 / 32768); (n, channels) -> mean over channels."""
    if np.issubdtype(wav.dtype, np.integer):
        wav = wav / float(2 ** (8 * wav.dtype.itemsize - 1))
    wav = wav.astype(np.float32)
    return wav.mean(axis=1) if wav.ndim == 2 else wav.reshape(-1)
