"""AV-guided training, the paper's two stages on top of the baselines.

Stage 1 (`finetune_expert`): the expert pretrained on the 2D corpus is fine-tuned on mouth renders of the 3D
training subjects' ground-truth meshes, carrying its 2D prior into the 3D domain; its CER on renders of the
3D test subjects is measured before and after (with the speech, and with most of the speech masked).
Stage 2 (`guide_animator`): a trained baseline animator is fine-tuned with the loss setting
`guide.weights[<loss>]` (avguide.losses: the vertex terms and at most one perceptual term: the expert reading the
renders, a frozen reader's features, or the speech–lip critic). Every loss setting, the controls included, gets the
same epochs and learning-rate schedule from the same baseline, so the comparison is like for like.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytorch_lightning as pl
import torch
from dvclive.lightning import DVCLiveLogger
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from avguide.data.avdataset import collate_av
from avguide.data.corpus import Corpus
from avguide.data.dataset import TalkingFaceDataset, collate
from avguide.data.text import VOCAB
from avguide.losses import CriticTerm, FeatureTerm, LossSetting, MotionBasis, ReaderTerm, calibrate
from avguide.metrics import cer, wer
from avguide.models.augment import AugmentConfig
from avguide.models.expert import Expert, load_expert, save_reader
from avguide.models.registry import ANIMATORS, load_animator
from avguide.params import project_root, set_threads
from avguide.render.mouth import MouthView
from avguide.scoring import score
from avguide.training.animator import AnimatorModule, make_trainer
from avguide.training.critic import load_critic
from avguide.training.expert import ExpertModule, mask_audio, transcribe_dataset
from avguide.training.run import build_animator, fit, fit_stages, predict_split, stage_settings


@torch.no_grad()
def render_items(
    corpus: Corpus, split: str, view: MouthView, sequences: list[np.ndarray] | None = None, progress: bool = True
) -> list[dict]:
    """A split of the 3D corpus as a 2D lip-reading dataset (items for collate_av): uint8 mouth renders of the
    ground-truth meshes, or of `sequences` (one (T, V, 3) array per utterance of the split, in order), at the
    view's reading frame rate (MouthView.rates)."""
    rows = corpus.split(split)
    items = []
    for i, row in enumerate(tqdm(list(rows.itertuples()), desc=f"render {split}", disable=not progress)):
        if sequences is None:
            audio, vertices = corpus.load(row.utterance)
        else:  # predictions: only the audio is read
            audio, vertices = corpus.audio(row.utterance), sequences[i]
        frames = view.clip(torch.from_numpy(np.array(vertices, np.float32)), corpus.templates[row.subject])
        items.append(
            {
                "utterance": row.utterance,
                "speaker": row.subject,
                "text": row.text,
                "video": (frames.clamp(0, 1) * 255).round().to(torch.uint8),
                "audio": torch.from_numpy(np.ascontiguousarray(audio, np.float32)),
                "tokens": torch.tensor(VOCAB.encode(row.text), dtype=torch.long),
            }
        )
    return items


def reading_scores(expert: Expert, items: list[dict], settings: dict, prefix: str) -> dict:
    """CER and WER of the expert (decoding with its saved settings) on rendered items, with the speech and with
    most of it masked (`settings`: params' pretrain_expert)."""
    out = {}
    for key, fns in (("", {}), ("_masked_audio", {"audio_fn": mask_audio(settings["eval"]["masked_audio_fraction"])})):
        refs, hyps = transcribe_dataset(expert, items, **fns)
        out[f"{prefix}cer{key}"], out[f"{prefix}wer{key}"] = cer(refs, hyps), wer(refs, hyps)
    return out


def guide_view(corpus: Corpus, render_size: int, expert: Expert) -> MouthView:
    """The mouth view of L_av and of the expert's fine-tuning: the corpus' animations at the expert's frame rate,
    rasterized at `render_size` (guide.render_size), which must not be coarser than the grid the expert reads (the
    view's frames pooled by video_pool; an auto-AVSR reader pools nothing)."""
    view = MouthView(corpus.topology, render_size=render_size, rates=(corpus.fps, expert.cfg.fps))
    pool = getattr(expert.cfg, "video_pool", 1)
    if render_size * pool < view.size:
        raise ValueError(
            f"guide.render_size {render_size} is coarser than the expert's input grid ({view.size} px "
            f"pooled by video_pool {pool}); use at least {math.ceil(view.size / pool)}"
        )
    return view


