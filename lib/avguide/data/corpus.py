"""The on-disk 3D talking-face corpus (processed VOCASET / FaceFormer convention) and its loader.

Layout of a corpus root (what the synthetic generator and the VOCASET / BIWI readers write)::

    manifest.csv          utterance,subject,sentence,split,text,n_frames,fps,wav,vertices
    wav/<utt>.wav          16 kHz mono PCM
    vertices_npy/<utt>.npy float32, frames x (V*3)
    templates.npz          one (V, 3) float32 array per subject
    topology.npz           faces (F, 3), lip_ids, upper_face_ids (and optional albedo, part)
    phonemes.csv           optional: utterance,index,phoneme,viseme,start_s,end_s

Everything written is a safe format (CSV, WAV, NPY, NPZ without pickles).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from avguide.data.audio import load_wav
from avguide.data.text import normalize_text

log = logging.getLogger(__name__)

MANIFEST_COLUMNS = ["utterance", "subject", "sentence", "split", "text", "n_frames", "fps", "wav", "vertices"]
PHONEME_COLUMNS = ["utterance", "index", "phoneme", "viseme", "start_s", "end_s"]
SPLITS = ("train", "val", "test")


class CorpusError(ValueError):
    """A corpus file is missing or does not hold what the format says."""


@dataclass(frozen=True)
class Topology:
    """Mesh connectivity shared by every subject of a corpus, with the evaluation regions."""

    faces: np.ndarray  # (F, 3) int64
    lip_ids: np.ndarray  # vertex ids of the lip region (LVE, lip-vertex loss)
    upper_face_ids: np.ndarray  # vertex ids of the upper face (FDD)
    albedo: np.ndarray | None = None  # (V,) grey-level albedo, synthetic corpus only
    part: np.ndarray | None = None  # (V,) part label (see avguide.face.template.PARTS)

    def save(self, path: Path) -> None:
        arrays = {"faces": self.faces, "lip_ids": self.lip_ids, "upper_face_ids": self.upper_face_ids}
        if self.albedo is not None:
            arrays["albedo"] = self.albedo
        if self.part is not None:
            arrays["part"] = self.part
        np.savez(path, **arrays)

    @classmethod
    def load(cls, path: Path) -> Topology:
        path = Path(path)
        if not path.is_file():
            raise CorpusError(f"{path}: mesh topology file not found")
        with np.load(path, allow_pickle=False) as z:
            missing = {"faces", "lip_ids", "upper_face_ids"} - set(z.files)
            if missing:
                raise CorpusError(f"{path}: expected arrays faces, lip_ids, upper_face_ids; missing {sorted(missing)}")
            return cls(
                faces=z["faces"].astype(np.int64),
                lip_ids=z["lip_ids"].astype(np.int64),
                upper_face_ids=z["upper_face_ids"].astype(np.int64),
                albedo=z["albedo"] if "albedo" in z.files else None,
                part=z["part"] if "part" in z.files else None,
            )


def save_templates(path: Path, templates: dict[str, np.ndarray]) -> None:
    np.savez(path, **{s: np.asarray(v, dtype=np.float32) for s, v in sorted(templates.items())})


def load_templates(path: Path) -> dict[str, np.ndarray]:
    path = Path(path)
    if not path.is_file():
        raise CorpusError(f"{path}: templates file not found")
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k].astype(np.float32) for k in z.files}


def write_manifest(path: Path, rows: list[dict]) -> pd.DataFrame:
    df = pd.DataFrame(rows)
    missing = [c for c in MANIFEST_COLUMNS if c not in df.columns]
    if missing:
        raise CorpusError(f"{path}: manifest rows lack columns {missing}")
    extra = [c for c in df.columns if c not in MANIFEST_COLUMNS]
    df = df[MANIFEST_COLUMNS + extra].sort_values("utterance", kind="stable").reset_index(drop=True)
    df.to_csv(path, index=False, lineterminator="\n")
    return df


def read_manifest(path: Path, required: list[str] = MANIFEST_COLUMNS, stage: str = "prepare") -> pd.DataFrame:
    """A corpus manifest, checked: the columns it must have, known splits, no transcript without a letter."""
    path = Path(path)
    if not path.is_file():
        raise CorpusError(f"{path}: manifest not found (is the corpus built? run `dvc repro {stage}`)")
    text_columns = {c: str for c in ("utterance", "subject", "speaker", "text")}
    df = pd.read_csv(path, dtype=text_columns, keep_default_na=False)
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise CorpusError(f"{path}: manifest lacks columns {missing}; has {list(df.columns)}")
    if "split" in df.columns:
        bad = sorted(set(df["split"]) - set(SPLITS))
        if bad:
            raise CorpusError(f"{path}: split must be one of {SPLITS}; found {bad}")
    empty = df.loc[df["text"].map(normalize_text) == "", "utterance"].tolist()
    if empty:
        raise CorpusError(f"{path}: empty transcript for utterance(s) {empty[:5]}")
    return df


def read_phonemes(path: Path) -> pd.DataFrame:
    """phonemes.csv (the synthetic corpus' exact phoneme timings), checked: its columns, intervals in order."""
    path = Path(path)
    if not path.is_file():
        raise CorpusError(f"{path}: phoneme timings not found (only the synthetic corpus has them)")
    df = pd.read_csv(path, dtype={c: str for c in ("utterance", "phoneme", "viseme")}, keep_default_na=False)
    missing = [c for c in PHONEME_COLUMNS if c not in df.columns]
    if missing:
        raise CorpusError(f"{path}: lacks columns {missing}; has {list(df.columns)}")
    bad = df[~(df["end_s"] >= df["start_s"])]
    if len(bad):
        raise CorpusError(
            f"{path}: phoneme {bad.iloc[0]['index']} of {bad.iloc[0]['utterance']!r} ends before it starts"
        )
    return df


class Corpus:
    """A 3D corpus on disk: manifest, templates, topology, and per-utterance audio and vertices."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        if not self.root.is_dir():
            raise CorpusError(f"{self.root}: corpus folder not found")
        self.manifest = read_manifest(self.root / "manifest.csv")
        self.templates = load_templates(self.root / "templates.npz")
        self.topology = Topology.load(self.root / "topology.npz")
        self._index = {u: i for i, u in enumerate(self.manifest["utterance"])}
        unknown = sorted(set(self.manifest["subject"]) - set(self.templates))
        if unknown:
            raise CorpusError(f"{self.root / 'templates.npz'}: no template for subject(s) {unknown}")
        self.n_vertices = next(iter(self.templates.values())).shape[0]
        for name, t in self.templates.items():
            if t.shape != (self.n_vertices, 3):
                raise CorpusError(
                    f"{self.root / 'templates.npz'}: template of {name!r} has shape {t.shape}, "
                    f"expected ({self.n_vertices}, 3) like the others"
                )
        if self.topology.faces.size and self.topology.faces.max() >= self.n_vertices:
            raise CorpusError(
                f"{self.root / 'topology.npz'}: faces index vertex {self.topology.faces.max()}, "
                f"templates have {self.n_vertices} vertices"
            )

    def __len__(self) -> int:
        return len(self.manifest)

    def split(self, name: str) -> pd.DataFrame:
        return self.manifest[self.manifest["split"] == name].reset_index(drop=True)

    @property
    def subjects(self) -> dict[str, list[str]]:
        """Subjects per split, sorted."""
        return {s: sorted(self.manifest.loc[self.manifest["split"] == s, "subject"].unique()) for s in SPLITS}

    @property
    def fps(self) -> float:
        """The corpus' frame rate; one for all its utterances (else an error naming the rates)."""
        rates = sorted({float(x) for x in self.manifest["fps"]})
        if len(rates) != 1:
            raise ValueError(f"{self.root / 'manifest.csv'}: utterances at several frame rates {rates}; expected one")
        return rates[0]

    def summary(self) -> pd.DataFrame:
        """Subjects, utterances, frames and minutes of motion per split."""
        m = self.manifest.assign(seconds=self.manifest["n_frames"] / self.manifest["fps"])
        g = m.groupby("split")
        out = pd.DataFrame(
            {
                "subjects": g["subject"].nunique(),
                "utterances": g.size(),
                "frames": g["n_frames"].sum(),
                "minutes": (g["seconds"].sum() / 60).round(2),
                "mean_s": g["seconds"].mean().round(2),
            }
        )
        return out.reindex([s for s in SPLITS if s in out.index])

    def phonemes(self) -> pd.DataFrame | None:
        """The exact phoneme timings (phonemes.csv) when the corpus has them (the synthetic one), else None."""
        path = self.root / "phonemes.csv"
        return read_phonemes(path) if path.is_file() else None

    def row(self, utterance: str) -> pd.Series:
        if utterance not in self._index:
            raise KeyError(f"{self.root / 'manifest.csv'}: no utterance {utterance!r}")
        return self.manifest.iloc[self._index[utterance]]

    def vertices(self, utterance: str) -> np.ndarray:
        """(T, V, 3) float32 vertex positions, checked against the template."""
        return load_vertices(self.root / self.row(utterance)["vertices"], self.n_vertices)

    def audio(self, utterance: str) -> np.ndarray:
        """16 kHz mono float32 waveform (downmixed / resampled with a warning if the file is not)."""
        return load_wav(self.root / self.row(utterance)["wav"])

    def load(self, utterance: str) -> tuple[np.ndarray, np.ndarray]:
        """Audio and vertices of one utterance, each read once, checked against each other and the manifest."""
        row = self.row(utterance)
        wav_path, vert_path = self.root / row["wav"], self.root / row["vertices"]
        audio, vertices = load_wav(wav_path), load_vertices(vert_path, self.n_vertices)
        if len(vertices) != int(row["n_frames"]):
            raise CorpusError(
                f"{vert_path}: {len(vertices)} frames, but {self.root / 'manifest.csv'} "
                f"says n_frames={row['n_frames']} for {utterance!r}"
            )
        try:
            check_av_lengths(wav_path, len(audio), len(vertices), float(row["fps"]))
        except CorpusError as e:
            raise CorpusError(f"{e} ({vert_path})") from None
        return audio, vertices


def load_vertices(path: Path, n_vertices: int) -> np.ndarray:
    path = Path(path)
    if not path.is_file():
        raise CorpusError(f"{path}: vertex file not found")
    arr = np.load(path, allow_pickle=False)
    if arr.ndim == 2 and arr.shape[1] % 3 == 0:
        arr = arr.reshape(arr.shape[0], -1, 3)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise CorpusError(f"{path}: expected frames x (V*3) vertices, found shape {arr.shape}")
    if arr.shape[1] != n_vertices:
        raise CorpusError(f"{path}: {arr.shape[1]} vertices per frame, the template has {n_vertices}")
    if not np.isfinite(arr).all():
        raise CorpusError(f"{path}: vertices contain NaN or infinite values")
    return arr.astype(np.float32, copy=False)


def check_av_lengths(wav_path: Path, n_samples: int, n_frames: int, fps: float, sample_rate: int = 16000) -> None:
    expected = n_samples / sample_rate * fps
    if abs(expected - n_frames) > 1.0:
        raise CorpusError(
            f"{wav_path}: audio lasts {n_samples / sample_rate:.3f} s = {expected:.1f} frames at {fps} fps, "
            f"but the motion has {n_frames} frames (more than one frame apart)"
        )
