"""Mouth-renderer speed: frames/s forward and forward+backward at 88x88, batch 64, on the corpus face.

Prints one JSON line: fwd_fps, fwdbwd_fps (medians over repeats), peak_mem_mb (peak resident memory of
this process), and the settings. Usage: python benchmarks/render.py [--batch 64] [--size 88] [--repeats 5]
"""

import argparse
import json
import resource
import statistics
import time

import numpy as np
import torch

from avguide.face.rig import PARAMETERS, Rig
from avguide.face.template import build_face
from avguide.render import MeshRenderer, RasterSettings, mouth_camera


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--size", type=int, default=88)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()

    mesh = build_face()
    params = np.zeros((args.batch, len(PARAMETERS)))
    params[:, :6] = np.random.default_rng(0).random((args.batch, 6)) * [1, 1, 1, 0.3, 0.3, 1]
    verts = torch.from_numpy(Rig(mesh).pose(params)).to(args.device)
    faces = torch.from_numpy(mesh.faces).to(args.device)
    albedo = torch.from_numpy(mesh.albedo).to(args.device)
    renderer = MeshRenderer(mouth_camera(mesh.vertices, mesh.lip_ids, args.size), RasterSettings(args.size))
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)

    def timed(fn):
        out = []
        for _ in range(args.repeats + 1):
            sync()
            t = time.perf_counter()
            fn()
            sync()
            out.append(time.perf_counter() - t)
        return statistics.median(out[1:])  # the first call warms up

    def forward():
        with torch.no_grad():
            renderer(verts, faces, albedo)

    def forward_backward():
        v = verts.clone().requires_grad_(True)
        renderer(v, faces, albedo).square().mean().backward()

    fwd = timed(forward)
    fwdbwd = timed(forward_backward)
    print(
        json.dumps(
            {
                "fwd_fps": round(args.batch / fwd, 1),
                "fwdbwd_fps": round(args.batch / fwdbwd, 1),
                "peak_mem_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                "batch": args.batch,
                "size": args.size,
                "device": args.device,
                "threads": torch.get_num_threads(),
                "vertices": int(len(mesh.vertices)),
                "faces": int(len(mesh.faces)),
            }
        )
    )


if __name__ == "__main__":
    main()
