"""The CUDA path, measured: the mouth renderer and a guided training step of the paper-size FaceFormer on a CUDA
device, and the same step on the CPU from the same weights, compared. Prints one JSON line.

Everything is made here, so the check runs in a plain CUDA Python environment (torch, torchaudio, transformers,
safetensors) with PYTHONPATH=lib, without the corpora, the pipeline's models or its report tools:

  meshes    a FLAME-size (5,023 vertices) and a BIWI-size (23,370) face-like surface: a domed grid with lips
            (darker, bulging, a dark slit between them, their vertex ids known) and three smooth mouth motions
            (open, round, spread)
  audio     a seeded synthetic waveform (voiced pulses under a syllable-rate envelope), 16 kHz
  animator  FaceFormer of the paper's VOCASET size: feature_dim 64, period 30, 30 fps, 5,023 vertices, a random
            wav2vec2-base-size encoder (Wav2Vec2Config's defaults); its output layer set to small mixtures of the
            mouth motions, so the predicted faces stay faces and every layer gets a gradient
  reader    the AV expert (avguide.models.expert) of its default size (params.yaml pretrain_expert.model), random

The guided step is the paper's setting (params.yaml guide.weights.avguide, λ fixed instead of calibrated):
avguide.losses.animator_loss = L_mse + L_rlv + λ·(0.1·CTC + 0.9·CE) of the reader on the 88 px mouth renders
(MouthView) of the predicted vertices, backward, one Adam step over the animator (lr 1e-4) and the jointly trained
reader (3e-5), on a batch of two clips (3 and 2.5 s: 90 and 75 frames at 30 fps). Every dropout, SpecAugment and the
speech masking are off, so the step is a function of the weights and the batch alone and the CPU and the CUDA
device can be compared.

  render.<mesh>   forward + backward (squared-image loss) of `--frames` posed frames at 88 px: median ms over
                  `--repeats`, frames/s, peak device memory
  step            the guided step: median ms over `--steps` (after warm-up steps), steps/s, animation frames/s,
                  peak device memory
  compare         one step from the same initial weights on the CPU and on the device in fp32 (TF32 off for it),
                  and on the CPU in fp64 (the reference): for each loss value, the gradient and the Adam update
                  (animator and reader, each one vector), the relative difference CPU against device (`rel_diff`)
                  and each one's distance from the fp64 step (`cpu_error`, `device_error`); a check passes when
                  device_error <= FACTOR·cpu_error + FLOOR (see there), and `pass` is all of them. With
                  `--device cpu` the CPU is compared with itself (a determinism check: every rel_diff is 0).

It exits 1 when a check fails. Without CUDA, `--device cuda` (the default) prints {"cuda": false, ...} and exits 0.
`--quick` runs the same at a small size (the small wav2vec 2.0 of SMALL_WAV2VEC2, clips of 0.6 and 0.5 s, renders of
8 frames, 2 steps), for machines without a GPU and the tests.

Usage: python benchmarks/gpu.py [--device cuda|cpu] [--quick] [--steps N] [--repeats N] [--frames N] [--seed S]
"""

import argparse
import copy
import json
import math
import platform
import resource
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

FLAME_VERTICES, BIWI_VERTICES = 5023, 23370
SIZE = 88  # mouth crops, pixels
FPS, SAMPLE_RATE = 30, 16000
LAMBDA = 1e-3  # λ of the reader term (training calibrates it; the cost and the comparison do not depend on it)
ANIMATOR_LR, READER_LR = 1e-4, 3e-5  # the paper's lr; params.yaml guide.expert_lr_joint
TEXT = ["she had your dark suit", "in greasy wash water"]

# The tolerance of the CPU-against-device comparison, relative to the step's own fp32 rounding. How far two fp32
# runs of this step may differ depends on its conditioning, not only on fp32's unit roundoff (6e-8). On the CPU, fp32
# against fp64: the losses differ by ~1e-7, the animator's gradient by 6e-6 at the quick size, 8e-4 at the paper size,
# 3e-3 with shorter clips (1.2 and 1 s; the random reader's gradient with respect to its input is then ill-conditioned:
# 8e-3 for the two clips, 1e-5 for the first alone); Adam's first update, about lr·sign(gradient), flips where a
# gradient is rounding noise. A fixed tolerance would be too loose for one size or fail the other. So the device's
# fp32 step must be as close to the fp64 step as the CPU's fp32 step is, within FACTOR: room for kernels less exact
# than the CPU's (other summation orders, fused multiply-adds, atomic adds in the renderer's backward, cuDNN's
# algorithms), while a fault (a wrong kernel, a term lost on one device, a missed synchronisation) errs by order 1.
# FLOOR keeps a step that the CPU computes almost exactly from asking the device for less than rounding.
FACTOR, FLOOR = 10.0, 1e-5
FORBIDDEN = ("dvclive", "jiwer", "papermill", "espeakng_loader", "phonemizer", "avguide.report", "avguide.training")


