"""Training an animator (FaceFormer, CodeTalker) with Lightning: batched, masked, on any device, with DDP."""

from __future__ import annotations

import time
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch import nn

from avguide.losses import LossSetting, MotionBasis, animator_loss
from avguide.models.checkpoint import save_checkpoint


def borrow_style(subject_ids: torch.Tensor, style: int) -> torch.Tensor:
    """Subject ids with every unseen subject (-1) given training style `style`."""
    return torch.where(subject_ids < 0, torch.full_like(subject_ids, style), subject_ids)


class AnimatorModule(pl.LightningModule):
    """Wraps an animator whose `loss(batch)` takes a collated batch (avguide.data.dataset.collate).

    Subjects unseen in training (subject id -1: validation and test speakers) borrow the style of
    training subject `unseen_style`, as FaceFormer conditions its test subjects on a training style.
    With a loss `setting` the training loss is avguide.losses.animator_loss (its perceptual term needs `term`,
    and `basis` when the setting projects the term's gradient), each part logged, and every `diagnose_every`
    steps the gradient diagnostics of each part on the lip vertices; validation always reports the animator's
    own loss. A term that trains jointly (a reader with `joint`) learns at `term_lr`.
    """

    def __init__(
        self,
        model: nn.Module,
        lr: float = 1e-4,
        unseen_style: int = 0,
        setting: LossSetting | None = None,
        term: nn.Module | None = None,
        lip_ids=None,
        basis: MotionBasis | None = None,
        term_lr: float | None = None,
        diagnose_every: int = 10,
    ):
        super().__init__()
        self.model, self.term, self.basis = model, term, basis
        self.lr, self.term_lr = lr, term_lr
        self.unseen_style = unseen_style
        self.setting, self.lip_ids, self.diagnose_every = setting, lip_ids, diagnose_every

    def _styled(self, batch: dict) -> dict:
        return {**batch, "subject_ids": borrow_style(batch["subject_ids"], self.unseen_style)}

    def training_step(self, batch, batch_idx):
        n = len(batch["n_frames"])
        if self.setting is None:
            loss = self.model.loss(self._styled(batch))
            self.log("train/loss", loss, batch_size=n, prog_bar=True, sync_dist=True)
            return loss
        diagnose = self.global_step % self.diagnose_every == 0
        parts = animator_loss(
            self.model, self._styled(batch), self.setting, self.lip_ids, self.term, self.basis, diagnose
        )
        for name, value in parts.items():
            self.log(f"train/{name}", value, batch_size=n, prog_bar=name == "loss", sync_dist=True)
        return parts["loss"]

    def validation_step(self, batch, batch_idx):
        loss = self.model.loss(self._styled(batch))
        self.log("val/loss", loss, batch_size=len(batch["n_frames"]), prog_bar=True, sync_dist=True)

    def configure_optimizers(self):
        """Adam over the animator (at `lr`) and over a jointly trained term (at `term_lr`), each learning rate
        decayed along a cosine to zero over the whole run."""
        groups = [{"params": [p for p in self.model.parameters() if p.requires_grad], "lr": self.lr}]
        joint = [p for p in self.term.parameters() if p.requires_grad] if self.term is not None else []
        if joint:
            if self.term_lr is None:
                raise ValueError("a jointly trained term needs its own learning rate (guide.expert_lr_joint)")
            groups.append({"params": joint, "lr": self.term_lr})
        opt = torch.optim.Adam(groups)
        steps = max(1, int(self.trainer.estimated_stepping_batches))
        return {
            "optimizer": opt,
            "lr_scheduler": {"scheduler": torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps), "interval": "step"},
        }


class SaveModel(pl.Callback):
    """Writes the animator as safetensors + JSON config at the end of training (rank 0 only)."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)

    def on_train_end(self, trainer, module):
        if trainer.is_global_zero:
            save_checkpoint(module.model, self.folder)


def make_trainer(cfg: dict, root: str | Path, **overrides) -> pl.Trainer:
    """A Trainer from a params.yaml `trainer` section: accelerator, devices, strategy, num_nodes,
    max_epochs, precision, gradient_clip_val, log_every_n_steps; `root` holds checkpoints and logs."""
    allowed = {
        "accelerator",
        "devices",
        "strategy",
        "num_nodes",
        "max_epochs",
        "max_steps",
        "precision",
        "gradient_clip_val",
        "log_every_n_steps",
        "check_val_every_n_epoch",
    }
    unknown = sorted(set(cfg) - allowed)
    if unknown:
        raise ValueError(f"unknown trainer settings {unknown}; allowed: {sorted(allowed)}")
    callbacks = [*overrides.pop("callbacks", []), EpochLog()]
    return pl.Trainer(default_root_dir=str(root), callbacks=callbacks, **{**cfg, **overrides})


class EpochLog(pl.Callback):
    """One line per training epoch on stdout, with its time and the figures logged so far: what a stage shows
    while `make reproduce` runs it (papermill --log-output passes the notebook's output on as it comes)."""

    started = 0.0

    def on_train_start(self, trainer, module):  # a resumed run may start in the middle of an epoch
        self.started = time.monotonic()

    def on_train_epoch_start(self, trainer, module):
        self.started = time.monotonic()

    def on_train_epoch_end(self, trainer, module):
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        figures = ", ".join(
            f"{k} {v.item():.4g}" for k, v in sorted(trainer.callback_metrics.items()) if v.numel() == 1
        )
        seconds = time.monotonic() - self.started
        print(
            f"{trainer.default_root_dir}: epoch {trainer.current_epoch + 1}/{trainer.max_epochs} "
            f"({seconds:.0f} s) {figures}",
            flush=True,
        )
