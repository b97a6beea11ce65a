"""The synthetic 2D audio-visual corpus: the stand-in for LRS3 on which the lip-reading expert is pretrained.

Many more identities than the 3D corpus, each with its own voice, face, speaking style and *look*
(skin and lip albedo, light direction), every utterance rendered as a grey mouth-crop video with
variation the 3D renders do not have (small head-pose jitter, blur, sensor noise). Written in the
auto-AVSR preprocessed-LRS3 convention read by `avguide.data.avcorpus.AVCorpus`. Deterministic from the
seed: each identity is made in a fresh process (see avguide.data.synthetic.build_corpus), with MKL's code path
pinned (`MKL_PATH`), so the bytes do not depend on the processor.
"""

from __future__ import annotations

import json
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from avguide.data.audio import SAMPLE_RATE, save_wav
from avguide.data.avcorpus import AV_COLUMNS
from avguide.data.synthetic import (
    StyleRanges,
    SyntheticConfig,
    Variation,
    config_from_dict,
    make_subjects,
    sample_sentences,
    speak_and_move,
)
from avguide.face.rig import Rig
from avguide.face.template import PARTS, build_face
from avguide.render import RasterSettings, ShaderSettings, mouth_camera, render_mouth
from avguide.render.filters import gaussian_blur
from avguide.render.video import write_videos

RENDER_CHUNK = 8  # frames per renderer call
GROUP = 5  # identities made in one process: amortises start-up; fixed, so the corpus does not depend on workers
# torch's exp, sqrt, log, tanh and erf on the CPU are MKL's vector maths, whose code path MKL picks by processor
# (vendor and instruction set), each rounding some results differently: a few pixels, and so a few videos, came
# out differently on different processors. The workers run MKL's one path for every processor (its conditional
# numerical reproducibility); see docs/decisions.md.
MKL_PATH = {"MKL_CBWR": "COMPATIBLE"}


@dataclass
class Look:
    """Ranges of the rendering variation, drawn per identity (albedo, light) or per frame (pose, noise)."""

    skin_albedo: tuple[float, float] = (0.55, 0.95)
    lip_contrast: tuple[float, float] = (0.55, 0.85)  # lip albedo / skin albedo
    light_azimuth_deg: float = 35.0  # max |left-right| light angle
    light_elevation_deg: tuple[float, float] = (5.0, 45.0)
    pose_jitter_deg: float = 2.5  # sd of the slow head rotation (yaw, pitch, roll)
    shift_px: float = 1.5  # sd of the slow crop shift
    blur_sigma_px: tuple[float, float] = (0.0, 1.0)
    noise_sd: tuple[float, float] = (0.0, 0.03)
    source_px: tuple[int, int] = (56, 88)  # the crop is rendered at this many pixels, then resized (camera resolution)


@dataclass
class Synthetic2DConfig:
    seed: int = 0
    identities: dict[str, int] = field(default_factory=lambda: {"train": 84, "val": 8, "test": 8})
    sentences_per_identity: int = 30
    fps: float = 25.0
    image_size: int = 88
    variation: Variation = field(default_factory=Variation)
    style: StyleRanges = field(default_factory=StyleRanges)
    look: Look = field(default_factory=Look)

    @classmethod
    def from_dict(cls, d: dict) -> Synthetic2DConfig:
        return config_from_dict(cls, d)

    def speech_config(self) -> SyntheticConfig:
        """The 3D corpus machinery, on another random stream so the identities differ from the 3D subjects."""
        return SyntheticConfig(
            seed=self.seed + 1_000_003,
            subjects=self.identities,
            sentences_per_subject=self.sentences_per_identity,
            fps=self.fps,
            variation=self.variation,
            style=self.style,
        )