# ---------------------------------------------------------------- the inputs, made here


def face_mesh(n_vertices: int) -> SimpleNamespace:
    """A face-like surface of exactly `n_vertices`: a grid (16 x 20 cm, rows top to bottom) on a dome, the last row
    cut short to the count, lips around a mouth line 4 cm below the centre (ids, darker albedo, a bulge) and
    `motions` (3, V, 3): open (jaw and lower lip down, upper lip up, the slit pushed in), round (lips forward and
    together), spread (corners apart)."""
    nx = math.ceil(math.sqrt(n_vertices * 0.8))
    ny = math.ceil(n_vertices / nx)
    x, y = np.meshgrid(np.linspace(-0.08, 0.08, nx), np.linspace(0.1, -0.1, ny))
    x, y = x.ravel()[:n_vertices], y.ravel()[:n_vertices]
    r = np.arange(nx * (ny - 1)).reshape(ny - 1, nx)[:, :-1].ravel()  # top-left corner of each grid cell
    quads = np.stack([r, r + nx, r + 1, r + nx + 1], 1)  # corners: top-left, bottom-left, top-right, bottom-right
    faces = np.concatenate([quads[:, [0, 1, 2]], quads[:, [2, 1, 3]]])  # counter-clockwise seen from +z
    faces = faces[(faces < n_vertices).all(1)]
    dy = y + 0.04  # from the mouth line
    lip_r2 = (x / 0.03) ** 2 + (dy / 0.012) ** 2
    z = 0.06 * np.sqrt(np.clip(1 - (x / 0.11) ** 2 - (y / 0.14) ** 2, 0, None)) + 0.005 * np.exp(-lip_r2)
    near = np.exp(-((x / 0.035) ** 2) - (dy / 0.03) ** 2)  # how much a vertex follows the mouth
    below = 1 / (1 + np.exp(dy / 0.002))  # 1 under the mouth line, 0 above
    open_ = np.stack([0 * x, (0.3 - 1.3 * below) * near * 0.008, -0.004 * np.exp(-lip_r2 * 4)], 1)
    round_ = np.stack([-x * near * 0.2, -dy * near * 0.2, 0.004 * np.exp(-lip_r2)], 1)
    spread = np.stack([x * near * 0.3, 0 * x, -0.001 * near], 1)
    lip_ids = np.flatnonzero(lip_r2 <= 1)
    albedo = np.where(lip_r2 <= 1, 0.5, 0.75)
    albedo[(x / 0.026) ** 2 + (dy / 0.0025) ** 2 <= 1] = 0.15  # the slit between the lips: dark as it opens
    vertices = np.stack([x, y, z], 1)
    return SimpleNamespace(
        vertices=vertices.astype(np.float32),
        faces=faces.astype(np.int64),
        lip_ids=lip_ids,
        albedo=albedo.astype(np.float32),
        motions=np.stack([open_, round_, spread]).astype(np.float32),
    )


