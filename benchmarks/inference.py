"""Animator inference speed (FaceFormer or CodeTalker): animating 10 s and 60 s of audio with the key/value
cache and with the public code's loop (the whole decoder again for every frame; CodeTalker's also quantises
and decodes the whole prefix again). Prints one JSON line.

Cached times are medians of `--repeats` runs, uncached ones of `--uncached-repeats` (one by default: the
uncached loop is quadratic in the frames and takes minutes at 60 s); one short warm-up call comes first.
`--uncached-up-to S` skips the uncached loop for longer audio (its keys are then null): CodeTalker's uncached
loop keeps every frame's whole-prefix VQ-decoder output alive (~22 KB x frames^2: ~1.4 GB at 10 s, ~49 GB
at 60 s), so at 60 s it does not fit in memory.
Both animators are fresh, with the default (params.yaml) sizes; FaceFormer's zero-initialised output layer is
given small random weights so its outputs are not all the template.

Usage: python benchmarks/inference.py [--animator faceformer|codetalker] [--seconds 10 60] [--vertices 3656]
                                      [--repeats 3] [--uncached-repeats 1] [--uncached-up-to S] [--threads 1]
"""

import argparse
import json
import statistics
import time

import torch

from avguide.models.registry import ANIMATORS


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--animator", default="faceformer", choices=sorted(ANIMATORS))
    ap.add_argument("--seconds", type=float, nargs="+", default=[10, 60])
    ap.add_argument("--vertices", type=int, default=3656)  # the synthetic corpus's template
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--uncached-repeats", type=int, default=1)
    ap.add_argument("--uncached-up-to", type=float, default=None, help="no uncached loop for longer audio")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model_cls, cfg_cls = ANIMATORS[args.animator]
    cfg = cfg_cls(n_vertices=args.vertices, n_subjects=8)
    model = model_cls(cfg).to(args.device).eval()
    if args.animator == "faceformer":
        torch.nn.init.normal_(model.motion_out.weight, std=0.01)  # so the outputs are not all the template
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)

    def inputs(seconds):
        samples = int(seconds * 16000)
        return (
            0.1 * torch.randn(1, samples, device=args.device),
            torch.tensor([samples], device=args.device),
            torch.tensor([int(round(seconds * cfg.fps))], device=args.device),
            torch.zeros(1, args.vertices, 3, device=args.device),
            torch.tensor([0], device=args.device),
        )

    def timed(batch, cached, repeats):
        times = []
        for _ in range(repeats):
            sync()
            t = time.perf_counter()
            result = model.predict(*batch, use_cache=cached)
            sync()
            times.append(time.perf_counter() - t)
        return statistics.median(times), result

    for cached in (True, False):  # warm-up
        model.predict(*inputs(1), use_cache=cached)
    out = {
        "animator": args.animator,
        "device": args.device,
        "threads": torch.get_num_threads(),
        "vertices": args.vertices,
        "repeats": args.repeats,
        "uncached_repeats": args.uncached_repeats,
    }
    for seconds in args.seconds:
        batch = inputs(seconds)
        cached_s, cached = timed(batch, True, args.repeats)
        key = f"{seconds:g}"
        out[f"cached_s_{key}"] = round(cached_s, 3)
        out[f"uncached_s_{key}"] = out[f"speedup_{key}"] = out[f"max_abs_diff_{key}"] = None
        if args.uncached_up_to is None or seconds <= args.uncached_up_to:
            uncached_s, uncached = timed(batch, False, args.uncached_repeats)
            out[f"uncached_s_{key}"] = round(uncached_s, 3)
            out[f"speedup_{key}"] = round(uncached_s / cached_s, 1)
            out[f"max_abs_diff_{key}"] = float((cached - uncached).abs().max())
        out[f"realtime_factor_{key}"] = round(cached_s / seconds, 4)  # seconds of compute per second of audio
    diffs = [v for k, v in out.items() if k.startswith("max_abs_diff_") and v is not None]
    out["max_abs_diff"] = max(diffs) if diffs else None
    out["realtime_factor"] = out[f"realtime_factor_{args.seconds[-1]:g}"]
    print(json.dumps(out))


if __name__ == "__main__":
    main()