def _smooth_noise(rng: np.random.Generator, n: int, dims: int, sd: float, frames_per_knot: int = 12) -> np.ndarray:
    """(n, dims) slowly varying noise: normal knots every `frames_per_knot` frames, linearly interpolated."""
    knots = rng.normal(0, sd, (n // frames_per_knot + 2, dims))
    t = np.arange(n) / frames_per_knot
    return np.stack([np.interp(t, np.arange(len(knots)), knots[:, d]) for d in range(dims)], 1)


def jitter_pose(vertices: np.ndarray, rng: np.random.Generator, sd_deg: float) -> np.ndarray:
    """Rotate each frame by a slowly varying small head rotation about a point inside the head."""
    angles = np.deg2rad(_smooth_noise(rng, len(vertices), 3, sd_deg))
    out = np.empty_like(vertices)
    centre = np.array([0.0, 0.02, -0.06], np.float32)
    for k, (yaw, pitch, roll) in enumerate(angles):
        cy, sy, cp, sp, cr, sr = np.cos(yaw), np.sin(yaw), np.cos(pitch), np.sin(pitch), np.cos(roll), np.sin(roll)
        rot = (
            np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
            @ np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])
            @ np.array([[cr, -sr, 0], [sr, cr, 0], [0, 0, 1]])
        )
        out[k] = (vertices[k] - centre) @ rot.T.astype(np.float32) + centre
    return out


