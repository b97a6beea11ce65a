"""2D corpus speed: seconds to make whole identities of the synthetic 2D corpus (prepare_2d), in one process on
one thread, as a corpus worker makes them (speech, motion, mouth renders, degradation, wav and mp4 files).

Prints one JSON line: s_per_identity, s_per_utterance, ms_per_frame (medians over repeats, after one warm-up
build), and the settings. Usage: python benchmarks/corpus_2d.py [--identities 1] [--sentences 30] [--repeats 3]

A timing only: libespeak-ng keeps state from call to call, so the repeats in one process speak a few samples
differently (and a frame may come or go); the corpus' bytes come from fresh processes (see data/speech.py).
"""

import os

os.environ.setdefault("MKL_CBWR", "COMPATIBLE")  # as the corpus workers run (synthetic2d.MKL_PATH); before torch

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

from avguide.data.synthetic2d import Synthetic2DConfig, _write_group  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--identities", type=int, default=1)
    ap.add_argument("--first", type=int, default=0, help="id of the first identity made")
    ap.add_argument("--sentences", type=int, default=30, help="utterances per identity (params.yaml: 30)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    torch.set_num_threads(1)
    cfg = Synthetic2DConfig(seed=args.seed, sentences_per_identity=args.sentences)
    identities = range(args.first, args.first + args.identities)
    times, frames = [], 0
    for _ in range(args.repeats + 1):
        with tempfile.TemporaryDirectory() as tmp:
            t = time.perf_counter()
            rows = _write_group(Path(tmp), cfg, identities)
            times.append(time.perf_counter() - t)
        frames = sum(r["n_frames"] for r in rows)
    s = statistics.median(times[1:])  # the first build warms up
    print(
        json.dumps(
            {
                "s_per_identity": round(s / args.identities, 3),
                "s_per_utterance": round(s / len(rows), 4),
                "ms_per_frame": round(1000 * s / frames, 3),
                "identities": args.identities,
                "utterances": len(rows),
                "frames": frames,
                "repeats": args.repeats,
                "threads": torch.get_num_threads(),
                "mkl_cbwr": os.environ.get("MKL_CBWR"),
            }
        )
    )


if __name__ == "__main__":
    main()
