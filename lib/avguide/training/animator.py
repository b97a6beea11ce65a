"""Training an animator (FaceFormer, CodeTalker) with Lightning: batched, masked, on any device, with DDP."""
from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
import torch
from torch import nn

from avguide.models.checkpoint import save_checkpoint


def borrow_style(subject_ids: torch.Tensor, style: int) -> torch.Tensor:
    """Subject ids with every unseen subject (-1) given training style `style`."""
    return torch.where(subject_ids < 0, torch.full_like(subject_ids, style), subject_ids)


class AnimatorModule(pl.LightningModule):
    """Wraps an animator whose `loss(batch)` takes a collated batch (avguide.data.dataset.collate).

    Subjects unseen in training (subject id -1: validation and test speakers) borrow the style of
    training subject `unseen_style`, as FaceFormer conditions its test subjects on a training style.
    """

    def __init__(self, model: nn.Module, lr: float = 1e-4, unseen_style: int = 0):
        super().__init__()
        self.model = model
        self.lr = lr
        self.unseen_style = unseen_style

    def _styled(self, batch: dict) -> dict:
        return {**batch, "subject_ids": borrow_style(batch["subject_ids"], self.unseen_style)}

    def training_step(self, batch, batch_idx):
        loss = self.model.loss(self._styled(batch))
        self.log("train/loss", loss, batch_size=len(batch["n_frames"]), prog_bar=True, sync_dist=True)
        return loss

    def validation_step(self, batch, batch_idx):
        loss = self.model.loss(self._styled(batch))
        self.log("val/loss", loss, batch_size=len(batch["n_frames"]), prog_bar=True, sync_dist=True)

    def configure_optimizers(self):
        """Adam, its learning rate decayed along a cosine to zero over the whole run."""
        opt = torch.optim.Adam([p for p in self.model.parameters() if p.requires_grad], lr=self.lr)
        steps = max(1, int(self.trainer.estimated_stepping_batches))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps),
                                                   "interval": "step"}}


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
    allowed = {"accelerator", "devices", "strategy", "num_nodes", "max_epochs", "max_steps", "precision",
               "gradient_clip_val", "log_every_n_steps", "check_val_every_n_epoch"}
    unknown = sorted(set(cfg) - allowed)
    if unknown:
        raise ValueError(f"unknown trainer settings {unknown}; allowed: {sorted(allowed)}")
    return pl.Trainer(default_root_dir=str(root), **{**cfg, **overrides})
