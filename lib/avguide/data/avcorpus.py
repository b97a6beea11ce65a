"""The 2D audio-visual corpus (auto-AVSR's preprocessed LRS3 convention) and its reader.

Layout of a corpus root (the synthetic 2D corpus writes it; `index_lrs3` makes the manifest for real
preprocessed LRS3 mouth crops, so the same reader serves both)::

    manifest.csv                      utterance,speaker,split,text,n_frames,fps,video,wav (paths relative
                                      to the root, or absolute for LRS3 indexed where it lies)
    video/<speaker>/<utt>.mp4         grey mouth-crop video
    wav/<speaker>/<utt>.wav           16 kHz mono
    text/<speaker>/<utt>.txt          the transcript
"""

from __future__ import annotations

import logging
import re
import zlib
from pathlib import Path

import numpy as np
import pandas as pd

from avguide.data.audio import load_wav
from avguide.data.corpus import CorpusError, check_av_lengths, read_manifest
from avguide.data.text import normalize_text
from avguide.render.video import read_video

log = logging.getLogger(__name__)

AV_COLUMNS = ["utterance", "speaker", "split", "text", "n_frames", "fps", "video", "wav"]


class AVCorpus:
    """A 2D audio-visual corpus on disk: manifest, mouth-crop videos, audio, transcripts."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        if not self.root.is_dir():
            raise CorpusError(f"{self.root}: audio-visual corpus folder not found")
        m = self.manifest = read_manifest(self.root / "manifest.csv", AV_COLUMNS, stage="prepare_2d")
        self._index = {u: i for i, u in enumerate(m["utterance"])}

    def __len__(self) -> int:
        return len(self.manifest)

    def split(self, name: str) -> pd.DataFrame:
        return self.manifest[self.manifest["split"] == name].reset_index(drop=True)

    def row(self, utterance: str) -> pd.Series:
        if utterance not in self._index:
            raise KeyError(f"{self.root / 'manifest.csv'}: no utterance {utterance!r}")
        return self.manifest.iloc[self._index[utterance]]

    def load(self, utterance: str) -> tuple[np.ndarray, np.ndarray]:
        """(T, H, W) uint8 grey video and 16 kHz audio, checked against each other and the manifest."""
        row = self.row(utterance)
        video_path, wav_path = self.root / row["video"], self.root / row["wav"]
        video, _ = read_video(video_path)
        audio = load_wav(wav_path)
        if len(video) != int(row["n_frames"]):
            raise CorpusError(f"{video_path}: {len(video)} frames, manifest says n_frames={row['n_frames']}")
        check_av_lengths(wav_path, len(audio), len(video), float(row["fps"]))
        return video, audio


def read_lrs3_text(path: Path) -> str:
    """An LRS3 transcript file: the words after 'Text:' on the first line (or the whole file if plain)."""
    first = path.read_text().splitlines()[0] if path.stat().st_size else ""
    text = normalize_text(re.sub(r"^Text:\s*", "", first))
    if not text:
        raise CorpusError(f"{path}: empty transcript")
    return text


def index_lrs3(root: str | Path, out_dir: str | Path, val_fraction: float = 0.05, fps: float = 25.0) -> Path:
    """Write `out_dir`/manifest.csv for auto-AVSR-preprocessed LRS3 crops under `root` (left untouched):
    <subset>/<speaker>/<id>.mp4 with <id>.wav and <id>.txt beside it, referenced by absolute paths.
    Subset 'test' -> test; the rest -> train, with a held-out `val_fraction` of speakers (by a stable
    hash) as val. Items missing a wav or txt are skipped, logged and counted."""
    root, out_dir = Path(root).resolve(), Path(out_dir)
    if not root.is_dir():
        raise CorpusError(f"{root}: LRS3 folder not found")
    rows, skipped = [], 0
    for video in sorted(root.glob("*/*/*.mp4")):
        subset, speaker = video.parent.parent.name, video.parent.name
        wav, txt = video.with_suffix(".wav"), video.with_suffix(".txt")
        if not wav.is_file() or not txt.is_file():
            log.warning("%s: no %s beside it; skipped", video, "wav" if not wav.is_file() else "txt")
            skipped += 1
            continue
        frames, _ = read_video(video)
        rows.append(
            dict(
                utterance=f"{subset}/{speaker}/{video.stem}",
                speaker=speaker,
                split="test" if subset == "test" else "train",
                text=read_lrs3_text(txt),
                n_frames=len(frames),
                fps=fps,
                video=video.as_posix(),
                wav=wav.as_posix(),
            )
        )
    if not rows:
        raise CorpusError(f"{root}: no <subset>/<speaker>/<id>.mp4 crops found")
    m = pd.DataFrame(rows)
    train_speakers = sorted(set(m.loc[m["split"] == "train", "speaker"]))
    n_val = int(round(val_fraction * len(train_speakers)))
    val = set(sorted(train_speakers, key=lambda s: (hash_str(s), s))[:n_val])
    m.loc[(m["split"] == "train") & m["speaker"].isin(val), "split"] = "val"
    out_dir.mkdir(parents=True, exist_ok=True)
    m[AV_COLUMNS].to_csv(out_dir / "manifest.csv", index=False, lineterminator="\n")
    log.info("indexed %d LRS3 utterances in %s (%d skipped)", len(m), root, skipped)
    return out_dir / "manifest.csv"


def hash_str(s: str) -> int:
    """A hash that is stable across processes (Python's hash() is salted)."""
    return zlib.crc32(s.encode())
