"""Audio-visual batches from the 2D corpus: the whole corpus decoded once into memory, a Dataset, a collate.

Decoding an mp4 spawns ffmpeg, so `decode_corpus` decodes all clips of one speaker in a single ffmpeg
process (the concat demuxer) and splits the frame stream by the manifest's `n_frames`; clips of a speaker
whose total does not match are decoded one by one instead. Frames stay uint8 (88x88x40 frames ~ 0.3 MB per
utterance), audio float32.
"""

from __future__ import annotations

import logging
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from avguide.data.audio import load_wav
from avguide.data.avcorpus import AVCorpus
from avguide.data.corpus import SPLITS, CorpusError, check_av_lengths
from avguide.data.text import VOCAB, normalize_text

log = logging.getLogger(__name__)


def _decode_concat(paths: list[Path]) -> np.ndarray:
    """All frames of `paths`, in order, from one ffmpeg process."""
    with tempfile.NamedTemporaryFile("w", suffix=".txt") as listing:
        for p in paths:
            listing.write("file '" + p.resolve().as_posix().replace("'", r"'\''") + "'\n")
        listing.flush()
        reader = imageio_ffmpeg.read_frames(
            listing.name, pix_fmt="gray", bpp=1, input_params=["-f", "concat", "-safe", "0"]
        )
        width, height = next(reader)["size"]
        return np.stack([np.frombuffer(buf, np.uint8).reshape(height, width) for buf in reader])


def _decode_speaker(corpus: AVCorpus, rows) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    counts = rows["n_frames"].astype(int).to_numpy()
    try:
        frames = _decode_concat([corpus.root / v for v in rows["video"]])
    except (RuntimeError, OSError, StopIteration, ValueError):
        frames = None
    if frames is None or len(frames) != counts.sum():
        log.warning(
            "%s: speaker %s decoded as one stream gave %s frames, the manifest says %d; decoding clip by clip",
            corpus.root,
            rows["speaker"].iloc[0],
            None if frames is None else len(frames),
            counts.sum(),
        )
        return {u: corpus.load(u) for u in rows["utterance"]}
    out, start = {}, 0
    for (_, row), n in zip(rows.iterrows(), counts):
        wav_path = corpus.root / row["wav"]
        audio = load_wav(wav_path)
        check_av_lengths(wav_path, len(audio), int(n), float(row["fps"]))
        out[row["utterance"]] = (frames[start : start + n], audio)
        start += n
    return out


def decode_corpus(
    corpus: AVCorpus, splits=SPLITS, workers: int = 2, progress: bool = True
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{utterance: ((T, H, W) uint8 video, 16 kHz float32 audio)} for every utterance of `splits`."""
    m = corpus.manifest[corpus.manifest["split"].isin(list(splits))]
    groups = [rows for _, rows in m.groupby("speaker", sort=True)]
    start, out = time.perf_counter(), {}
    with ThreadPoolExecutor(workers) as pool:
        for part in tqdm(
            pool.map(lambda rows: _decode_speaker(corpus, rows), groups),
            total=len(groups),
            desc=f"decoding {len(m)} clips of {len(groups)} speakers",
            disable=not progress,
        ):
            out.update(part)
    log.info("decoded %d clips in %.1f s", len(out), time.perf_counter() - start)
    return out


class AVDataset(Dataset):
    """Utterances of one split of a 2D corpus: uint8 video (T, H, W), float32 audio, transcript tokens.

    `clips` is what `decode_corpus` returns (shared between splits); without it each item is read from disk.
    """

    def __init__(self, corpus: AVCorpus, split: str, clips: dict | None = None):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}; found {split!r}")
        self.corpus, self.split, self.clips = corpus, split, clips
        self.rows = corpus.split(split)
        if self.rows.empty:
            raise CorpusError(f"{corpus.root / 'manifest.csv'}: no utterances in split {split!r}")
        self.texts = [normalize_text(str(t)) for t in self.rows["text"]]
        self.tokens = [VOCAB.encode(t) for t in self.texts]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        utt = self.rows["utterance"].iloc[i]
        video, audio = self.clips[utt] if self.clips is not None and utt in self.clips else self.corpus.load(utt)
        return {
            "utterance": utt,
            "speaker": self.rows["speaker"].iloc[i],
            "video": torch.from_numpy(np.ascontiguousarray(video)),
            "audio": torch.from_numpy(np.ascontiguousarray(audio, np.float32)),
            "text": self.texts[i],
            "tokens": torch.tensor(self.tokens[i], dtype=torch.long),
        }


def _pad(seqs: list[torch.Tensor], value=0) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = torch.tensor([len(s) for s in seqs], dtype=torch.long)
    out = seqs[0].new_full((len(seqs), int(lengths.max()), *seqs[0].shape[1:]), value)
    for b, s in enumerate(seqs):
        out[b, : len(s)] = s
    return out, lengths


def collate_av(batch: list[dict]) -> dict:
    """Zero-padded batch: video (B, T, H, W) float in [0, 1], video_lengths (B,); audio (B, S), audio_lengths (B,);
    tokens (B, L) padded with VOCAB.pad, token_lengths (B,); lists utterances, speakers, texts."""
    if not batch:
        raise ValueError("collate_av: expected at least one item, found an empty batch")
    sizes = {tuple(item["video"].shape[1:]) for item in batch}
    if len(sizes) != 1:
        raise ValueError(f"collate_av: all clips must have one frame size; found {sorted(sizes)}")
    video, video_lengths = _pad([item["video"] for item in batch])
    audio, audio_lengths = _pad([item["audio"] for item in batch])
    tokens, token_lengths = _pad([item["tokens"] for item in batch], VOCAB.pad)
    video = video.float() / 255 if video.dtype == torch.uint8 else video.float()
    return {
        "video": video,
        "video_lengths": video_lengths,
        "audio": audio,
        "audio_lengths": audio_lengths,
        "tokens": tokens,
        "token_lengths": token_lengths,
        "utterances": [item["utterance"] for item in batch],
        "speakers": [item["speaker"] for item in batch],
        "texts": [item["text"] for item in batch],
    }