def speech(seconds: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A synthetic 16 kHz waveform (a 120 Hz pulse train with a drifting formant-like tone, under a 4 Hz syllable
    envelope, plus noise) and its mouth opening at FPS, in [0, 1] (the envelope)."""
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    envelope = np.clip(np.sin(2 * np.pi * 4 * t + rng.uniform(0, 2 * np.pi)), 0, None) ** 2
    voice = np.sign(np.sin(2 * np.pi * 120 * t)) * 0.2 + np.sin(2 * np.pi * (700 + 300 * np.sin(3 * t)) * t)
    audio = 0.3 * envelope * voice + 0.01 * rng.standard_normal(len(t))
    frames = np.arange(int(round(seconds * FPS))) / FPS
    return audio.astype(np.float32), np.interp(frames, t, envelope).astype(np.float32)


def fit(text: str, n_chars: int) -> str:
    """The first words of `text` that fit in n_chars characters (at least one word)."""
    words = text.split()
    while len(words) > 1 and len(" ".join(words)) > n_chars:
        words.pop()
    return " ".join(words)


def make_batch(mesh, seconds: list[float], seed: int) -> dict:
    """A collated batch (avguide.data.dataset.collate's keys) of utterances of these lengths, subjects 0, 1, ...:
    the ground truth opens the mouth with the audio's envelope (rounding and spreading slowly)."""
    from avguide.data.text import VOCAB

    rng = np.random.default_rng(seed)
    items = [speech(s, rng) for s in seconds]
    n_frames = torch.tensor([len(o) for _, o in items])
    samples = torch.tensor([len(a) for a, _ in items])
    audio = torch.zeros(len(items), int(samples.max()))
    vertices = torch.zeros(len(items), int(n_frames.max()), len(mesh.vertices), 3)
    template = torch.from_numpy(mesh.vertices)
    motions = torch.from_numpy(mesh.motions)
    for b, (a, opening) in enumerate(items):
        audio[b, : len(a)] = torch.from_numpy(a)
        slow = np.sin(np.arange(len(opening)) / FPS * 2 * np.pi * rng.uniform(0.3, 1.0))
        weights = torch.from_numpy(np.stack([opening, 0.5 * slow, -0.5 * slow], 1).astype(np.float32))
        vertices[b, : len(opening)] = template + torch.einsum("tk,kvc->tvc", weights, motions)
    texts = [fit(TEXT[b % len(TEXT)], int(n) // 2) for b, n in enumerate(n_frames)]  # CTC needs frames to spare
    tokens = [torch.tensor(VOCAB.encode(t)) for t in texts]
    return {
        "audio": audio,
        "audio_lengths": samples,
        "n_frames": n_frames,
        "templates": template.expand(len(items), -1, -1).clone(),
        "subject_ids": torch.arange(len(items)),
        "vertices": vertices,
        "frame_mask": torch.arange(int(n_frames.max()))[None] < n_frames[:, None],
        "tokens": torch.nn.utils.rnn.pad_sequence(tokens, batch_first=True, padding_value=VOCAB.pad),
        "token_lengths": torch.tensor([len(t) for t in tokens]),
    }


def make_models(mesh, quick: bool, seed: int):
    """FaceFormer (paper size, or small with `quick`) and the expert, random, every dropout off; FaceFormer's output
    layer maps its features onto small mixtures of the mesh's mouth motions."""
    from transformers import Wav2Vec2Config

    from avguide.models.expert import Expert, ExpertConfig
    from avguide.models.faceformer import HF_META, SMALL_WAV2VEC2, FaceFormer, FaceFormerConfig

    torch.manual_seed(seed)
    no_dropout = dict(hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, feat_proj_dropout=0.0)
    no_dropout |= dict(final_dropout=0.0, layerdrop=0.0, mask_time_prob=0.0)
    base = {k: v for k, v in Wav2Vec2Config().to_dict().items() if k not in HF_META}  # wav2vec2-base's shape
    cfg = FaceFormerConfig(
        n_vertices=len(mesh.vertices),
        n_subjects=8,
        fps=FPS,
        feature_dim=64,
        period=30,
        dropout=0.0,
        audio={**(SMALL_WAV2VEC2 if quick else base), **no_dropout},
    )
    animator = FaceFormer(cfg)
    motions = torch.from_numpy(mesh.motions).flatten(1)  # (3, V·3), metres
    mix = torch.randn(len(motions), cfg.feature_dim) * 0.1
    with torch.no_grad():  # the output is in centimetres (motion_scale)
        animator.motion_out.weight.copy_(motions.T @ mix * cfg.motion_scale)
    reader = Expert(ExpertConfig(fps=FPS, dropout=0.0))
    return animator, reader


# ---------------------------------------------------------------- measurements


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_mb(device: torch.device):
    return round(torch.cuda.max_memory_allocated(device) / 2**20, 1) if device.type == "cuda" else None


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def timed(fn, device: torch.device, repeats: int, warmup: int = 1) -> float:
    """Median seconds of fn() over `repeats` calls, after `warmup` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def render_bench(mesh, device: torch.device, frames: int, repeats: int) -> dict:
    """Forward + backward of `frames` posed frames through the 88 px mouth view."""
    from avguide.render.mouth import MouthView

    view = MouthView(mesh, size=SIZE, chunk=frames)
    opening = torch.linspace(0, 1, frames)[:, None, None, None]
    motion = (opening * torch.from_numpy(mesh.motions)[[0]]).sum(1)
    poses = (torch.from_numpy(mesh.vertices) + motion).to(device)

    def step():
        v = poses.clone().requires_grad_(True)
        view.clip(v, mesh.vertices).square().mean().backward()

    reset_peak(device)
    s = timed(step, device, repeats)
    return {
        "vertices": len(mesh.vertices),
        "faces": len(mesh.faces),
        "lip_vertices": len(mesh.lip_ids),
        "frames": frames,
        "fwd_bwd_ms": round(s * 1e3, 2),
        "frames_per_s": round(frames / s, 1),
        "peak_mb": peak_mb(device),
    }


class GuidedStep:
    """The paper's guided step on `device` with copies of `animator` and `reader`: loss, backward, Adam."""

    def __init__(self, animator, reader, mesh, batch: dict, device: torch.device, dtype=torch.float32, rates=None):
        from avguide.losses import LossSetting, ReaderTerm
        from avguide.render.mouth import MouthView

        self.setting = LossSetting(
            mse=1.0, rlv=1.0, term="reader", weight=LAMBDA, joint=True, audio_mask=0.0, ctc=0.1, ce=0.9
        )
        self.animator = copy.deepcopy(animator).to(device, dtype).train()
        view = MouthView(mesh, size=SIZE, rates=rates)  # rates: (animation fps, reader fps) when they differ
        self.term = ReaderTerm(copy.deepcopy(reader), view, self.setting).to(device, dtype).train()
        self.lip_ids = mesh.lip_ids
        self.batch = {k: v.to(device, dtype) if v.is_floating_point() else v.to(device) for k, v in batch.items()}
        self.groups = [
            [p for p in self.animator.parameters() if p.requires_grad],
            [p for p in self.term.parameters() if p.requires_grad],
        ]
        self.optimizer = torch.optim.Adam(
            [{"params": self.groups[0], "lr": ANIMATOR_LR}, {"params": self.groups[1], "lr": READER_LR}]
        )

    def __call__(self) -> dict[str, torch.Tensor]:
        from avguide.losses import animator_loss

        self.optimizer.zero_grad(set_to_none=True)
        parts = animator_loss(self.animator, self.batch, self.setting, self.lip_ids, self.term)
        parts["loss"].backward()
        self.optimizer.step()
        return parts


def flat(tensors) -> torch.Tensor:
    return torch.cat([t.detach().reshape(-1).double().cpu() for t in tensors])


def one_step(animator, reader, mesh, batch: dict, device: torch.device, dtype=torch.float32) -> dict:
    """Loss values, gradients and updates (per parameter group, flattened) of one step from the given weights, every
    floating-point tensor in `dtype` (the tensors the modules make on the way too)."""
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        step = GuidedStep(animator, reader, mesh, batch, device, dtype)
        before = [flat(g) for g in step.groups]
        parts = step()
        synchronize(device)
    finally:
        torch.set_default_dtype(default)
    grads = [flat(p.grad if p.grad is not None else torch.zeros_like(p) for p in g) for g in step.groups]
    updates = [flat(g) - b for g, b in zip(step.groups, before)]
    return {
        "loss": {k: torch.tensor(float(v.detach()), dtype=torch.float64) for k, v in parts.items()},
        "gradient": dict(zip(("animator", "reader"), grads)),
        "update": dict(zip(("animator", "reader"), updates)),
    }


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    """|a - b| / |b| (vectors: L2 norms); 0 where both are 0."""
    diff = float((a - b).norm())
    return diff / float(b.norm()) if diff else 0.0


def compare(animator, reader, mesh, batch: dict, device: torch.device) -> dict:
    """One step on the CPU and one on `device` in fp32 (TF32 off), one on the CPU in fp64; the checks of FACTOR."""
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        cpu = one_step(animator, reader, mesh, batch, torch.device("cpu"))
        dev = one_step(animator, reader, mesh, batch, device)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    exact = one_step(animator, reader, mesh, batch, torch.device("cpu"), torch.float64)
    checks = {}
    for kind in ("loss", "gradient", "update"):
        for name, ref in exact[kind].items():
            a, b = cpu[kind][name], dev[kind][name]
            check = {"cpu": float(a), "device": float(b)} if kind == "loss" else {"cpu_norm": float(a.norm())}
            check |= {"rel_diff": relative(b, a), "cpu_error": relative(a, ref), "device_error": relative(b, ref)}
            check["tolerance"] = FACTOR * check["cpu_error"] + FLOOR
            check["pass"] = check["device_error"] <= check["tolerance"]
            checks[f"{kind}_{name}"] = check
    return {
        "against": "cpu",
        "reference": "cpu fp64",
        "factor": FACTOR,
        "floor": FLOOR,
        "checks": checks,
        "pass": all(c["pass"] for c in checks.values()),
    }


def cpu_name() -> str:
    try:
        names = [line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")]
    except OSError:
        names = []
    return names[0] if names else platform.processor() or platform.machine()


def provenance(device: torch.device) -> dict:
    import torchaudio
    import transformers

    root = Path(__file__).resolve().parents[1]
    try:
        git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True).stdout
    except OSError:  # no git on the machine
        git = ""
    out = {
        "commit": git.strip() or None,
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchaudio": torchaudio.__version__,
        "transformers": transformers.__version__,
        "cpu": cpu_name(),
        "threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        out |= {
            "device_name": props.name,
            "device_memory_gb": round(props.total_memory / 2**30, 1),
            "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(),
            "timing_tf32": {"matmul": torch.backends.cuda.matmul.allow_tf32, "cudnn": torch.backends.cudnn.allow_tf32},
        }
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda", help="cuda (default; without one: say so and exit 0) or cpu")
    ap.add_argument("--quick", action="store_true", help="small sizes, for machines without a GPU and the tests")
    ap.add_argument("--steps", type=int, help="timed guided steps (default 10; quick 2)")
    ap.add_argument("--repeats", type=int, help="timed renders per mesh (default 10; quick 2)")
    ap.add_argument("--frames", type=int, help="frames per render (default 64; quick 8)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    record = {"benchmark": "gpu", "device": str(device), "quick": args.quick}
    if device.type == "cuda" and not torch.cuda.is_available():
        reason = "torch was built without CUDA" if torch.version.cuda is None else "no CUDA device is visible"
        print(json.dumps({**record, "cuda": False, "reason": reason, "torch": torch.__version__}))
        return 0
    steps, repeats, frames = args.steps or (2 if args.quick else 10), args.repeats, args.frames
    repeats, frames = repeats or (2 if args.quick else 10), frames or (8 if args.quick else 64)
    seconds = [0.6, 0.5] if args.quick else [3.0, 2.5]

    start = time.perf_counter()
    meshes = {"flame": face_mesh(FLAME_VERTICES), "biwi": face_mesh(BIWI_VERTICES)}
    record["cuda"] = device.type == "cuda"
    record["render"] = {name: render_bench(mesh, device, frames, repeats) for name, mesh in meshes.items()}

    mesh = meshes["flame"]
    batch = make_batch(mesh, seconds, args.seed)
    animator, reader = make_models(mesh, args.quick, args.seed)
    guided = GuidedStep(animator, reader, mesh, batch, device)
    reset_peak(device)
    s = timed(guided, device, steps, warmup=1 if args.quick else 2)
    n = int(batch["n_frames"].sum())
    record["step"] = {
        "batch": len(seconds),
        "audio_s": sum(seconds),
        "frames": n,
        "animator_params": sum(p.numel() for p in guided.groups[0]),
        "reader_params": sum(p.numel() for p in guided.groups[1]),
        "wav2vec2_layers": animator.cfg.audio["num_hidden_layers"],
        "wav2vec2_hidden": animator.cfg.audio["hidden_size"],
        "step_ms": round(s * 1e3, 1),
        "steps_per_s": round(1 / s, 3),
        "frames_per_s": round(n / s, 1),
        "peak_mb": peak_mb(device),
        "lambda": LAMBDA,
    }
    del guided
    record["compare"] = compare(animator, reader, mesh, batch, device)
    record["pass"] = record["compare"]["pass"]
    record["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    record["seconds"] = round(time.perf_counter() - start, 1)
    record["provenance"] = provenance(device)
    loaded = [m for m, module in sys.modules.items() if module is not None]
    record["forbidden_imports"] = sorted(m for m in loaded if any(m == f or m.startswith(f + ".") for f in FORBIDDEN))
    print(json.dumps(record))
    return 0 if record["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
