"""Training-step cost of AV guidance: a baseline step (vertex MSE) and an AV-guided step (params.yaml
guide.weights.avguide: MSE + lip-vertex MSE + the expert's reading of the rendered mouths) on the same batch of
the 3D corpus, each = forward of the loss + backward + Adam step. Prints one JSON line.

Times are medians over `--repeats` (after one warm-up step each; baseline and AV steps alternate, so the
machine's load drifts through both alike). The AV step is broken down by timing its pieces inside the step:

  animator_s   the animator's training_prediction(batch) (forward)
  render_s     the mouth render of the first `items` clips (MouthView.batch, forward)
  expert_s     the expert's loss on them (forward); augment_s: the masking/noise of its inputs in between
  backward_s   the whole backward, split by gradient hooks into expert_backward_s (down to the video, the
               input augmentation included), render_backward_s (video -> vertices) and animator_backward_s
  optimizer_s  the Adam step (the animator's parameters, and the expert's when guide.update_expert)

and `*_total_s` (forward + backward) per piece, with `largest` naming the largest of those and the optimizer.

The animator is the trained baseline (train.out/<animator>/model) when one exists with the sizes of
params.yaml train.<animator>; otherwise a fresh one whose output stays near the template, as a trained
animator's does: FaceFormer starts at the template by construction, CodeTalker's VQ-VAE output layer is
scaled by 0.01. This matters: the rasterizer's cost depends on the geometry, and the crumpled meshes of a
random VQ-VAE (offsets of ~5 mm of noise on every vertex) render ~25x slower than faces
(`--random-output` keeps them, to see it).

The expert is the fine-tuned checkpoint (guide.expert_out/model, else pretrain_expert.out/model) when one
exists with the sizes of params.yaml pretrain_expert.model; otherwise a fresh expert of those sizes (the
weights do not change the cost).

L_av's mouths are rasterized at params.yaml guide.render_size (as in training); `--render-size 88` renders them at
full size, to compare.

Usage: python benchmarks/train_step.py [--animator faceformer|codetalker] [--batch-size 8] [--items 2]
                                       [--repeats 5] [--threads 1] [--params params.yaml] [--random-output]
                                       [--render-size N]
"""

import argparse
import json
import statistics
import time
from collections import defaultdict

import numpy as np
import torch

from avguide.data.corpus import Corpus
from avguide.data.dataset import TalkingFaceDataset, collate
from avguide.losses import AVGuidance, LossWeights, animator_loss
from avguide.models.augment import AugmentConfig
from avguide.models.checkpoint import load_checkpoint
from avguide.models.expert import Expert, ExpertConfig
from avguide.params import load_params, project_root
from avguide.training.animator import borrow_style
from avguide.training.expert import reader_config
from avguide.training.guide import guide_view
from avguide.training.run import ANIMATORS, build_animator


class Clock:
    """Seconds spent in wrapped methods (forward pieces) and times at which gradients reach tensors
    (backward pieces), reset for every step."""

    def __init__(self, sync):
        self.sync = sync
        self.spent, self.marks = defaultdict(float), {}

    def reset(self):
        self.spent.clear()
        self.marks.clear()

    def mark(self, name):
        self.sync()
        self.marks[name] = time.perf_counter()

    def wrap(self, obj, method, name, grad_mark=None):
        """Replace obj.method by a timed call; with `grad_mark`, also note when the gradient of its output (or
        of its output's first element) arrives in backward."""
        fn = getattr(obj, method)

        def timed(*args, **kwargs):
            self.sync()
            start = time.perf_counter()
            out = fn(*args, **kwargs)
            self.sync()
            self.spent[name] += time.perf_counter() - start
            tensor = out[0] if isinstance(out, tuple) else out
            if grad_mark and torch.is_grad_enabled() and tensor.requires_grad:
                tensor.register_hook(lambda grad: self.mark(grad_mark))
            return out

        setattr(obj, method, timed)


