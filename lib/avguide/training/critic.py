"""The critic stage: pretrain the speech–lip sync critic (avguide.models.critic) on the ground-truth meshes of the
3D corpus' training subjects, evaluate it on the val subjects, and freeze it for use as a loss.

Writes `out`::

    model/          the critic (safetensors + config.json)
    metrics.json    val loss, accuracy (and its chance level), shift margins, train_s

A plain PyTorch loop (AdamW, cosine decay, no Lightning): the model is small and trains in minutes on a CPU.
Augmentation: with probability one half an item is cut to a random span of at least half its length
(audio cut at the same times), so the critic cannot key on where a clip starts or ends.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from avguide.data.corpus import Corpus
from avguide.data.dataset import TalkingFaceDataset, collate
from avguide.models.checkpoint import load_checkpoint, save_checkpoint
from avguide.models.critic import CriticConfig, SyncCritic
from avguide.models.expert import lengths_to_mask
from avguide.params import project_root, set_threads

SHIFTS = (3, 5)  # frames: the audio offsets the shift margins are measured at


def lip_offsets(vertices: torch.Tensor, templates: torch.Tensor, lip_ids) -> torch.Tensor:
    """(B, T, V, 3) vertices and (B, V, 3) templates -> (B, T, L, 3) lip-vertex offsets from the template."""
    ids = torch.as_tensor(np.asarray(lip_ids), dtype=torch.long, device=vertices.device)
    return vertices[:, :, ids] - templates[:, None, ids]


def load_critic(folder: str | Path) -> SyncCritic:
    """A saved critic, frozen: evaluation mode, no gradient to its weights (gradients still reach its inputs)."""
    model = load_checkpoint(SyncCritic, CriticConfig, folder)
    model.eval().requires_grad_(False)
    return model


class RandomCrop:
    """Collate with random temporal crops: with probability `p` an item keeps a random span of at least `min_share`
    of its frames (and `min_frames`), its audio cut at the same times."""

    def __init__(self, generator: torch.Generator, fps: float, sample_rate: int, min_frames: int, p: float = 0.5):
        self.g, self.spf, self.min_frames, self.p = generator, sample_rate / fps, min_frames, p
        self.min_share = 0.5

    def __call__(self, items: list[dict]) -> dict:
        out = []
        for item in items:
            n = len(item["vertices"])
            low = min(n, max(self.min_frames, math.ceil(self.min_share * n)))
            if torch.rand((), generator=self.g) < self.p and low < n:
                m = int(torch.randint(low, n + 1, (), generator=self.g))
                a = int(torch.randint(0, n - m + 1, (), generator=self.g))
                audio = item["audio"][round(a * self.spf) : round((a + m) * self.spf)]
                item = {**item, "vertices": item["vertices"][a : a + m], "audio": audio}
            out.append(item)
        return collate(out)


def shifted_similarity(sim: torch.Tensor, n_frames: torch.Tensor, shift: int) -> tuple[float, int]:
    """Sum and count of the similarities of lip window t with audio window t + shift, both valid, over (B, T, T)."""
    t = sim.shape[1]
    if abs(shift) >= t:
        return 0.0, 0
    diag = torch.diagonal(sim, offset=shift, dim1=1, dim2=2)  # (B, T - |shift|): sim[b, t, t + shift]
    valid = lengths_to_mask(n_frames.to(sim.device) - abs(shift), diag.shape[1])
    return float(diag[valid].sum()), int(valid.sum())


@torch.no_grad()
def evaluate_critic(model: SyncCritic, loader: DataLoader, lip_ids) -> dict:
    """Over every valid frame of `loader`: loss, accuracy (lip window -> audio window), accuracy_chance (mean of
    1 / candidates) and shift_margin_k: mean cosine similarity of true pairs minus that of pairs whose audio is
    k frames early or late."""
    model.eval()
    sums = {"loss": 0.0, "accuracy": 0.0, "accuracy_chance": 0.0}
    pairs = {k: [0.0, 0] for k in (0, *SHIFTS)}
    frames = 0
    for batch in loader:
        n = batch["n_frames"]
        offsets = lip_offsets(batch["vertices"], batch["templates"], lip_ids)
        lips = model.embed_lips(offsets, n)[:, : int(n.max())]
        audio = model.embed_audio(batch["audio"], batch["audio_lengths"], n)
        logits = model.logits(lips, audio, n)
        valid = lengths_to_mask(n, logits.shape[1])
        count = int(valid.sum())
        frames += count
        sums["loss"] += float(model.info_nce(logits, n)) * count
        target = torch.arange(logits.shape[1]).expand_as(valid)
        sums["accuracy"] += float((logits.argmax(-1) == target)[valid].sum())
        sums["accuracy_chance"] += float((1 / torch.isfinite(logits).sum(-1)[valid]).sum())
        sim = model.similarity(lips, audio)
        for k in pairs:
            for shift in {k, -k}:
                s, c = shifted_similarity(sim, n, shift)
                pairs[k][0] += s
                pairs[k][1] += c
    metrics = {name: value / frames for name, value in sums.items()}
    true = pairs[0][0] / pairs[0][1]
    for k in SHIFTS:
        metrics[f"shift_margin_{k}"] = true - pairs[k][0] / max(pairs[k][1], 1)
    return metrics


def train_critic(
    corpus: Corpus | str | Path,
    out: str | Path,
    epochs: int = 10,
    lr: float = 1e-3,
    batch_size: int = 8,
    seed: int = 0,
    cfg_overrides: dict | None = None,
    progress: bool = True,
) -> dict:
    """Pretrain a SyncCritic on the training subjects' ground-truth meshes; write out/model and out/metrics.json
    (the val metrics of `evaluate_critic`, plus train_loss of the last epoch and train_s); return the metrics."""
    corpus = corpus if isinstance(corpus, Corpus) else Corpus(corpus)
    out = Path(out)
    fps = sorted({float(f) for f in corpus.manifest["fps"]})
    if len(fps) != 1:
        raise ValueError(f"{corpus.root / 'manifest.csv'}: the critic needs one frame rate; found fps {fps}")
    lip_ids = corpus.topology.lip_ids
    cfg = CriticConfig(n_lip_vertices=len(lip_ids), fps=fps[0], **(cfg_overrides or {}))

    torch.manual_seed(seed)
    model = SyncCritic(cfg)
    g = torch.Generator().manual_seed(seed)
    crop = RandomCrop(g, cfg.fps, cfg.sample_rate, min_frames=2 * cfg.window + 1)
    train = DataLoader(
        TalkingFaceDataset(corpus, "train", cache=True), batch_size, shuffle=True, generator=g, collate_fn=crop
    )
    val = DataLoader(TalkingFaceDataset(corpus, "val", cache=True), batch_size, collate_fn=collate)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, epochs * len(train)))

    start = time.perf_counter()
    train_loss = float("nan")
    for epoch in range(epochs):
        model.train()
        t0, total, steps = time.perf_counter(), 0.0, 0
        for batch in train:
            offsets = lip_offsets(batch["vertices"], batch["templates"], lip_ids)
            loss = model.loss(offsets, batch["audio"], batch["audio_lengths"], batch["n_frames"])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total, steps = total + loss.item(), steps + 1
        train_loss = total / steps
        if progress:
            print(f"critic epoch {epoch + 1}/{epochs}  loss {train_loss:.4f}  {time.perf_counter() - t0:.1f} s")
    train_s = time.perf_counter() - start

    metrics = evaluate_critic(model, val, lip_ids)
    metrics.update(train_loss=train_loss, train_s=round(train_s, 1))
    save_checkpoint(model, out / "model")
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
    return metrics


def pretrain_critic(params: dict, progress: bool = True) -> dict:
    """The pretrain_critic stage: train_critic on the corpus of params' prepare.out with params' pretrain_critic
    settings and seed, into pretrain_critic.out/ (model/, metrics.json)."""
    set_threads(params)
    s = params["pretrain_critic"]
    root = project_root()
    return train_critic(
        root / params["prepare"]["out"],
        root / s["out"],
        epochs=s["epochs"],
        lr=s["lr"],
        batch_size=s["batch_size"],
        seed=params["seed"],
        cfg_overrides=s.get("model"),
        progress=progress,
    )
