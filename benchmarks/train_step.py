"""Training-step cost of the loss settings of params.yaml guide.weights (avguide.losses.LossSetting) against the
baseline setting mse+rlv (the vertex terms only), all on the same batch of the 3D corpus, each step = forward of
avguide.losses.animator_loss + backward + Adam step (the animator at guide.lr, a jointly trained reader at
guide.expert_lr_joint, as avguide.training.animator.AnimatorModule). Prints one JSON line.

Times are medians over `--repeats` (after one warm-up step each, which also creates Adam's state and fills
FeatureTerm's cache of ground-truth features, as training's first epoch does); the settings' steps are interleaved
round-robin, so the machine's load drifts through all alike. The training's occasional gradient diagnostics
(every train.trainer.log_every_n_steps steps) are not part of the step. Per setting (`settings.<name>`):

  step_s             the whole step; ratio: its step_s over the baseline's
  animator_s         the animator's training_prediction(batch) (forward)
  term_s             the perceptual term's forward (0 without one)
  backward_s         the whole backward, split by gradient hooks into term_backward_s (until the gradient reaches
                     the animator's output: the term's backward, and the vertex terms') and animator_backward_s
  optimizer_s        the Adam step
  weights            where the term's model came from

and, for the settings that render (term reader or feature), the pieces of term_s and term_backward_s:

  render_s           the mouth render of every clip of the batch (MouthView.batch, forward)
  reader_s           the reader's forward on them (Expert.loss; the feature term: Expert.video_features)
  reader_backward_s  the backward down to the video (blur included); render_backward_s: video -> vertices
                     (0 when the setting is detached: then reader_backward_s is the whole term_backward_s)

with `*_total_s` (forward + backward) for animator, render and reader, `largest` naming the largest of those and
the optimizer, and render_share: render_total_s over step_s.

A setting with grad_ratio steps with λ = 1 (training calibrates it first; its value does not change the cost).
Each term is built as training builds it (avguide.training.guide.loss_term); where its model is not saved yet
(guide.expert_out/model, pretrain_critic.out/model), around a fresh model of params.yaml's sizes (the weights do
not change the cost).

The animator is the trained baseline (train.out/<animator>/model) when one exists with the sizes of
params.yaml train.<animator>; otherwise a fresh one whose output stays near the template, as a trained
animator's does: FaceFormer starts at the template by construction, CodeTalker's VQ-VAE output layer is
scaled by 0.01. This matters: the rasterizer's cost depends on the geometry, and the crumpled meshes of a
random VQ-VAE (offsets of ~5 mm of noise on every vertex) render ~25x slower than faces
(`--random-output` keeps them, to see it). All settings step the same animator in turn, so its weights drift
a little through the run (each setting has its own Adam state).

The mouths are rasterized at params.yaml guide.render_size (as in training); `--render-size 88` renders them at
full size, to compare.

Usage: python benchmarks/train_step.py [--animator faceformer|codetalker] [--settings a,b,c] [--batch-size 8]
                                       [--repeats 5] [--threads 1] [--params params.yaml] [--random-output]
                                       [--render-size N] [--device cpu|cuda]
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
from avguide.losses import CriticTerm, FeatureTerm, LossSetting, MotionBasis, ReaderTerm, animator_loss
from avguide.models.checkpoint import load_checkpoint
from avguide.models.critic import CriticConfig, SyncCritic
from avguide.models.expert import Expert
from avguide.params import load_params, project_root
from avguide.training.animator import borrow_style
from avguide.training.expert import reader_config
from avguide.training.guide import guide_view, loss_term, training_offsets
from avguide.training.run import ANIMATORS, build_animator

BASELINE = "mse+rlv"


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


def pick_term(setting: LossSetting, params: dict, root, corpus: Corpus, seed: int):
    """The setting's term as training builds it, and where its model came from; where that model is not saved
    yet, the same term around a fresh model of params.yaml's sizes. (None, None) without a term."""
    if setting.term is None:
        return None, None
    critic = setting.term == "critic"
    folder = root / (params["pretrain_critic"]["out"] if critic else params["guide"]["expert_out"]) / "model"
    try:
        term = loss_term(setting, params, corpus, seed)
        source = str(folder.relative_to(root))
        return term, (f"random (the config of {source})" if not critic and setting.reader == "random" else source)
    except FileNotFoundError:
        pass
    fps, lip_ids = float(corpus.manifest["fps"].iloc[0]), corpus.topology.lip_ids
    if critic:
        cfg = CriticConfig(n_lip_vertices=len(lip_ids), fps=fps, **params["pretrain_critic"].get("model", {}))
        return CriticTerm(SyncCritic(cfg), lip_ids), "params.yaml pretrain_critic.model (fresh weights)"
    expert = Expert(reader_config(params["pretrain_expert"], "av", fps))
    view = guide_view(corpus, params["guide"]["render_size"], expert)
    term = (ReaderTerm if setting.term == "reader" else FeatureTerm)(expert, view, setting)
    return term, "params.yaml pretrain_expert.model (fresh weights)"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--animator", default="faceformer", choices=["faceformer", "codetalker"])
    ap.add_argument(
        "--settings", default=None, help="comma-separated guide.weights names; default: all (mse+rlv always runs)"
    )
    ap.add_argument("--batch-size", type=int, default=None, help="default: params train.batch_size")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--random-output", action="store_true", help="keep a fresh CodeTalker's random output geometry")
    ap.add_argument(
        "--render-size", type=int, default=None, help="the rasterizer's resolution; default: params guide.render_size"
    )
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    params = load_params(args.params)
    root = project_root()
    cfg, g = params["train"], params["guide"]
    render_size = args.render_size or g["render_size"]
    params = {**params, "guide": {**g, "render_size": render_size}}  # loss_term renders at guide.render_size
    names = args.settings.split(",") if args.settings else list(g["weights"])
    names = [BASELINE] + [n for n in dict.fromkeys(names) if n != BASELINE]
    unknown = [n for n in names if n not in g["weights"]]
    if unknown:
        raise SystemExit(f"unknown loss settings {unknown}; guide.weights has {sorted(g['weights'])}")
    batch_size = args.batch_size or cfg["batch_size"]
    seed = params["seed"]
    torch.manual_seed(seed)
    device = torch.device(args.device)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)

    # the same batch for every step: a seeded draw from the training split
    corpus = Corpus(root / params["prepare"]["out"])
    data = TalkingFaceDataset(corpus, "train")
    picks = np.random.default_rng(seed).choice(len(data), batch_size, replace=False)
    batch = collate([data[int(i)] for i in picks])
    batch["subject_ids"] = borrow_style(batch["subject_ids"], 0)
    batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}

    model, animator_source = pick_animator(args.animator, params, root, corpus, args.random_output)
    model = model.to(device).train()
    if hasattr(model, "set_stage"):  # CodeTalker: the guided training fine-tunes the code predictor
        model.set_stage(model.stages[-1])
    lip_ids = corpus.topology.lip_ids
    trainable = [p for p in model.parameters() if p.requires_grad]
    clock = Clock(sync)
    clock.wrap(model, "training_prediction", "animator", grad_mark="animator_grad")

    runs, bases = {}, {}
    for name in names:
        setting = LossSetting(**g["weights"][name])
        if setting.grad_ratio is not None:
            setting.weight = 1.0  # as if calibrated
        term, source = pick_term(setting, params, root, corpus, seed)
        groups = [{"params": trainable, "lr": g["lr"]}]
        if term is not None:
            term = term.to(device).train()
            clock.wrap(term, "forward", "term")
            if hasattr(term, "view"):  # a reader or feature term: render, then read
                clock.wrap(term.view, "batch", "render", grad_mark="render_grad")
                clock.wrap(term.model, "loss" if setting.term == "reader" else "video_features", "reader")
            joint = [p for p in term.parameters() if p.requires_grad]
            if joint:
                groups.append({"params": joint, "lr": g["expert_lr_joint"]})
        if setting.basis and setting.basis not in bases:
            bases[setting.basis] = MotionBasis.of_offsets(training_offsets(corpus, seed=seed), setting.basis)
        runs[name] = {
            "setting": setting,
            "term": term,
            "basis": bases.get(setting.basis),
            "opt": torch.optim.Adam(groups),
            "weights": source,
            "times": [],
        }

    def step(run):
        """One training step; the times of its phases."""
        clock.reset()
        clock.mark("start")
        loss = animator_loss(model, batch, run["setting"], lip_ids, run["term"], run["basis"])["loss"]
        clock.mark("forward")
        run["opt"].zero_grad(set_to_none=True)
        loss.backward()
        clock.mark("backward")
        run["opt"].step()
        clock.mark("end")
        m, s = clock.marks, clock.spent
        out = {
            "step": m["end"] - m["start"],
            "animator": s["animator"],
            "term": s["term"],
            "backward": m["backward"] - m["forward"],
            "term_backward": m["animator_grad"] - m["forward"],
            "animator_backward": m["backward"] - m["animator_grad"],
            "optimizer": m["end"] - m["backward"],
        }
        if "render" in s:
            reached = m.get("render_grad", m["animator_grad"])  # a detached render gets no gradient
            out.update(
                render=s["render"],
                reader=s["reader"],
                reader_backward=reached - m["forward"],
                render_backward=m["animator_grad"] - reached,
            )
        return out

    for _ in range(args.repeats + 1):  # the first round warms up (and creates Adam's state)
        for run in runs.values():
            run["times"].append(step(run))

    r = lambda x: round(x, 4)  # noqa: E731
    base_step = statistics.median(t["step"] for t in runs[BASELINE]["times"][1:])
    report = {}
    for name, run in runs.items():
        times = run["times"][1:]
        med = {k: statistics.median(t[k] for t in times) for k in times[0]}
        out = {"step_s": r(med["step"]), "ratio": round(med["step"] / base_step, 2)}
        out.update({f"{k}_s": r(v) for k, v in med.items() if k != "step"})
        if "render" in med:
            totals = {
                "animator": med["animator"] + med["animator_backward"],
                "render": med["render"] + med["render_backward"],
                "reader": med["reader"] + med["reader_backward"],
                "optimizer": med["optimizer"],
            }
            out.update({f"{k}_total_s": r(v) for k, v in totals.items() if k != "optimizer"})
            out["largest"] = max(totals, key=totals.get)
            out["render_share"] = round(totals["render"] / med["step"], 3)
        if run["weights"]:
            out["weights"] = run["weights"]
        report[name] = out

    print(
        json.dumps(
            {
                "animator": args.animator,
                "baseline": BASELINE,
                "settings": report,
                "batch_size": batch_size,
                "frames": int(batch["n_frames"].max()),
                "rendered_frames": int(batch["n_frames"].sum()),
                "render_size": render_size,
                "vertices": corpus.n_vertices,
                "animator_weights": animator_source,
                "repeats": args.repeats,
                "threads": torch.get_num_threads(),
                "device": str(device),
            }
        )
    )


if __name__ == "__main__":
    main()