def finetune_expert(params: dict, progress: bool = True) -> dict:
    """Stage 1: fine-tune the pretrained AV expert (pretrain_expert.out/model, or the reader folder guide.expert_start,
    e.g. a converted auto-AVSR audio-visual reader) on renders of the 3D training subjects; write guide.expert_out/
    (model/, dvclive/, metrics.json with the before/after CER on the 3D test subjects)."""
    set_threads(params)
    g, pe = params["guide"], params["pretrain_expert"]
    root = project_root()
    pl.seed_everything(params["seed"], workers=True)
    out = root / g["expert_out"]
    corpus = Corpus(root / params["prepare"]["out"])
    source = Path(g["expert_start"]) if g.get("expert_start") else root / pe["out"] / "model"
    expert = load_expert(source, map_location="cpu")  # with the decoding it was saved with
    view = guide_view(corpus, g["render_size"], expert)
    train, test = (
        render_items(corpus, "train", view, progress=progress),
        render_items(corpus, "test", view, progress=progress),
    )
    metrics = reading_scores(expert, test, pe, "before_")
    start = time.perf_counter()
    module = ExpertModule(
        expert,
        lr=g["expert_lr"],
        weight_decay=pe.get("weight_decay", 0.01),
        warmup_steps=g["expert_warmup_steps"],
        augment=AugmentConfig(**pe["augment"], fps=expert.cfg.fps),
    )
    trainer = make_trainer(
        {**pe["trainer"], "max_epochs": g["expert_epochs"]},
        out,
        enable_progress_bar=progress,
        enable_checkpointing=False,
        num_sanity_val_steps=0,
        logger=DVCLiveLogger(dir=str(out / "dvclive"), save_dvc_exp=False, dvcyaml=False),
    )
    trainer.fit(module, DataLoader(train, batch_size=pe["batch_size"], shuffle=True, collate_fn=collate_av))
    metrics["finetune_s"] = round(time.perf_counter() - start, 1)
    metrics.update(reading_scores(expert.eval(), test, pe, "after_"))
    save_reader(expert, out / "model")
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
    return metrics


def run_name(animator: str, loss: str, seed: int) -> str:
    return f"{animator}-{loss}-seed{seed}"


