"""`avguide animate` on the real datasets' meshes: seconds to animate `--seconds` of speech (a synthetic waveform) on
a FLAME-size mesh (VOCASET, 5,023 vertices) and a BIWI-size one (23,370), with FaceFormers of the paper's shapes and
random weights: wav2vec2-base (transformers' Wav2Vec2Config() defaults: 12 layers of 768), one decoder layer of 4
heads, feature_dim 64 and period 30 at 30 fps (VOCASET), 128 and 25 at 25 fps (BIWI), 8 and 6 styles, the public
code's audio alignment of that dataset where the model has it (converted checkpoints do).

Each mesh is a dome with a mouth hole, a grid of about a real mesh's number of triangles (9,500 against FLAME's
9,976; 45,408 for BIWI's vertex count), written as a binary PLY; the lip region is the ring around the hole. Every
run is the whole command in this process (`avguide.cli.main`, after imports; what it prints is swallowed): load the
checkpoint, read the template, animate, write the .npy; `vertices_s` with `--no-video`, `mouth_video_s` also
rendering and encoding the 88 px mouth crop (the expert's view) with the sound. Medians of `--repeats` after one
short warm-up run per mesh; `load_s` is the checkpoint load alone (part of both).

Prints one JSON line: per dataset the times, `realtime_factor` (mouth video seconds per second of speech) and
the sizes; and the settings (threads, device, repeats, torch version, the machine's load average at the start).
Usage: python benchmarks/animate_topology.py [--seconds 10] [--repeats 3] [--threads 1] [--datasets vocaset biwi]
"""

import argparse
import contextlib
import io
import json
import os
import statistics
import tempfile
import time
from dataclasses import fields
from pathlib import Path

import numpy as np
import torch
from transformers import Wav2Vec2Config

from avguide.cli import main as avguide
from avguide.data.audio import SAMPLE_RATE, save_wav
from avguide.models.checkpoint import save_checkpoint
from avguide.models.faceformer import FaceFormer, FaceFormerConfig
from avguide.models.registry import load_animator

# the paper's FaceFormer per dataset, and a grid of about the real mesh's triangles (rows x cols + extra vertices)
SHAPES = {
    "vocaset": dict(n_vertices=5023, n_subjects=8, fps=30.0, feature_dim=64, period=30, grid=(70, 71)),
    "biwi": dict(n_vertices=23370, n_subjects=6, fps=25.0, feature_dim=128, period=25, grid=(114, 205)),
}


def head(n_vertices: int, rows: int, cols: int):
    """Vertices (n_vertices, 3) of a dome facing +z (about a face's size, metres) with a mouth hole, its triangles
    (counter-clockwise seen from +z) and the lip ids (the ring around the hole); extra vertices sit behind it."""
    ys, xs = np.mgrid[0:rows, 0:cols]
    x, y = (xs / (cols - 1) - 0.5) * 0.16, (0.5 - ys / (rows - 1)) * 0.22
    grid = np.stack([x, y, 0.08 - 2.5 * (x**2 + y**2)], -1).reshape(-1, 3)
    extra = np.random.default_rng(0).uniform([-0.05, -0.05, -0.1], [0.05, 0.05, -0.05], (n_vertices - len(grid), 3))
    r0, r1 = int(rows * 0.68), int(rows * 0.72) + 1  # the mouth: rows and columns of quads left open
    c0, c1 = int(cols * 0.36), int(cols * 0.64)
    r, c = np.mgrid[0 : rows - 1, 0 : cols - 1]
    keep = ~((r >= r0) & (r < r1) & (c >= c0) & (c < c1))
    a = (r * cols + c)[keep]
    faces = np.concatenate([np.stack([a, a + cols, a + 1], -1), np.stack([a + 1, a + cols, a + cols + 1], -1)])
    rr, cc = np.mgrid[r0 - 3 : r1 + 4, c0 - 3 : c1 + 4]
    return np.concatenate([grid, extra]).astype(np.float32), faces, (rr * cols + cc).ravel()


