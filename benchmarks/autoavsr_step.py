"""The full-size auto-AVSR reader (avguide.models.autoavsr, the release's sizes): its parameter count and the time of
one training step (the joint CTC/attention loss forward and backward; no optimiser step) on one clip. Prints one
JSON line.

`--guided`: instead, the paper's guided training step with it as the jointly trained reader (benchmarks/gpu.py's
GuidedStep: the paper-size FaceFormer (96 M parameters, a wav2vec2-base-size encoder, 5,023 vertices, 30 fps)
predicts the clip, MouthView renders the 88 px mouth crops at the reader's 25 fps, the reader's CTC + CE on them
with the audio, L_mse + L_rlv, backward, one Adam step over the animator and the reader), on gpu.py's synthetic
FLAME-size face and speech.

Fresh weights (weights do not change the cost), a random 88×88 grey clip with its 16 kHz audio and a 6-word
transcript, the release's 5,049 outputs (a stand-in vocabulary numbers the characters among them, so the
sentencepiece package is not needed). Medians over `--repeats` after one warm-up step.

Usage: python benchmarks/autoavsr_step.py [--mode av] [--seconds 2] [--threads 1] [--repeats 3] [--guided]
"""

import argparse
import json
import statistics
import time

import torch

from avguide.data.text import VOCAB
from avguide.models.autoavsr import AutoAVSR, AutoAVSRConfig

OUTPUTS = 5049  # the release's: blank, 5,047 units, sos/eos


class StandIn:
    """5,049 outputs, blank 0, sos/eos last; a character is its VOCAB id + 2."""

    blank = pad = 0
    sos = eos = OUTPUTS - 1

    def __len__(self):
        return OUTPUTS

    def encode(self, text):
        return [i + 2 for i in VOCAB.encode(text)]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mode", default="av", choices=("av", "video", "audio"))
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--guided", action="store_true", help="the guided step of the paper-size FaceFormer with it")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = AutoAVSR(AutoAVSRConfig(mode=args.mode, vocab="sentencepiece", vocab_size=OUTPUTS), StandIn())
    model.train()
    if args.guided:
        return guided(model, args)
    frames = round(25 * args.seconds)
    text = "the quick brown fox jumps high"
    batch = dict(
        video=torch.rand(1, frames, 88, 88),
        video_lengths=torch.tensor([frames]),
        audio=0.1 * torch.randn(1, frames * 640),
        audio_lengths=torch.tensor([frames * 640]),
        tokens=torch.tensor([VOCAB.encode(text)]),
    )

    def step():
        model.zero_grad(set_to_none=True)
        model.loss(**batch).loss.backward()

    times = []
    for r in range(args.repeats + 1):
        start = time.perf_counter()
        step()
        if r:
            times.append(time.perf_counter() - start)
    print(
        json.dumps(
            {
                "step_s": round(statistics.median(times), 2),
                "steps_s": [round(t, 2) for t in times],
                "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 1),
                "mode": args.mode,
                "frames": frames,
                "threads": args.threads,
                "repeats": args.repeats,
            }
        )
    )


def guided(reader: AutoAVSR, args) -> None:
    from gpu import FLAME_VERTICES, FPS, GuidedStep, face_mesh, make_batch, make_models

    mesh = face_mesh(FLAME_VERTICES)
    animator, _ = make_models(mesh, quick=False, seed=0)
    batch = make_batch(mesh, [args.seconds], seed=0)
    start = time.perf_counter()
    step = GuidedStep(animator, reader, mesh, batch, torch.device("cpu"), rates=(FPS, reader.cfg.fps))
    setup_s = time.perf_counter() - start
    times = []
    for r in range(args.repeats + 1):
        start = time.perf_counter()
        parts = step()
        if r:
            times.append(time.perf_counter() - start)
    count = sum(p.numel() for p in reader.parameters()) / 1e6
    print(
        json.dumps(
            {
                "guided_step_s": round(statistics.median(times), 2),
                "steps_s": [round(t, 2) for t in times],
                "reader_params_m": round(count, 1),
                "animator_params_m": round(sum(p.numel() for p in animator.parameters()) / 1e6, 1),
                "setup_s": round(setup_s, 1),
                "losses": {k: float(v.detach()) for k, v in parts.items()},
                "mode": args.mode,
                "frames": int(batch["n_frames"][0]),
                "batch": 1,
                "threads": args.threads,
                "repeats": args.repeats,
            }
        )
    )


if __name__ == "__main__":
    main()