def same_sizes(folder, settings: dict) -> bool:
    """Whether the checkpoint in `folder` exists and was saved with these config values."""
    if not ((folder / "config.json").is_file() and (folder / "model.safetensors").is_file()):
        return False
    saved = json.loads((folder / "config.json").read_text())
    return all(saved.get(k) == (list(v) if isinstance(v, tuple) else v) for k, v in settings.items())


def pick_animator(name: str, params: dict, root, corpus: Corpus, random_output: bool):
    """The trained baseline if saved with params.yaml's sizes, else a fresh animator predicting near the template."""
    # (where the audio encoder's weights started from is no size: a saved baseline loads without that folder)
    settings = {k: v for k, v in params["train"][name].items() if k not in ("epochs", "lr", "pretrained_audio")}
    folder = root / params["train"]["out"] / name / "model"
    if same_sizes(folder, {**settings, "n_vertices": corpus.n_vertices}):
        return load_checkpoint(*ANIMATORS[name], folder), str(folder.relative_to(root))
    cfg = params["train"][name]
    if cfg.get("pretrained_audio") and not (root / cfg["pretrained_audio"]).is_dir():
        cfg = {**cfg, "pretrained_audio": None}  # not trained yet: a random encoder costs the same
    model = build_animator(name, cfg, corpus)
    if hasattr(model, "vq_out") and not random_output:
        with torch.no_grad():
            model.vq_out.weight.mul_(0.01)
            model.vq_out.bias.mul_(0.01)
        return model, "fresh, output layer scaled by 0.01 (near the template)"
    return model, "fresh" + (" (random output)" if random_output else " (predicts the template)")


