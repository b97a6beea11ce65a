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

Any mesh of the animator's vertex count can be animated (`load_user_mesh`): a FLAME template for a VOCASET
model, BIWI's for a BIWI model, as a (V, 3) .npy or a .ply / .obj mesh, with its faces (to render it) and the
lip region's vertex ids (to frame the mouth camera) from files the user names. `pick_style` finds the style
(the training subject) by the name a model's config lists, or by index.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from avguide.data.audio import SAMPLE_RATE
from avguide.data.readers import read_faces, read_mesh, read_vertex_ids

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


MESH_SUFFIXES = (".ply", ".obj")


@dataclass
class UserMesh:
    """A template mesh the user names: (V, 3) vertices, its triangles and lip region when known, and the
    files they came from (for messages)."""

    template: np.ndarray  # (V, 3) float32
    faces: np.ndarray | None  # (F, 3) int64
    lip_ids: np.ndarray | None  # sorted vertex ids
    path: Path  # the template's file
    faces_path: Path | None  # the file the faces came from (the template's own, or --faces)
    lips_path: Path | None

    @property
    def n_vertices(self) -> int:
        return len(self.template)


def read_template(path: str | Path) -> tuple[np.ndarray, np.ndarray | None]:
    """(V, 3) float32 vertices of a template file, and its triangles when it is a mesh file that has them: a .npy
    of shape (V, 3) (or V*3 values, FaceFormer's flattened frame), or a .ply / .obj mesh."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: template file not found")
    suffix = path.suffix.lower()
    if suffix in MESH_SUFFIXES:
        return read_mesh(path)
    if suffix != ".npy":
        raise InputError(f"{path}: unknown template format {suffix!r}; expected a (V, 3) .npy, a .ply or an .obj")
    try:
        arr = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as e:
        raise InputError(f"{path}: not a readable .npy array ({e})") from None
    flat = arr.ndim == 1 or (arr.ndim == 2 and arr.shape[0] == 1)  # one FaceFormer frame, V*3 values
    if not np.issubdtype(arr.dtype, np.floating) or not ((arr.ndim == 2 and arr.shape[1] == 3) or flat) or arr.size % 3:
        raise InputError(f"{path}: expected a (V, 3) float template (or V*3 values), found {arr.dtype} {arr.shape}")
    arr = arr.reshape(-1, 3).astype(np.float32)
    if not len(arr) or not np.isfinite(arr).all():
        raise InputError(f"{path}: the template is empty or holds NaN or infinite values")
    return arr, None


def load_user_mesh(template: str | Path, faces: str | Path | None = None, lips: str | Path | None = None) -> UserMesh:
    """The template (`read_template`), its faces (from `faces`, a .ply / .obj / (F, 3) .npy, else the template's
    own mesh file) and lip ids (`lips`: a text file or .npy of vertex ids), each checked against the template's
    vertex count. Faces and lips stay None when not given: the caller says which it needs."""
    path = Path(template)
    vertices, own_faces = read_template(path)
    faces_path = Path(faces) if faces is not None else (path if own_faces is not None else None)
    tris = read_faces(faces_path) if faces is not None else own_faces
    if tris is not None and tris.max() >= len(vertices):
        raise InputError(
            f"{faces_path}: faces index vertex {tris.max()}, but the template {path} has {len(vertices)} vertices"
        )
    lips_path = Path(lips) if lips is not None else None
    lip_ids = read_vertex_ids(lips_path, len(vertices)) if lips_path is not None else None
    return UserMesh(vertices, tris, lip_ids, path, faces_path, lips_path)


def pick_style(name: str | None, n_subjects: int, subjects=None, where: str | Path = "the model") -> tuple[str, int]:
    """(label, index) of a training style: `name` among the model's `subjects` (its config's names of the styles in
    one-hot order, when it has them), or an index 0..n_subjects-1; None picks the first."""
    names = [str(s) for s in subjects] if subjects else None
    if names is not None and len(names) != n_subjects:
        raise InputError(f"{where}: names {len(names)} subjects but has {n_subjects} styles (n_subjects)")
    if name is None:
        return (names[0] if names else "style 0"), 0
    if names and name in names:
        return name, names.index(name)
    if name.strip().isdigit() and int(name) < n_subjects:
        k = int(name)
        return (names[k] if names else f"style {k}"), k
    if names:
        raise InputError(
            f"unknown subject {name!r}; the model in {where} has the styles: {', '.join(names)} "
            f"(or pass an index 0..{n_subjects - 1})"
        )
    raise InputError(
        f"unknown subject {name!r}: the model in {where} does not name its styles (no 'subjects' in its "
        f"config.json); pass a style index 0..{n_subjects - 1}"
    )


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