def write_ply(path: Path, vertices: np.ndarray, faces: np.ndarray) -> Path:
    header = (
        f"ply\nformat binary_little_endian 1.0\nelement vertex {len(vertices)}\nproperty float x\nproperty float y\n"
        f"property float z\nelement face {len(faces)}\nproperty list uchar int vertex_indices\nend_header\n"
    )
    rows = np.zeros(len(faces), [("n", "u1"), ("ids", "<i4", 3)])
    rows["n"], rows["ids"] = 3, faces
    path.write_bytes(header.encode() + vertices.astype("<f4").tobytes() + rows.tobytes())
    return path


def speechlike(seconds: float) -> np.ndarray:
    """Voiced harmonics under a syllable-rate envelope, with noise: loud enough to count as speech."""
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    f0 = 120 + 20 * np.sin(2 * np.pi * 0.5 * t)
    voice = sum(np.sin(2 * np.pi * k * np.cumsum(f0) / SAMPLE_RATE) / k for k in range(1, 8))
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 4 * t)
    noise = 0.02 * np.random.default_rng(0).standard_normal(len(t))
    return (0.1 * voice * envelope + noise).astype(np.float32)


def model_folder(folder: Path, dataset: str) -> tuple[Path, dict]:
    shape = {k: v for k, v in SHAPES[dataset].items() if k != "grid"}
    known = {f.name for f in fields(FaceFormerConfig)}
    extra = {"audio_align": dataset} if "audio_align" in known else {}
    audio = {"hidden_size": Wav2Vec2Config().hidden_size}  # transformers' defaults: wav2vec2-base's shape
    torch.manual_seed(0)
    model = FaceFormer(FaceFormerConfig(**shape, n_heads=4, n_layers=1, audio=audio, **extra))
    torch.nn.init.normal_(model.motion_out.weight, std=0.01)  # so the face moves
    encoder = sum(p.numel() for p in model.audio_encoder.parameters())
    info = {
        "encoder_params_m": round(encoder / 1e6, 1),
        "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 1),
    }
    return save_checkpoint(model, folder), {**info, **{k: shape[k] for k in ("feature_dim", "period", "fps")}, **extra}


def timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def bench(dataset: str, tmp: Path, seconds: float, repeats: int, threads: int) -> dict:
    folder, info = model_folder(tmp / f"{dataset}_model", dataset)
    rows, cols = SHAPES[dataset]["grid"]
    vertices, faces, lips = head(SHAPES[dataset]["n_vertices"], rows, cols)
    template = write_ply(tmp / f"{dataset}.ply", vertices, faces)
    np.savetxt(tmp / f"{dataset}_lve.txt", lips, fmt="%d")
    wav, short = tmp / "speech.wav", tmp / "warmup.wav"
    save_wav(wav, speechlike(seconds))
    save_wav(short, speechlike(1.0))
    base = ["--model", folder, "--template", template, "--lips", tmp / f"{dataset}_lve.txt", "--out", tmp / "out"]
    base = [str(a) for a in [*base, "--threads", str(threads), "-q"]]

    def run(audio, *extra):
        with contextlib.redirect_stdout(io.StringIO()):  # the paths it writes: one JSON line is this script's output
            code = avguide(["animate", str(audio), *base, *extra])
        if code:
            raise SystemExit(f"avguide animate failed on {dataset} (exit {code})")

    run(short, "--mouth")  # warm-up
    out = {
        "vertices_s": timed(lambda: run(wav, "--no-video"), repeats),
        "mouth_video_s": timed(lambda: run(wav, "--mouth"), repeats),
        "load_s": timed(lambda: load_animator(folder), repeats),
    }
    frames = np.load(tmp / "out" / "speech.npy", mmap_mode="r").shape[0]
    out = {k: round(v, 2) for k, v in out.items()}
    out["realtime_factor"] = round(out["mouth_video_s"] / seconds, 3)
    return {**out, "frames": frames, "vertices": len(vertices), "faces": len(faces), "lip_vertices": len(lips), **info}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--datasets", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    load = os.getloadavg()[0]
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for dataset in args.datasets:
            out[dataset] = bench(dataset, Path(tmp), args.seconds, args.repeats, args.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    settings = {"seconds": args.seconds, "repeats": args.repeats, "threads": torch.get_num_threads(), "device": device}
    print(json.dumps({**out, **settings, "torch": torch.__version__, "load_avg_1min": round(load, 2)}))


if __name__ == "__main__":
    main()