def pick_expert(params: dict, root, fps: float) -> tuple[Expert, str]:
    """The fine-tuned or pretrained expert if saved with params.yaml's sizes, else a fresh one of those sizes."""
    pe, g = params["pretrain_expert"], params["guide"]
    wanted = reader_config(pe, "av", fps)
    for folder in (root / g["expert_out"] / "model", root / pe["out"] / "model"):
        if same_sizes(folder, pe["model"]):
            return load_checkpoint(Expert, ExpertConfig, folder), str(folder.relative_to(root))
    return Expert(wanted), "params.yaml pretrain_expert.model (fresh weights)"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--animator", default="faceformer", choices=["faceformer", "codetalker"])
    ap.add_argument("--batch-size", type=int, default=None, help="default: params train.batch_size")
    ap.add_argument("--items", type=int, default=None, help="clips rendered and read; default: params guide.items")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--random-output", action="store_true", help="keep a fresh CodeTalker's random output geometry")
    ap.add_argument(
        "--render-size", type=int, default=None, help="L_av's rasterizer resolution; default: params guide.render_size"
    )
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    params = load_params(args.params)
    root = project_root()
    cfg, g = params["train"], params["guide"]
    batch_size = args.batch_size or cfg["batch_size"]
    items = args.items or g["items"]
    torch.manual_seed(params["seed"])
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    # the same batch for both steps: a seeded draw from the training split
    corpus = Corpus(root / params["prepare"]["out"])
    data = TalkingFaceDataset(corpus, "train")
    picks = np.random.default_rng(params["seed"]).choice(len(data), batch_size, replace=False)
    batch = collate([data[int(i)] for i in picks])
    batch["subject_ids"] = borrow_style(batch["subject_ids"], 0)
    batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}

    model, animator_source = pick_animator(args.animator, params, root, corpus, args.random_output)
    model = model.to(device).train()
    if hasattr(model, "set_stage"):  # CodeTalker: the guided training fine-tunes the code predictor
        model.set_stage(model.stages[-1])
    expert, expert_source = pick_expert(params, root, float(corpus.manifest["fps"].iloc[0]))
    augment = AugmentConfig(**{**params["pretrain_expert"]["augment"], **g["augment"]}, fps=expert.cfg.fps)
    render_size = args.render_size or g["render_size"]
    guidance = AVGuidance(
        expert.to(device), guide_view(corpus.topology, render_size, expert), augment, g["update_expert"], items
    ).train()
    lip_ids = corpus.topology.lip_ids
    baseline_weights, av_weights = LossWeights(**g["weights"]["mse"]), LossWeights(**g["weights"]["avguide"])
    trainable = [p for p in model.parameters() if p.requires_grad]
    baseline_opt = torch.optim.Adam(trainable, lr=g["lr"])
    av_opt = torch.optim.Adam(trainable + [p for p in expert.parameters() if p.requires_grad], lr=g["lr"])

    clock = Clock(sync)
    clock.wrap(model, "training_prediction", "animator", grad_mark="animator_grad")
    clock.wrap(guidance.view, "batch", "render", grad_mark="render_grad")
    clock.wrap(expert, "loss", "expert")
    clock.wrap(guidance, "forward", "guidance")

    def step(weights, opt, guide):
        """One training step; the times of its phases."""
        clock.reset()
        clock.mark("start")
        loss = animator_loss(model, batch, weights, lip_ids, guide)["loss"]
        clock.mark("forward")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        clock.mark("backward")
        opt.step()
        clock.mark("end")
        m, s = clock.marks, clock.spent
        out = {
            "step": m["end"] - m["start"],
            "backward": m["backward"] - m["forward"],
            "optimizer": m["end"] - m["backward"],
            "animator": s["animator"],
        }
        if guide is not None:
            out.update(
                render=s["render"],
                expert=s["expert"],
                augment=s["guidance"] - s["render"] - s["expert"],
                expert_backward=m["render_grad"] - m["forward"],
                render_backward=m["animator_grad"] - m["render_grad"],
                animator_backward=m["backward"] - m["animator_grad"],
            )
        return out

    runs = {"baseline": [], "av": []}
    for _ in range(args.repeats + 1):  # the first of each warms up (and creates Adam's state)
        runs["baseline"].append(step(baseline_weights, baseline_opt, None))
        runs["av"].append(step(av_weights, av_opt, guidance))
    med = {name: {k: statistics.median(r[k] for r in rs[1:]) for k in rs[0]} for name, rs in runs.items()}
    base, av = med["baseline"], med["av"]
    totals = {
        "animator": av["animator"] + av["animator_backward"],
        "render": av["render"] + av["render_backward"],
        "expert": av["augment"] + av["expert"] + av["expert_backward"],
        "optimizer": av["optimizer"],
    }
    r = lambda x: round(x, 4)  # noqa: E731
    print(
        json.dumps(
            {
                "animator": args.animator,
                "baseline_step_s": r(base["step"]),
                "av_step_s": r(av["step"]),
                "ratio": round(av["step"] / base["step"], 2),
                "animator_s": r(av["animator"]),
                "render_s": r(av["render"]),
                "augment_s": r(av["augment"]),
                "expert_s": r(av["expert"]),
                "backward_s": r(av["backward"]),
                "expert_backward_s": r(av["expert_backward"]),
                "render_backward_s": r(av["render_backward"]),
                "animator_backward_s": r(av["animator_backward"]),
                "optimizer_s": r(av["optimizer"]),
                **{f"{k}_total_s": r(v) for k, v in totals.items() if k != "optimizer"},
                "largest": max(totals, key=totals.get),
                "render_share": round(totals["render"] / av["step"], 3),
                "baseline_animator_s": r(base["animator"]),
                "baseline_backward_s": r(base["backward"]),
                "baseline_optimizer_s": r(base["optimizer"]),
                "batch_size": batch_size,
                "items": items,
                "frames": int(batch["n_frames"].max()),
                "rendered_frames": int(batch["n_frames"][:items].sum()),
                "render_size": render_size,
                "vertices": corpus.n_vertices,
                "animator_weights": animator_source,
                "expert": expert_source,
                "update_expert": bool(g["update_expert"]),
                "repeats": args.repeats,
                "threads": torch.get_num_threads(),
                "device": str(device),
            }
        )
    )


if __name__ == "__main__":
    main()
