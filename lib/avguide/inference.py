"""Animating any speech recording with a trained animator (loaded by avguide.models.registry.load_animator):
silence and length checks, chunked inference with bounded memory, and OBJ export. Importing this module needs
neither torch nor the models, so a bad input file is refused at once.

Every animator has `predict(audio, audio_lengths, n_frames, templates, subject_ids) -> (B, T, V, 3)` and a
`cfg` with `n_vertices`, `n_subjects`, `fps` and `max_frames`; nothing here depends on more than that.

Long recordings are animated in windows of `chunk_s` seconds that overlap by `overlap_s`: each window
is predicted on its own audio (the animator restarts from the subject's style), and in the overlap the
two predictions are cross-faded linearly, so there is no jump at a seam. Only one window and the
overlap are held in memory: `animate_blocks` yields the frames window by window, and the CLI appends
them to the .npy file (`write_npy_blocks`) and reads them back a slice at a time (`NpyFrames`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from avguide.data.audio import SAMPLE_RATE

log = logging.getLogger(__name__)

SILENCE_DBFS = -60.0  # loudest 20 ms window quieter than this: nothing to animate
MIN_SECONDS = 0.1


class InputError(ValueError):
    """An input file is not what the command needs (the message says what was expected and found)."""


def loudest_dbfs(audio: np.ndarray, window: int = SAMPLE_RATE // 50) -> float:
    """Level of the loudest 20 ms window in dB full scale (-inf for all zeros)."""
    n = max(1, len(audio) // window)
    frames = (
        np.asarray(audio[: n * window], np.float64).reshape(n, -1)
        if len(audio) >= window
        else np.asarray(audio, np.float64)[None]
    )
    rms = float(np.sqrt((frames**2).mean(1)).max())
    return 20 * np.log10(rms) if rms > 0 else float("-inf")


def check_speech(audio: np.ndarray, path: str | Path, allow_silence: bool = False) -> None:
    """Refuse audio too short for one frame of motion, and (unless `allow_silence`) silent audio."""
    seconds = len(audio) / SAMPLE_RATE
    if seconds < MIN_SECONDS:
        raise InputError(f"{path}: audio lasts {seconds:.3f} s; expected at least {MIN_SECONDS} s of speech")
    level = loudest_dbfs(audio)
    if level < SILENCE_DBFS:
        if not allow_silence:
            raise InputError(
                f"{path}: the audio is silent (loudest 20 ms at {level:.1f} dBFS, below "
                f"{SILENCE_DBFS:.0f} dBFS); expected speech. Use --allow-silence to animate it anyway"
            )
        log.warning("%s: the audio is silent (loudest 20 ms at %.1f dBFS); animating anyway", path, level)


def frames_for(n_samples: int, fps: float) -> int:
    """Motion frames for `n_samples` of 16 kHz audio at `fps` (at least one)."""
    return max(1, int(round(n_samples / SAMPLE_RATE * fps)))


def chunk_bounds(n_frames: int, chunk: int, overlap: int) -> list[tuple[int, int]]:
    """Frame windows [start, end) of at most `chunk` frames covering 0..n_frames, each overlapping the
    previous one by at least `overlap` frames; the last window is a full one ending at n_frames."""
    if chunk < 1 or not 0 <= overlap < chunk:
        raise ValueError(f"need chunk >= 1 and 0 <= overlap < chunk; got chunk={chunk}, overlap={overlap}")
    if n_frames <= chunk:
        return [(0, n_frames)]
    bounds, start = [], 0
    while start + chunk < n_frames:
        bounds.append((start, start + chunk))
        start += chunk - overlap
    bounds.append((n_frames - chunk, n_frames))
    return bounds


def animate_blocks(
    model,
    audio: np.ndarray,
    template: np.ndarray,
    style: int,
    chunk_s: float = 20.0,
    overlap_s: float = 1.0,
    progress: bool = False,
) -> Iterator[np.ndarray]:
    """Vertices for 16 kHz `audio` as consecutive (n, V, 3) float32 blocks, one per window, T = duration x
    the model's fps frames in all. `style`: the training subject's index. Memory: one window."""
    import torch  # imported here: checking a file needs no torch

    cfg = model.cfg
    fps = float(cfg.fps)
    n_frames = frames_for(len(audio), fps)
    template = np.asarray(template, np.float32)
    if template.shape != (cfg.n_vertices, 3):
        raise InputError(f"template has shape {template.shape}; the model animates ({cfg.n_vertices}, 3)")
    if not 0 <= style < cfg.n_subjects:
        raise InputError(f"style {style} is not a training subject of the model (0..{cfg.n_subjects - 1})")
    chunk = max(1, min(int(round(chunk_s * fps)), int(getattr(cfg, "max_frames", n_frames))))
    overlap = min(int(round(overlap_s * fps)), chunk // 2)
    bounds = chunk_bounds(n_frames, chunk, overlap)
    if len(bounds) > 1:
        log.info(
            "animating %d frames in %d windows of %d frames (%.0f s), overlap %d",
            n_frames,
            len(bounds),
            chunk,
            chunk / fps,
            overlap,
        )
    device = next(model.parameters()).device
    templates = torch.from_numpy(template)[None].to(device)
    ids = torch.tensor([style], device=device)
    tail, tail_end = None, 0
    for k, (start, end) in enumerate(tqdm(bounds, desc="animate", unit="window", disable=not progress)):
        lo, hi = round(start / fps * SAMPLE_RATE), min(len(audio), round(end / fps * SAMPLE_RATE))
        piece = torch.from_numpy(np.ascontiguousarray(audio[lo:hi], np.float32))[None].to(device)
        lengths = torch.tensor([piece.shape[1]], device=device)
        frames = torch.tensor([end - start], device=device)
        with torch.no_grad():
            pred = model.predict(piece, lengths, frames, templates, ids)[0, : end - start].cpu().numpy()
        if tail is not None:  # cross-fade the overlap with the previous window
            ov = tail_end - start
            w = (np.arange(1, ov + 1, dtype=np.float32) / (ov + 1))[:, None, None]
            pred[:ov] = (1 - w) * tail + w * pred[:ov]
        keep = (bounds[k + 1][0] if k + 1 < len(bounds) else end) - start
        yield pred[:keep].astype(np.float32, copy=False)
        tail, tail_end = pred[keep:], end


def animate(
    model,
    audio: np.ndarray,
    template: np.ndarray,
    style: int,
    chunk_s: float = 20.0,
    overlap_s: float = 1.0,
    progress: bool = False,
) -> np.ndarray:
    """All (T, V, 3) vertices for `audio` in one array (see animate_blocks; the CLI streams them to disk)."""
    return np.concatenate(list(animate_blocks(model, audio, template, style, chunk_s, overlap_s, progress)))


def write_npy_blocks(path: str | Path, blocks: Iterable[np.ndarray], n_frames: int) -> Path:
    """Write consecutive (n, V, 3) blocks as one float32 .npy of FaceFormer's shape (n_frames, V*3), block by
    block (nothing held in memory), under a temporary name renamed only when complete."""
    path = Path(path)
    tmp = path.with_name(path.stem + ".partial.npy")
    written = 0
    try:
        with open(tmp, "wb") as f:
            for block in blocks:
                block = np.ascontiguousarray(block, np.float32).reshape(len(block), -1)
                if written == 0:
                    header = {
                        "descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)),
                        "fortran_order": False,
                        "shape": (n_frames, block.shape[1]),
                    }
                    np.lib.format.write_array_header_1_0(f, header)
                f.write(block.tobytes())
                written += len(block)
        if written != n_frames:
            raise ValueError(f"{path}: {written} frames were written, {n_frames} expected")
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)
    return path


class NpyFrames:
    """Frames of a (T, V*3) or (T, V, 3) .npy read a slice at a time: each read maps the file, copies the
    slice and unmaps it, so rendering or exporting a long sequence keeps only that slice in memory."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        arr = np.load(self.path, mmap_mode="r", allow_pickle=False)
        self.shape, self.ndim = arr.shape, arr.ndim
        del arr

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index) -> np.ndarray:
        arr = np.load(self.path, mmap_mode="r", allow_pickle=False)
        out = np.array(arr[index])
        del arr
        return out


def write_obj_sequence(
    folder: str | Path, vertices, faces: np.ndarray, stem: str = "frame", progress: bool = False
) -> Path:
    """One Wavefront .obj per frame, `folder`/<stem>_<frame>.obj (vertices in metres, 1-based faces)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    face_lines = "".join(f"f {a} {b} {c}\n" for a, b, c in (np.asarray(faces, np.int64) + 1))
    digits = max(5, len(str(len(vertices))))
    for t in tqdm(range(len(vertices)), desc="obj", unit="frame", disable=not progress):
        v = np.asarray(vertices[t], np.float32).reshape(-1, 3)
        text = "".join(f"v {x:.6f} {y:.6f} {z:.6f}\n" for x, y, z in v.tolist())
        (folder / f"{stem}_{t:0{digits}d}.obj").write_text(text + face_lines)
    return folder
