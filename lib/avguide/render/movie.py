"""Human-facing rendering: shaded frames of any vertex sequence, MP4s with the utterance's sound, side-by-side grids."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from avguide.render import MeshRenderer, OrthoCamera, RasterSettings, face_camera
from avguide.render.video import caption_grid, write_video


def render_frames(
    vertices: np.ndarray,
    faces: np.ndarray,
    albedo: np.ndarray | None,
    camera: OrthoCamera,
    batch: int = 32,
    device: str | None = None,
) -> np.ndarray:
    """(T, V, 3) vertices -> (T, H, W) grey frames in 0..1, rendered in batches without gradients."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    v = torch.from_numpy(np.array(vertices, np.float32))
    if v.ndim != 3 or v.shape[-1] != 3 or len(v) == 0:
        raise ValueError(f"vertices must be (T, V, 3) with T > 0; got {tuple(v.shape)}")
    albedo = np.full(v.shape[1], 0.7, np.float32) if albedo is None else np.asarray(albedo, np.float32)
    renderer = MeshRenderer(camera, RasterSettings(camera.image_size))
    f = torch.as_tensor(np.asarray(faces), device=device)
    a = torch.as_tensor(albedo, device=device)
    with torch.no_grad():
        out = [renderer(v[k : k + batch].to(device), f, a).cpu() for k in range(0, len(v), batch)]
    return torch.cat(out).numpy()


def write_face_video(
    path: str | Path,
    sequences: list[np.ndarray],
    template: np.ndarray,
    faces: np.ndarray,
    albedo: np.ndarray | None,
    fps: float,
    audio: np.ndarray | None = None,
    captions: list[str] | None = None,
    size: int = 256,
) -> Path:
    """Full-face MP4 of one or more equally long (T, V, 3) sequences side by side, captioned, with sound."""
    if not sequences:
        raise ValueError("no vertex sequence to render")
    lengths = {len(s) for s in sequences}
    if len(lengths) != 1:
        raise ValueError(f"sequences in one video must have one length; got {sorted(lengths)} frames")
    camera = face_camera(template, size=size)
    videos = [render_frames(s, faces, albedo, camera) for s in sequences]
    frames = caption_grid(videos, captions) if captions else np.concatenate(videos, 2)
    return write_video(path, frames, fps, audio)
