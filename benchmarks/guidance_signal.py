"""What each perceptual loss term tells the lips, before any training: its gradient on the trained baseline's
predictions of the first training batches (in order), as avguide.losses.gradient_diagnostics measures it. Prints
one JSON line: for every loss setting of params.yaml guide.weights that has a term (or those of `--settings`),

  cos_term        cosine between -dL_term/dv and (truth - prediction) on the lip vertices of the real frames:
                  +1 pulls every lip vertex straight to the truth, 0 is noise as far as the truth is concerned
  grad_lip_unit   the mean norm of dL_term/dv on the lip vertices at λ = 1 (grad_ratio sets λ from it)
  term            the term's value
  cos_vertex      the same cosine of the vertex terms (1 by construction: a check)

each the mean over the batches. `--basis K` and `--blur PX` override every setting's gradient projection and
blur, to compare conditionings side by side: e.g. `--settings feature,critic --basis 8`.

The models are the default pipeline's: the baseline (train.out/<animator>), the fine-tuned expert
(guide.expert_out) and the critic (pretrain_critic.out).

Usage: python benchmarks/guidance_signal.py [--animator faceformer] [--settings a,b] [--batches 2] [--basis K]
                                            [--blur PX] [--threads 2] [--params params.yaml]
"""

import argparse
import json
import time

import numpy as np
import torch
from torch.utils.data import DataLoader

from avguide.data.corpus import Corpus
from avguide.data.dataset import TalkingFaceDataset, collate
from avguide.losses import LossSetting, MotionBasis, animator_loss
from avguide.models.checkpoint import load_checkpoint
from avguide.models.registry import ANIMATORS
from avguide.params import load_params, project_root
from avguide.training.guide import loss_term, training_offsets

KEYS = ("cos_term", "grad_lip_term", "term", "cos_vertex")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--animator", default="faceformer")
    parser.add_argument("--settings", default=None, help="comma-separated names of guide.weights (default: all)")
    parser.add_argument("--batches", type=int, default=2)
    parser.add_argument("--basis", type=int, default=None, help="project every term's gradient on K motions")
    parser.add_argument("--blur", type=float, default=None, help="blur every render by this sigma (pixels)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    params = load_params(args.params)
    root = project_root()
    corpus = Corpus(root / params["prepare"]["out"])
    model = load_checkpoint(*ANIMATORS[args.animator], root / params["train"]["out"] / args.animator / "model")
    if hasattr(model, "set_stage"):
        model.set_stage(model.stages[-1])
    model.train()
    loader = DataLoader(
        TalkingFaceDataset(corpus, "train", cache=True), params["train"]["batch_size"], collate_fn=collate
    )
    batches = [b for _, b in zip(range(args.batches), loader)]
    names = args.settings.split(",") if args.settings else list(params["guide"]["weights"])
    overrides = {k: v for k, v in (("basis", args.basis), ("blur_px", args.blur)) if v is not None}
    settings = {}
    for name in names:
        raw = {**params["guide"]["weights"][name], **overrides}
        if raw.get("term"):
            settings[name] = LossSetting(**{**raw, "weight": 1.0, "grad_ratio": None})
    k = max([s.basis for s in settings.values()] + [0])
    basis = MotionBasis.of_offsets(training_offsets(corpus), k) if k else None
    out = {}
    for name, setting in settings.items():
        term = loss_term(setting, params, corpus, params["seed"])
        b = MotionBasis(basis.basis[:, : setting.basis].contiguous()) if setting.basis else None
        torch.manual_seed(0)
        rows = [animator_loss(model, x, setting, corpus.topology.lip_ids, term, b, diagnose=True) for x in batches]
        figures = {key: float(np.mean([float(r[key]) for r in rows])) for key in KEYS}
        figures["grad_lip_unit"] = figures.pop("grad_lip_term")
        out[name] = {key: round(v, 6) for key, v in figures.items()}
    print(
        json.dumps(
            {
                "animator": args.animator,
                "settings": out,
                "overrides": overrides,
                "batches": args.batches,
                "batch_size": params["train"]["batch_size"],
                "seconds": round(time.perf_counter() - start, 1),
                "threads": args.threads,
            }
        )
    )


if __name__ == "__main__":
    main()
