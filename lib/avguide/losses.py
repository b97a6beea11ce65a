"""The animators' training losses, the paper's

    L = λ_mse·L_mse + λ_av·(λ_ctc·L_ctc + λ_ce·L_ce) + λ_rlv·L_rlv

L_mse: vertex MSE over the real frames; L_rlv: the same on the lip vertices only; L_av: the predicted
vertices rendered at the mouth (avguide.render.mouth.MouthView), read by the audio-visual expert together
with the speech (time-masked and noised as in the expert's training, so the video has to carry the
words), CTC and label-smoothed cross-entropy against the transcript. CodeTalker adds its feature
regression (the animator's own auxiliary term) in every configuration.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from avguide.models.augment import AugmentConfig, augment_av


@dataclass
class LossWeights:
    mse: float = 1.0
    rlv: float = 0.0
    av: float = 0.0
    ctc: float = 0.1
    ce: float = 0.9


def vertex_mse(pred: torch.Tensor, true: torch.Tensor, frame_mask: torch.Tensor, ids=None) -> torch.Tensor:
    """Mean squared error (m²) of (B, T, V, 3) vertices over the real frames (frame_mask (B, T)), over all
    vertices or over `ids` only."""
    if ids is not None:
        ids = torch.as_tensor(ids, device=pred.device, dtype=torch.long)
        pred, true = pred[:, :, ids], true[:, :, ids]
    mask = frame_mask[..., None, None].to(pred.dtype)
    return ((pred - true) ** 2 * mask).sum() / (mask.sum() * pred.shape[-2] * 3)


class AVGuidance(nn.Module):
    """L_av's parts: render the predicted mouths, let the expert read them with the speech. With
    `update_expert` the expert trains jointly with the animator (as the paper); otherwise it is frozen and
    stays in evaluation mode (no dropout). Only the first `items` clips of a batch are rendered and read
    (rendering with gradients is the cost: benchmarks/render.py); None reads them all. The view's
    `render_size` sets the rasterizer's resolution (avguide.render.mouth.MouthView)."""

    def __init__(
        self,
        expert: nn.Module,
        view,
        augment: AugmentConfig | None = None,
        update_expert: bool = True,
        items: int | None = None,
    ):
        super().__init__()
        self.expert, self.view, self.augment, self.update_expert = expert, view, augment, update_expert
        self.items = items
        self.expert.requires_grad_(update_expert)

    def train(self, mode: bool = True) -> AVGuidance:
        super().train(mode)
        self.expert.train(mode and self.update_expert)
        return self

    def forward(self, vertices: torch.Tensor, batch: dict):
        """ExpertLoss (loss, ctc, ce) of the rendered (B, T, V, 3) vertices of a collated batch (of its
        first `items` clips)."""
        k = slice(0, self.items)
        n_frames, audio_lengths = batch["n_frames"][k], batch["audio_lengths"][k]
        audio = batch["audio"][k, : int(audio_lengths.max())]
        video = self.view.batch(vertices[k, : int(n_frames.max())], batch["templates"][k], n_frames)
        if self.augment is not None:
            video, audio = augment_av(video, n_frames, audio, audio_lengths, self.augment)
        return self.expert.loss(video, n_frames, audio, audio_lengths, batch["tokens"][k], batch["token_lengths"][k])


def animator_loss(
    model: nn.Module,
    batch: dict,
    weights: LossWeights,
    lip_ids,
    guidance: AVGuidance | None = None,
    diagnose: bool = False,
) -> dict[str, torch.Tensor]:
    """The weighted loss ("loss") and its terms on a collated batch. With `diagnose`, also the mean norm of
    dL_av/d(vertex) over lip vertices and over the other vertices (real frames only)."""
    pred, aux = model.training_prediction(batch)
    terms = {"mse": vertex_mse(pred, batch["vertices"], batch["frame_mask"])}
    total = weights.mse * terms["mse"] + aux
    if weights.rlv:
        terms["rlv"] = vertex_mse(pred, batch["vertices"], batch["frame_mask"], lip_ids)
        total = total + weights.rlv * terms["rlv"]
    if weights.av:
        if guidance is None:
            raise ValueError("weights.av > 0 needs an AVGuidance (the expert and the mouth renderer)")
        parts = guidance(pred, batch)
        terms["ctc"], terms["ce"] = parts.ctc, parts.ce
        av = weights.ctc * parts.ctc + weights.ce * parts.ce
        total = total + weights.av * av
        if diagnose:  # over the clips L_av read
            terms.update(av_gradient_norms(av, pred, batch["frame_mask"][: guidance.items], lip_ids))
    terms["loss"] = total
    return terms


def av_gradient_norms(
    av: torch.Tensor, pred: torch.Tensor, frame_mask: torch.Tensor, lip_ids
) -> dict[str, torch.Tensor]:
    """Mean L2 norm of d(av)/d(vertex) on the lip vertices and on all the others, over the real frames."""
    (grad,) = torch.autograd.grad(av, pred, retain_graph=True)
    norms = grad.detach()[: len(frame_mask)].norm(dim=-1)[frame_mask]  # (N real frames, V)
    lips = torch.zeros(norms.shape[-1], dtype=torch.bool, device=norms.device)
    lips[torch.as_tensor(lip_ids, device=norms.device, dtype=torch.long)] = True
    return {"grad_lip": norms[:, lips].mean(), "grad_nonlip": norms[:, ~lips].mean()}
