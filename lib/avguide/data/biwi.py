"""BIWI (CodeTalker's processed layout) -> our corpus layout (see `avguide.data.corpus`).

    prepare_biwi(out_dir, *, processed_dir, transcripts_dir, faces_path, regions_dir=None, fps=25,
                 splits=None, max_trim_s=0.0, skip_broken=False) -> Path

`processed_dir` holds wav/<subject>_<sentence>.wav (e.g. F1_e01.wav, any rate, mono or stereo),
vertices_npy/<subject>_<sentence>.npy (T, 23370*3) float32 at 25 fps, templates.pkl
({subject: (23370, 3)}), and regions/lve.txt, regions/fdd.txt (or pass `regions_dir`).
`faces_path`: .npy (F, 3), .ply (e.g. CodeTalker's BIWI.ply) or .obj. `transcripts_dir`: <sentence>.txt
(e01.txt ... e40.txt) or transcripts.csv with columns sentence,text.

Default split (`default_biwi_splits`), as FaceFormer / CodeTalker: subjects F2 F3 F4 M3 M4 M5 give
e01-e32 to train, e33-e36 to val, e37-e40 to test ("test-A"); the other eight subjects (F1 F5 F6 F7 F8
M1 M2 M6, CodeTalker's "test-B", unseen speakers) all go to test, as we only have train/val/test.
Their utterances are told apart by subject. `splits` = {split: [subject or <subject>_<sentence>, ...]}
replaces the default.

templates.pkl is unpickled (pickle can run code): it is only read from the folder you pass.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

from avguide.data.readers import processed_utterances, read_templates, require_dir, write_corpus

log = logging.getLogger(__name__)

BIWI_TRAIN_SUBJECTS = ["F2", "F3", "F4", "M3", "M4", "M5"]
BIWI_UNSEEN_SUBJECTS = ["F1", "F5", "F6", "F7", "F8", "M1", "M2", "M6"]


def default_biwi_splits() -> dict[str, list[str]]:
    """FaceFormer / CodeTalker's BIWI split as {split: [subject or <subject>_<sentence>]}."""

    def ids(first: int, last: int) -> list[str]:
        return [f"{s}_e{n:02d}" for s in BIWI_TRAIN_SUBJECTS for n in range(first, last + 1)]

    return {"train": ids(1, 32), "val": ids(33, 36), "test": ids(37, 40) + BIWI_UNSEEN_SUBJECTS}


def prepare_biwi(
    out_dir: str | Path,
    *,
    processed_dir: str | Path,
    transcripts_dir: str | Path,
    faces_path: str | Path,
    regions_dir: str | Path | None = None,
    fps: int = 25,
    splits: Mapping[str, list[str]] | None = None,
    max_trim_s: float = 0.0,
    skip_broken: bool = False,
) -> Path:
    """Write BIWI as a corpus in `out_dir` (see the module docstring); returns `out_dir`."""
    root = require_dir(processed_dir, "processed BIWI: wav/, vertices_npy/, templates.pkl, regions/")
    templates_path = root / "templates.pkl"
    templates = read_templates(templates_path)
    n_vertices = next(iter(templates.values())).shape[0]
    utterances = processed_utterances(root, n_vertices)
    return write_corpus(
        out_dir,
        utterances,
        dataset="BIWI",
        templates=templates,
        templates_source=templates_path,
        faces_path=faces_path,
        regions_dir=root / "regions" if regions_dir is None else regions_dir,
        transcripts_dir=transcripts_dir,
        splits=default_biwi_splits() if splits is None else splits,
        fps=fps,
        source_fps=fps,
        max_trim_s=max_trim_s,
        skip_broken=skip_broken,
    )