def training_offsets(corpus: Corpus, max_frames: int = 2000, seed: int = 0) -> np.ndarray:
    """(N, V·3) offsets from the template of up to `max_frames` frames drawn evenly from every training clip."""
    rows = corpus.split("train")
    per_clip = max(1, max_frames // len(rows))
    rng = np.random.default_rng(seed)
    out = []
    for row in rows.itertuples():
        v = corpus.vertices(row.utterance) - corpus.templates[row.subject]
        out.append(v[np.sort(rng.choice(len(v), min(per_clip, len(v)), replace=False))].reshape(-1, v[0].size))
    return np.concatenate(out)


def loss_term(setting: LossSetting, params: dict, corpus: Corpus, seed: int):
    """The perceptual term of a loss setting, with its model (None when the setting has none)."""
    g, root = params["guide"], project_root()
    if setting.term is None:
        return None
    if setting.term == "critic":
        return CriticTerm(load_critic(root / params["pretrain_critic"]["out"] / "model"), corpus.topology.lip_ids)
    expert = load_expert(root / g["expert_out"] / "model", map_location="cpu").train()  # ours, or auto-AVSR's
    if setting.reader == "random":  # the placebo: the same architecture, never trained
        torch.manual_seed(seed + 1)
        random = type(expert)(expert.cfg)
        random.vocab, expert = expert.vocab, random
    view = guide_view(corpus, g["render_size"], expert)
    return (ReaderTerm if setting.term == "reader" else FeatureTerm)(expert, view, setting)


def guide_animator(
    params: dict, animator: str, loss: str, seed: int, progress: bool = True, out: Path | None = None
) -> dict:
    """Stage 2: fine-tune the baseline `animator` (train.out/<animator>, or guide.start's folder for it, e.g. a
    converted published checkpoint) with loss setting `loss` (guide.weights)
    and `seed` (with `from_start`: train it from its initialisation on train's schedule, λ calibrated on the
    baseline all the same); write `out` (default train.out/<animator>-<loss>-seed<seed>/): model/, dvclive/,
    metrics.json (LVE, MVE, FDD, static bound, and λ with its calibration)."""
    set_threads(params)
    g, cfg = params["guide"], params["train"]
    if loss not in g["weights"]:
        raise ValueError(f"unknown loss setting {loss!r}; guide.weights has {sorted(g['weights'])}")
    root = project_root()
    pl.seed_everything(seed, workers=True)
    corpus = Corpus(root / params["prepare"]["out"])
    folder = Path(g["start"][animator]) if g.get("start", {}).get(animator) else root / cfg["out"] / animator / "model"
    model = load_animator(folder).train()
    if not isinstance(model, ANIMATORS[animator][0]):
        raise ValueError(f"{folder}: holds a {type(model).__name__}, not a {animator} (guide.start.{animator})")
    if hasattr(model, "set_stage"):
        model.set_stage(model.stages[-1])
    setting = LossSetting(**g["weights"][loss])
    term = loss_term(setting, params, corpus, seed)
    basis = MotionBasis.of_offsets(training_offsets(corpus, seed=seed), setting.basis) if setting.basis else None
    train = TalkingFaceDataset(corpus, "train", cache=True)
    if getattr(model.cfg, "subjects", None) and list(model.cfg.subjects) != train.train_subjects:
        raise ValueError(
            f"{folder}: the model's styles are the subjects {model.cfg.subjects}; the corpus' training subjects are "
            f"{train.train_subjects}"
        )
    datasets = (train, TalkingFaceDataset(corpus, "val", cache=True))
    out = out or root / cfg["out"] / run_name(animator, loss, seed)
    metrics = {}
    if setting.grad_ratio is not None:  # on the trained baseline, also for a run from the start
        first = DataLoader(train, batch_size=cfg["batch_size"], collate_fn=collate)  # in order: the same every run
        batches = [b for _, b in zip(range(g["calibration_batches"]), first)]
        metrics.update(calibrate(model, batches, setting, corpus.topology.lip_ids, term, basis))
    start = time.perf_counter()

    def guided(model, lr):
        return AnimatorModule(
            model,
            lr=lr,
            setting=setting,
            term=term,
            lip_ids=corpus.topology.lip_ids,
            basis=basis,
            term_lr=g["expert_lr_joint"],
            diagnose_every=cfg["trainer"].get("log_every_n_steps", 10),
        )

    if setting.from_start:  # earlier stages (CodeTalker's VQ-VAE) with the vertex loss alone
        pl.seed_everything(seed, workers=True)  # the model's initialisation drawn as the train stage draws it
        model = build_animator(animator, cfg[animator], corpus)
        stages = stage_settings(model, cfg[animator], cfg["trainer"]["max_epochs"], cfg["lr"])
        fit_stages(model, stages, corpus, cfg, out, progress, datasets, lambda lr: guided(model, lr))
    else:
        fit(guided(model, g["lr"]), corpus, cfg, out, g["epochs"], out / "dvclive", progress, datasets)
    scores, _ = score(*predict_split(model, TalkingFaceDataset(corpus, "test", cache=True)), corpus.topology)
    metrics = {**scores, **metrics, "weight": setting.weight, "train_s": round(time.perf_counter() - start, 1)}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
    return metrics


@torch.no_grad()
def informativeness(term, corpus: Corpus, variants: dict[str, list[np.ndarray]], split: str = "val", draws: int = 4):
    """How much a term can tell faces apart: its value on each variant's (T, V, 3) sequences of `split` (e.g. the
    ground truth, the baseline's predictions, the static template), over `draws` draws of its randomness (the
    speech masks), against the spread of those draws. Rows: variant, draw, value; a term is informative when the
    variants' means differ by more than the draws' spread."""
    dataset = TalkingFaceDataset(corpus, split, cache=True)
    term.eval()
    rows = []
    for name, sequences in variants.items():
        for draw in range(draws):
            torch.manual_seed(draw)
            values = []
            for start in range(0, len(dataset), 8):
                batch = collate([dataset[i] for i in range(start, min(start + 8, len(dataset)))])
                pred = torch.zeros_like(batch["vertices"])
                for b, k in enumerate(range(start, start + len(pred))):
                    pred[b, : len(sequences[k])] = torch.from_numpy(np.array(sequences[k], np.float32))
                values.append(float(term(pred, batch)["value"]) * len(pred))
            rows.append({"variant": name, "draw": draw, "value": sum(values) / len(dataset)})
    return pd.DataFrame(rows)