def degrade(
    images: torch.Tensor, rng: np.random.Generator, blur_sigma: float, noise_sd: float, shift: np.ndarray
) -> np.ndarray:
    """Sub-pixel shift, Gaussian blur and sensor noise on (T, H, W) images in 0..1; returns uint8."""
    t, h, w = images.shape
    theta = torch.zeros(t, 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0
    theta[:, 0, 2] = torch.as_tensor(2 * shift[:, 0] / w, dtype=torch.float32)
    theta[:, 1, 2] = torch.as_tensor(2 * shift[:, 1] / h, dtype=torch.float32)
    grid = torch.nn.functional.affine_grid(theta, (t, 1, h, w), align_corners=False)
    x = torch.nn.functional.grid_sample(images[:, None], grid, padding_mode="border", align_corners=False)[:, 0]
    if blur_sigma > 0.05:
        x = gaussian_blur(x, blur_sigma)
    x = x.numpy() + rng.normal(0, noise_sd, (t, h, w))
    return (np.clip(x, 0, 1) * 255 + 0.5).astype(np.uint8)


def _identity_look(cfg: Synthetic2DConfig, k: int) -> dict:
    rng = np.random.default_rng([cfg.seed, 21, k])
    lk = cfg.look
    az = np.deg2rad(rng.uniform(-lk.light_azimuth_deg, lk.light_azimuth_deg))
    el = np.deg2rad(rng.uniform(*lk.light_elevation_deg))
    return dict(
        skin_albedo=float(rng.uniform(*lk.skin_albedo)),
        lip_contrast=float(rng.uniform(*lk.lip_contrast)),
        light_direction=(float(np.sin(az) * np.cos(el)), float(np.sin(el)), float(np.cos(az) * np.cos(el))),
        blur_sigma_px=float(rng.uniform(*lk.blur_sigma_px)),
        noise_sd=float(rng.uniform(*lk.noise_sd)),
        source_px=int(rng.integers(lk.source_px[0], lk.source_px[1] + 1)),
    )


def _write_identity(out: Path, cfg: Synthetic2DConfig, k: int) -> list[dict]:
    """All utterances of identity k: runs in a fresh process."""
    torch.set_num_threads(1)
    speech_cfg = cfg.speech_config()
    ident = make_subjects(speech_cfg, prefix="id")[k]
    look = _identity_look(cfg, k)
    mesh = build_face(ident.shape)
    rig = Rig(mesh, asymmetry=ident.asymmetry)
    albedo = mesh.albedo * look["skin_albedo"] / 0.78
    lips = mesh.part == PARTS["lip"]
    albedo[lips] = look["skin_albedo"] * look["lip_contrast"]
    painted = SimpleNamespace(faces=mesh.faces, albedo=np.clip(albedo, 0, 1).astype(np.float32))
    camera = mouth_camera(mesh.vertices, mesh.lip_ids, size=look["source_px"])
    shader = replace(ShaderSettings(), light_direction=look["light_direction"])
    raster = RasterSettings(image_size=look["source_px"])
    rows, clips = [], []
    sentences = sample_sentences(cfg.sentences_per_identity, np.random.default_rng([cfg.seed, 22, k]))
    for u, text in enumerate(sentences):
        utt = f"{ident.name}_{u + 1:05d}"
        rng = np.random.default_rng([cfg.seed, 23, k, u])
        audio, verts, _, _ = speak_and_move(text, ident, rig, speech_cfg, rng, where=f"utterance {utt} ({text!r})")
        verts = jitter_pose(verts, rng, cfg.look.pose_jitter_deg)
        with torch.no_grad():  # in chunks: small tensors are recycled by the allocator instead of page-faulted anew
            v = torch.from_numpy(verts)
            images = torch.cat(
                [
                    render_mouth(v[k : k + RENDER_CHUNK], painted, camera, raster, shader)
                    for k in range(0, len(v), RENDER_CHUNK)
                ]
            )
            if look["source_px"] != cfg.image_size:
                images = torch.nn.functional.interpolate(
                    images[:, None], size=(cfg.image_size,) * 2, mode="bilinear", align_corners=False, antialias=True
                )[:, 0]
        frames = degrade(
            images, rng, look["blur_sigma_px"], look["noise_sd"], _smooth_noise(rng, len(verts), 2, cfg.look.shift_px)
        )
        rel = f"{ident.name}/{utt}"
        clips.append(frames)
        for sub in ("wav", "text"):
            (out / sub / ident.name).mkdir(parents=True, exist_ok=True)
        save_wav(out / "wav" / f"{rel}.wav", audio)
        (out / "text" / f"{rel}.txt").write_text(text + "\n")
        rows.append(
            dict(
                utterance=utt,
                speaker=ident.name,
                split=ident.split,
                text=text,
                n_frames=len(frames),
                fps=cfg.fps,
                video=f"video/{rel}.mp4",
                wav=f"wav/{rel}.wav",
                duration_s=round(len(audio) / SAMPLE_RATE, 4),
            )
        )
    write_videos([out / r["video"] for r in rows], clips, cfg.fps)
    return rows


def _write_group(out: Path, cfg: Synthetic2DConfig, identities: range) -> list[dict]:
    """A fixed group of identities, in order, in one fresh process.

    The group, not the worker count, fixes the bytes."""
    return [row for k in identities for row in _write_identity(out, cfg, k)]


@contextmanager
def _environment(values: dict):
    """`values` in os.environ inside the block (processes started there inherit them), restored after."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def build_av_corpus(
    out_dir: str | Path, cfg: Synthetic2DConfig, progress: bool = True, workers: int | None = None
) -> Path:
    """Write the synthetic 2D audio-visual corpus (see the module docstring)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    n = sum(cfg.identities.values())
    groups = [range(k, min(k + GROUP, n)) for k in range(0, n, GROUP)]
    workers = workers or min(len(groups), os.cpu_count() or 1, 2)
    ctx = multiprocessing.get_context("spawn")
    # MKL reads MKL_PATH when a worker starts, and the pool starts workers until it closes
    with _environment(MKL_PATH), ProcessPoolExecutor(workers, mp_context=ctx, max_tasks_per_child=1) as pool:
        jobs = [pool.submit(_write_group, out, cfg, g) for g in groups]
        for _ in tqdm(
            as_completed(jobs), total=len(jobs), desc=f"synth2d groups of {GROUP} identities", disable=not progress
        ):
            pass
        rows = [r for job in jobs for r in job.result()]
    m = pd.DataFrame(rows)
    m[AV_COLUMNS + ["duration_s"]].to_csv(out / "manifest.csv", index=False, lineterminator="\n")
    identities = make_subjects(cfg.speech_config(), prefix="id")
    meta = {
        "config": asdict(cfg),
        "identities": [dict(asdict(s), look=_identity_look(cfg, k)) for k, s in enumerate(identities)],
    }
    (out / "identities.json").write_text(json.dumps(meta, indent=1, default=list) + "\n")
    return out
