"""Reading lips with a trained reader: `read_lips`, the one public entry (the `avguide transcribe` command
calls it).

A reader folder is what the pretrain_expert stage writes as `model/` (the audio-visual expert) and the
pretrain_judge stage as `judge/` (the visual-only judge) under its `out` folder: weights, config.json and
decoding.json, the beam search settings the reader decodes with (avguide.models.expert.Decoding; a folder written
before decoding settings were saved decodes with that class's defaults). `read_lips` decodes with those settings, as
the evaluation does.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from avguide.data.audio import load_wav
from avguide.models.expert import Expert, load_expert
from avguide.params import project_root
from avguide.render.mouth import retime
from avguide.render.video import read_video

MODEL_DIR = "data/models/expert"  # the default reader folders, below the project root


def reader_folder(model_dir: str | Path | None, audio: bool) -> Path:
    """`model_dir` itself when it holds a reader (e.g. `avguide convert autoavsr`'s folder), else `model_dir`/model
    (the AV expert) when reading with `audio` and `model_dir`/judge without; checked."""
    folder = Path(model_dir) if model_dir is not None else project_root() / MODEL_DIR
    if (folder / "config.json").is_file():
        return folder
    sub = folder / ("model" if audio else "judge")
    if not (sub / "config.json").is_file():
        raise FileNotFoundError(
            f"{sub}: no trained {'expert' if audio else 'judge'} here (config.json, "
            f"model.safetensors); run `dvc repro {'pretrain_expert' if audio else 'pretrain_judge@judge'}`, "
            "or pass the folder it wrote"
        )
    return sub


@lru_cache(maxsize=4)
def _load(folder: Path) -> Expert:
    return load_expert(folder)


def as_video(video) -> torch.Tensor:
    """A path to a grey mouth-crop video, or (T, H, W) frames (uint8, or floats in [0, 1]) -> (T, H, W) floats."""
    if isinstance(video, (str, Path)):
        video, _ = read_video(video)
    if torch.is_tensor(video):
        v = video.detach().float()
        return v / 255 if video.dtype == torch.uint8 else v
    arr = np.asarray(video)
    if arr.ndim == 4 and arr.shape[-1] in (1, 3):  # colour or single-channel frames
        arr = arr.mean(-1).astype(arr.dtype)
    if arr.ndim != 3:
        raise ValueError(f"video must be (T, H, W) grey frames or a path to a video; got shape {arr.shape}")
    return torch.from_numpy(arr.astype(np.float32) / (255 if arr.dtype == np.uint8 else 1))


def as_audio(audio) -> torch.Tensor:
    """A path to a speech recording, or 16 kHz samples -> (S,) floats."""
    if isinstance(audio, (str, Path)):
        audio = load_wav(audio)
    return torch.as_tensor(np.asarray(audio, np.float32)).reshape(-1)


def read_lips(video, audio=None, model_dir: str | Path | None = None, fps: float | None = None) -> str:
    """What is said in `video` (a path to a grey mouth-crop video, or (T, H, W) frames, uint8 or in [0, 1]): read
    by the audio-visual expert when `audio` (a speech file or 16 kHz samples) is given, else by the visual-only
    judge; both from `model_dir` (default data/models/expert), decoding with the settings saved with them. The
    frames are resampled in time from `fps` (default: a file's own frame rate; frames given as an array: the
    reader's) to the reader's frame rate."""
    model = _load(reader_folder(model_dir, audio is not None).resolve())
    if isinstance(video, (str, Path)):
        video, file_fps = read_video(video)
        fps = fps or file_fps
    frames = retime(as_video(video), fps or model.cfg.fps, model.cfg.fps)
    v = frames[None].to(model.device) if model.cfg.mode != "audio" else None
    a = as_audio(audio)[None].to(model.device) if audio is not None and model.cfg.mode != "video" else None
    return model.transcribe(v, None, a, None)[0]
