"""MP4 video in and out through the ffmpeg binary that imageio-ffmpeg ships, with the sound muxed in."""

from __future__ import annotations

import tempfile
from pathlib import Path

import imageio_ffmpeg
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from avguide.data.audio import SAMPLE_RATE, save_wav


class VideoError(ValueError):
    """A video file is missing, unreadable, or frames are not what a video needs."""


def _to_uint8(frames: np.ndarray) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.dtype != np.uint8:
        if not np.isfinite(frames).all():
            raise VideoError("frames contain NaN or infinite values")
        frames = (np.clip(frames, 0.0, 1.0) * 255 + 0.5).astype(np.uint8)
    return frames


def _check_frames(path: Path, frames: np.ndarray) -> np.ndarray:
    frames = _to_uint8(frames)
    if frames.ndim not in (3, 4) or len(frames) == 0 or (frames.ndim == 4 and frames.shape[3] != 3):
        raise VideoError(f"{path}: expected (T, H, W) or (T, H, W, 3) frames with T > 0; got {frames.shape}")
    if frames.shape[1] % 2 or frames.shape[2] % 2:
        raise VideoError(f"{path}: H.264 needs even frame sizes; got {frames.shape[2]}x{frames.shape[1]}")
    return frames


def _encode(
    target: str, frames: np.ndarray, fps: float, crf: int, audio_path: str | None = None, extra: list[str] = ()
) -> None:
    """Run ffmpeg once: H.264 (yuv420p, bit-exact, no metadata) from raw frames piped in."""
    height, width = frames.shape[1:3]
    writer = imageio_ffmpeg.write_frames(
        target,
        (width, height),
        pix_fmt_in="gray" if frames.ndim == 3 else "rgb24",
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
            *extra,
        ],
        audio_path=audio_path,
        audio_codec="aac" if audio_path else None,
    )
    writer.send(None)
    for frame in frames:
        writer.send(np.ascontiguousarray(frame))
    writer.close()


def write_video(
    path: str | Path,
    frames: np.ndarray,
    fps: float,
    audio: np.ndarray | None = None,
    sample_rate: int = SAMPLE_RATE,
    crf: int = 18,
) -> Path:
    """Write (T, H, W) grey or (T, H, W, 3) RGB frames (uint8, or float in 0..1) as H.264 MP4, with audio if given."""
    path = Path(path)
    frames = _check_frames(path, frames)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        audio_path = None
        if audio is not None:
            audio_path = str(Path(tmp) / "audio.wav")
            save_wav(audio_path, audio, sample_rate)
        _encode(str(path), frames, fps, crf, audio_path)
    return path


def write_videos(paths: list[str | Path], videos: list[np.ndarray], fps: float, crf: int = 18) -> list[Path]:
    """Write many silent videos of one frame size with one ffmpeg process: one stream with a keyframe at
    each video's first frame, cut into one MP4 per video there (starting ffmpeg once per clip costs more
    than encoding a clip)."""
    paths = [Path(p) for p in paths]
    if len(paths) != len(videos) or not paths:
        raise VideoError(f"need one path per video; got {len(paths)} paths, {len(videos)} videos")
    videos = [_check_frames(p, v) for p, v in zip(paths, videos)]
    if len({v.shape[1:] for v in videos}) != 1:
        raise VideoError(f"{paths[0].parent}: videos written together must share a frame size")
    bounds = np.cumsum([len(v) for v in videos])[:-1].tolist()
    extra = [
        "-force_key_frames",
        "expr:" + "+".join(f"eq(n,{b})" for b in [0, *bounds]),
        "-f",
        "segment",
        "-segment_format",
        "mp4",
        "-reset_timestamps",
        "1",
    ]
    if bounds:
        extra += ["-segment_frames", ",".join(map(str, bounds))]
    paths[0].parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=paths[0].parent) as tmp:  # same file system: the moves are renames
        _encode(str(Path(tmp) / "%06d.mp4"), np.concatenate(videos), fps, crf, extra=extra)
        parts = sorted(Path(tmp).glob("*.mp4"))
        if len(parts) != len(paths):
            raise VideoError(f"{paths[0].parent}: ffmpeg wrote {len(parts)} segments for {len(paths)} videos")
        for part, path in zip(parts, paths):
            path.parent.mkdir(parents=True, exist_ok=True)
            part.replace(path)
    return paths


def read_video(path: str | Path) -> tuple[np.ndarray, float]:
    """(T, H, W) uint8 grey frames and the frame rate of a video file."""
    path = Path(path)
    if not path.is_file():
        raise VideoError(f"{path}: video file not found")
    try:
        reader = imageio_ffmpeg.read_frames(str(path), pix_fmt="gray", bpp=1)
        meta = next(reader)
        width, height = meta["size"]
        frames = [np.frombuffer(buf, np.uint8).reshape(height, width) for buf in reader]
    except (RuntimeError, OSError, StopIteration) as e:
        raise VideoError(f"{path}: not a readable video ({e})") from None
    if not frames:
        raise VideoError(f"{path}: video holds no frames")
    return np.stack(frames), float(meta["fps"])


def caption_grid(videos: list[np.ndarray], captions: list[str], caption_height: int = 22) -> np.ndarray:
    """Side-by-side grid of equally long (T, H, W) videos (uint8 or 0..1) with a caption above each."""
    if not videos or len(videos) != len(captions):
        raise VideoError(f"need one caption per video; got {len(videos)} videos, {len(captions)} captions")
    videos = [_to_uint8(v) for v in videos]
    shapes = {v.shape for v in videos}
    if len(shapes) != 1:
        raise VideoError(f"videos in a grid must have one shape; got {sorted(shapes)}")
    t, h, w = videos[0].shape
    font = ImageFont.load_default()
    heads = []
    for text in captions:
        img = Image.new("L", (w, caption_height), 0)
        ImageDraw.Draw(img).text((4, 4), text, fill=255, font=font)
        heads.append(np.asarray(img))
    head = np.concatenate(heads, 1)
    body = np.concatenate(videos, 2)
    return np.concatenate([np.broadcast_to(head, (t, *head.shape)), body], 1)
