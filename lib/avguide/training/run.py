"""The `train` stage for one animator: fit on the corpus, save the model, score the test subjects."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
from dvclive.lightning import DVCLiveLogger
from torch.utils.data import DataLoader

from avguide.data.corpus import Corpus
from avguide.data.dataset import TalkingFaceDataset, collate
from avguide.models.registry import ANIMATORS
from avguide.params import project_root, set_threads
from avguide.scoring import score
from avguide.training.animator import AnimatorModule, SaveModel, borrow_style, make_trainer


def build_animator(name: str, settings: dict, corpus: Corpus):
    """Animator `name` sized for `corpus`, from its params.yaml section (`epochs` and `lr` are the trainer's)."""
    if name not in ANIMATORS:
        raise ValueError(f"unknown animator {name!r}; known: {sorted(ANIMATORS)}")
    model_cls, cfg_cls = ANIMATORS[name]
    fps = float(corpus.manifest["fps"].iloc[0])
    settings = {k: v for k, v in settings.items() if k not in ("epochs", "lr")}
    given = settings.get("pretrained_audio")
    if given:  # a relative folder is under the project root, as every params path
        settings["pretrained_audio"] = str(project_root() / given)
    cfg = cfg_cls(n_vertices=corpus.n_vertices, n_subjects=len(corpus.subjects["train"]), fps=fps, **settings)
    model = model_cls(cfg)
    if given:  # read once, above; recorded as params give it, so the saved bytes do not depend on where the project is
        model.cfg.pretrained_audio = given
    return model


def stage_settings(model, settings: dict, epochs: int, lr: float) -> list[tuple[object, int, float]]:
    """(stage, epochs, lr) for each training stage of `model`: one stage (None) unless the model declares
    `stages` (CodeTalker: the VQ-VAE, then the predictor). `epochs` and `lr` in the animator's section are
    a number or one number per stage; without them the trainer's max_epochs and train.lr."""
    stages = getattr(model, "stages", (None,))
    out = []
    for key, default in (("epochs", epochs), ("lr", lr)):
        value = settings.get(key, default)
        value = list(value) if isinstance(value, (list, tuple)) else [value] * len(stages)
        if len(value) != len(stages):
            raise ValueError(f"{key}: expected {len(stages)} numbers (one per training stage), got {value}")
        out.append(value)
    return list(zip(stages, out[0], [float(x) for x in out[1]]))


@torch.no_grad()
def predict_split(model, dataset: TalkingFaceDataset, style: int = 0, batch_size: int = 8):
    """Predicted and true (T, V, 3) sequences and templates of a split; unseen subjects take `style`."""
    model.eval()
    pred, true, templates = [], [], []
    for batch in DataLoader(dataset, batch_size=batch_size, collate_fn=collate):
        ids = borrow_style(batch["subject_ids"], style)
        out = model.predict(batch["audio"], batch["audio_lengths"], batch["n_frames"], batch["templates"], ids)
        for b, n in enumerate(batch["n_frames"].tolist()):
            pred.append(out[b, :n].numpy())
            true.append(batch["vertices"][b, :n].numpy())
            templates.append(batch["templates"][b].numpy())
    return pred, true, templates


def fit(
    module: pl.LightningModule,
    corpus: Corpus,
    cfg: dict,
    out: Path,
    epochs: int,
    live: Path,
    progress: bool = True,
    datasets: tuple | None = None,
) -> None:
    """Fit `module` on the corpus' train split (validating on val) for `epochs` with params['train'] settings;
    the animator is saved to out/model at the end, curves go to `live` (DVCLive)."""
    train, val = datasets or (
        TalkingFaceDataset(corpus, "train", cache=True),
        TalkingFaceDataset(corpus, "val", cache=True),
    )
    loaders = dict(batch_size=cfg["batch_size"], collate_fn=collate, num_workers=0)
    logger = DVCLiveLogger(dir=str(live), save_dvc_exp=False, dvcyaml=False)
    trainer = make_trainer(
        {**cfg["trainer"], "max_epochs": epochs},
        out,
        logger=logger,
        enable_progress_bar=progress,
        enable_checkpointing=False,
        callbacks=[SaveModel(out / "model")],
    )
    trainer.fit(module, DataLoader(train, shuffle=True, **loaders), DataLoader(val, **loaders))


def fit_stages(model, stages, corpus, cfg, out, progress, datasets, last_module=None) -> None:
    """Fit `model` stage by stage ((stage, epochs, lr) of `stage_settings`) with its own loss, the last stage with
    `last_module(lr)` instead when given (a guided loss); the last stage logs to out/dvclive/, earlier ones to
    out/dvclive/stage<k>/."""
    for stage, epochs, lr in stages:
        if stage is not None:
            model.set_stage(stage)
        last = stage == stages[-1][0]
        module = last_module(lr) if last and last_module else AnimatorModule(model, lr=lr)
        live = out / "dvclive" if last else out / "dvclive" / f"stage{stage}"
        fit(module, corpus, cfg, out, epochs, live, progress, datasets)


def train_animator(params: dict, name: str, progress: bool = True) -> dict:
    """Train animator `name` with params['train'], write train.out/<name>/ (weights, config, metrics.json)."""
    set_threads(params)
    cfg = params["train"]
    pl.seed_everything(params["seed"], workers=True)
    root = project_root()
    corpus = Corpus(root / params["prepare"]["out"])
    out = root / cfg["out"] / name
    datasets = (TalkingFaceDataset(corpus, "train", cache=True), TalkingFaceDataset(corpus, "val", cache=True))
    model = build_animator(name, cfg[name], corpus)
    stages = stage_settings(model, cfg[name], cfg["trainer"]["max_epochs"], cfg["lr"])
    start = time.perf_counter()
    fit_stages(model, stages, corpus, cfg, out, progress, datasets)
    metrics, _ = score(*predict_split(model, TalkingFaceDataset(corpus, "test", cache=True)), corpus.topology)
    metrics["train_s"] = round(time.perf_counter() - start, 1)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
    return metrics
