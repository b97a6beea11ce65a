"""FaceFormer inference speed: animating 10 s and 60 s of audio with the key/value cache and with the
public code's loop (the whole decoder again for every frame). Prints one JSON line.

Usage: python benchmarks/inference.py [--seconds 10 60] [--vertices 3656]
"""
import argparse
import json
import time

import torch

from avguide.models.faceformer import FaceFormer, FaceFormerConfig


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, nargs="+", default=[10, 60])
    ap.add_argument("--vertices", type=int, default=3656)  # the synthetic corpus's template
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    torch.manual_seed(0)
    cfg = FaceFormerConfig(n_vertices=args.vertices, n_subjects=8)
    model = FaceFormer(cfg).to(args.device).eval()
    torch.nn.init.normal_(model.motion_out.weight, std=0.01)  # so the outputs are not all the template
    out = {"device": args.device, "threads": torch.get_num_threads(), "vertices": args.vertices}
    for seconds in args.seconds:
        samples = int(seconds * 16000)
        audio = 0.1 * torch.randn(1, samples, device=args.device)
        lengths = torch.tensor([samples], device=args.device)
        frames = torch.tensor([int(round(seconds * cfg.fps))], device=args.device)
        templates = torch.zeros(1, args.vertices, 3, device=args.device)
        subject = torch.tensor([0], device=args.device)
        timings, results = {}, {}
        for cached in (True, False):
            t = time.perf_counter()
            results[cached] = model.predict(audio, lengths, frames, templates, subject, use_cache=cached)
            timings[cached] = time.perf_counter() - t
        key = f"{seconds:g}"
        out[f"cached_s_{key}"] = round(timings[True], 3)
        out[f"uncached_s_{key}"] = round(timings[False], 3)
        out[f"speedup_{key}"] = round(timings[False] / timings[True], 1)
        out[f"max_abs_diff_{key}"] = float((results[True] - results[False]).abs().max())
        out[f"realtime_factor_{key}"] = round(timings[True] / seconds, 4)  # seconds of compute per second of audio
    out["max_abs_diff"] = max(v for k, v in out.items() if k.startswith("max_abs_diff_"))
    out["realtime_factor"] = out[f"realtime_factor_{args.seconds[-1]:g}"]
    print(json.dumps(out))


if __name__ == "__main__":
    main()
