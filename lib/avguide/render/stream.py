"""Renders of any length with bounded memory: frames are rendered a batch at a time and piped to ffmpeg.

`avguide.render.movie.write_face_video` holds every frame in memory, which suits a few seconds of
side-by-side comparison; a ten-minute recording at 25 fps is 15,000 frames (about 4 GB of float
frames at 256x256), so the command line streams instead. Same encoder settings as
`avguide.render.video` (H.264, yuv420p, bit-exact, AAC sound).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import torch
from tqdm.auto import tqdm

from avguide.data.audio import SAMPLE_RATE, save_wav
from avguide.render import MeshRenderer, OrthoCamera, RasterSettings
from avguide.render.video import VideoError


def stream_video(
    path: str | Path,
    vertices,
    faces: np.ndarray,
    albedo: np.ndarray | None,
    camera: OrthoCamera,
    fps: float,
    audio: np.ndarray | None = None,
    batch: int = 32,
    crf: int = 18,
    progress: bool = False,
) -> Path:
    """Render (T, V, 3) vertices (anything sliceable: an array, avguide.inference.NpyFrames; (T, V*3) is
    accepted) through `camera` and write them as an MP4, with `audio` (16 kHz mono) muxed in if given.
    Memory: one batch of frames."""
    path = Path(path)
    n_frames = len(vertices)
    if n_frames == 0:
        raise VideoError(f"{path}: no frames to render")
    height, width = camera.image_size
    if height % 2 or width % 2:
        raise VideoError(f"{path}: H.264 needs even frame sizes; got {width}x{height}")
    faces_t = torch.as_tensor(np.asarray(faces), dtype=torch.long)
    n_vertices = int(np.asarray(vertices[:1]).reshape(1, -1, 3).shape[1])
    albedo = np.full(n_vertices, 0.7, np.float32) if albedo is None else np.asarray(albedo, np.float32)
    albedo_t = torch.as_tensor(albedo)
    renderer = MeshRenderer(camera, RasterSettings(camera.image_size))
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        audio_path = None
        if audio is not None:
            audio_path = str(Path(tmp) / "audio.wav")
            save_wav(audio_path, audio, SAMPLE_RATE)
        writer = imageio_ffmpeg.write_frames(
            str(path),
            (width, height),
            pix_fmt_in="gray",
            pix_fmt_out="yuv420p",
            fps=fps,
            codec="libx264",
            macro_block_size=1,
            ffmpeg_log_level="error",
            output_params=[
                "-crf",
                str(crf),
                "-preset",
                "veryfast",
                "-threads",
                "1",
                "-map_metadata",
                "-1",
                "-fflags",
                "+bitexact",
                "-flags:v",
                "+bitexact",
                "-flags:a",
                "+bitexact",
            ],
            audio_path=audio_path,
            audio_codec="aac" if audio_path else None,
        )
        writer.send(None)
        try:
            with tqdm(total=n_frames, desc=f"render {path.name}", unit="frame", disable=not progress) as bar:
                for start in range(0, n_frames, batch):
                    v = np.array(vertices[start : start + batch], np.float32).reshape(
                        -1, n_vertices, 3
                    )  # writable copy
                    if not np.isfinite(v).all():
                        raise VideoError(
                            f"{path}: vertices of frames {start}..{start + len(v) - 1} contain NaN or infinite values"
                        )
                    with torch.no_grad():
                        frames = renderer(torch.from_numpy(v), faces_t, albedo_t).numpy()
                    for frame in (np.clip(frames, 0.0, 1.0) * 255 + 0.5).astype(np.uint8):
                        writer.send(np.ascontiguousarray(frame))
                    bar.update(len(v))
        except BaseException:
            writer.close()
            path.unlink(missing_ok=True)  # no half-written video left behind
            raise
        writer.close()
    return path
