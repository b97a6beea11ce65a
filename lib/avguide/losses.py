"""The animators' training losses: a loss setting (params.yaml guide.weights.<name>, `LossSetting`) is

    L = mse·L_mse + rlv·L_rlv + λ·L_term

L_mse: vertex MSE over the real frames; L_rlv: the same on the lip vertices only (m²). L_term, at most one
perceptual term (`LossSetting.term`):

  reader   the paper's L_av: the predicted vertices rendered at the mouth (avguide.render.mouth.MouthView) and read
           by a lip-reading expert together with the speech, `audio_mask` of it zeroed in 0.2 s chunks (1.0: the
           expert reads the lips alone), CTC and cross-entropy against the transcript (`ReaderTerm`). The reader
           trains jointly with the animator (`joint`, as the paper) or stays frozen; `detach` cuts the renders from
           the vertices (the paper's public code: only the reader learns); reader "random" is a randomly
           initialised frozen reader (the placebo).
  feature  perceptual feature matching (`FeatureTerm`): a frozen reader's visual features of the rendered
           prediction against its features of the ground truth rendered the same way.
  critic   a frozen speech–lip contrastive critic on lip-vertex motion windows (`CriticTerm`): no renderer.

λ is `weight`, or, with `grad_ratio`, calibrated on the first training batches (`calibrate`) so that the term's
mean gradient norm on the lip vertices is that share of the vertex terms'. The term's gradient can be conditioned:
renders blurred before the reader (`blur_px`), dL_term/dv projected onto the leading principal motions of the
training offsets (`basis`, `MotionBasis`). `gradient_diagnostics` measures what each part of the loss does to the
lip vertices. CodeTalker adds its feature regression (the animator's own auxiliary term) in every setting.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from avguide.models.augment import mask_chunks
from avguide.render.filters import gaussian_blur

TERMS = ("reader", "feature", "critic")
READERS = ("expert", "random")
AUDIO_CHUNK_S = 0.2  # the expert's masked-audio test masks 0.2 s chunks too


@dataclass
class LossSetting:
    """One named loss setting of guide.weights (see the module docstring)."""

    mse: float = 1.0
    rlv: float = 0.0
    term: str | None = None  # reader | feature | critic
    weight: float = 0.0  # λ of the term (with grad_ratio: set by `calibrate`)
    grad_ratio: float | None = None  # λ calibrated so the term's lip gradient is this share of the vertex terms'
    ctc: float = 0.1  # reader: L_term = ctc·CTC + ce·CE
    ce: float = 0.9
    label_smoothing: float = 0.1  # reader: of the cross-entropy
    audio_mask: float = 0.0  # reader: share of the speech zeroed before reading (1.0: lips only)
    reader: str = "expert"  # reader: the fine-tuned expert, or "random" (a random frozen reader: the placebo)
    joint: bool = False  # reader: trains with the animator, at guide.expert_lr_joint
    detach: bool = False  # reader: renders cut from the vertices (the animator gets no gradient from the term)
    blur_px: float = 0.0  # reader, feature: Gaussian blur (sigma, pixels of the reader's frames) before reading
    basis: int = 0  # dL_term/dv projected onto this many principal motions of the training offsets (0: none)
    from_start: bool = False  # guidance from the start: the animator trained from its initialisation on train's
    # schedule with this loss (a multi-stage animator's earlier stages without the term), not the baseline fine-tuned

    def __post_init__(self):
        where = "guide.weights"
        if self.term is None:
            return
        if self.term not in TERMS:
            raise ValueError(f"{where}: term must be one of {TERMS} or absent; found {self.term!r}")
        if self.reader not in READERS:
            raise ValueError(f"{where}: reader must be one of {READERS}; found {self.reader!r}")
        if self.grad_ratio is None and self.weight <= 0 and not self.detach:
            raise ValueError(f"{where}: a term needs weight > 0 or grad_ratio; found weight {self.weight}")
        if self.grad_ratio is not None and (self.grad_ratio <= 0 or self.detach):
            raise ValueError(f"{where}: grad_ratio must be > 0, and cannot calibrate a detached term")
        if (self.joint or self.detach) and (self.term != "reader" or self.reader != "expert"):
            raise ValueError(f"{where}: only the expert reader (term: reader) can train jointly or be detached")
        if self.detach and not self.joint:
            raise ValueError(f"{where}: a detached term with a frozen reader trains nothing; set joint: true")
        if not 0 <= self.audio_mask <= 1:
            raise ValueError(f"{where}: audio_mask must be in [0, 1]; found {self.audio_mask}")

    @property
    def vertex_terms(self) -> bool:
        return bool(self.mse or self.rlv)


def vertex_mse(pred: torch.Tensor, true: torch.Tensor, frame_mask: torch.Tensor, ids=None) -> torch.Tensor:
    """Mean squared error (m²) of (B, T, V, 3) vertices over the real frames (frame_mask (B, T)), over all
    vertices or over `ids` only."""
    if ids is not None:
        ids = torch.as_tensor(ids, device=pred.device, dtype=torch.long)
        pred, true = pred[:, :, ids], true[:, :, ids]
    mask = frame_mask[..., None, None].to(pred.dtype)
    return ((pred - true) ** 2 * mask).sum() / (mask.sum() * pred.shape[-2] * 3)


def blur_frames(video: torch.Tensor, sigma: float) -> torch.Tensor:
    """(B, T, H, W) frames, each blurred (Gaussian, sigma pixels)."""
    if sigma <= 0:
        return video
    b, t, h, w = video.shape
    return gaussian_blur(video.reshape(b * t, h, w), sigma).reshape(b, t, h, w)


class FrozenModule(nn.Module):
    """A term whose model is frozen unless `joint`: no gradient to its weights, and evaluation mode whatever
    mode its owner is put in, and checked again on every call (under Lightning nothing calls `train()` on the
    term: the mode is set here, not trusted)."""

    def __init__(self, model: nn.Module, joint: bool = False):
        super().__init__()
        self.model, self.joint = model, joint
        model.requires_grad_(joint)
        model.train(joint)

    def train(self, mode: bool = True):
        super().train(mode)
        self.model.train(mode and self.joint)
        return self

    def frozen_check(self) -> None:
        if not self.joint and self.model.training:
            self.model.eval()


class ReaderTerm(FrozenModule):
    """L_term = ctc·CTC + ce·CE of `reader` (an avguide.models.expert.Expert) on the rendered mouths of the
    predicted vertices with the speech, `setting.audio_mask` of it zeroed in 0.2 s chunks (random on each
    call). Returns {"value", "ctc", "ce"}."""

    def __init__(self, reader: nn.Module, view, setting: LossSetting):
        super().__init__(reader, setting.joint)
        self.view, self.setting = view, setting

    def forward(self, vertices: torch.Tensor, batch: dict) -> dict[str, torch.Tensor]:
        self.frozen_check()
        s, reader = self.setting, self.model
        n_frames, audio_lengths = batch["n_frames"], batch["audio_lengths"]
        audio = batch["audio"][:, : int(audio_lengths.max())]
        if s.audio_mask:
            chunk = int(AUDIO_CHUNK_S * reader.cfg.sample_rate)
            audio = mask_chunks(audio, audio_lengths, s.audio_mask, chunk)
        vertices = vertices.detach() if s.detach else vertices
        video = self.view.batch(vertices[:, : int(n_frames.max())], batch["templates"], n_frames)
        parts = reader.loss(
            blur_frames(video, s.blur_px),
            self.view.lengths(n_frames),
            audio,
            audio_lengths,
            batch["tokens"],
            batch["token_lengths"],
            label_smoothing=s.label_smoothing,
        )
        return {"value": s.ctc * parts.ctc + s.ce * parts.ce, "ctc": parts.ctc, "ce": parts.ce}


class FeatureTerm(FrozenModule):
    """Perceptual feature matching: mean squared distance, over the real frames, between a frozen reader's visual
    features (`Expert.video_features`: its visual conformer's output, what it knows from the lips with the
    clip's context) of the rendered prediction and of the rendered ground truth, both through the same view and
    blur, so there is no domain gap and the minimum is the ground truth. The ground truth's features are
    computed once per utterance and kept. Returns {"value"}."""

    def __init__(self, reader: nn.Module, view, setting: LossSetting):
        super().__init__(reader, joint=False)
        self.view, self.setting = view, setting
        self.reference: dict[str, torch.Tensor] = {}

    def features(self, vertices: torch.Tensor, templates: torch.Tensor, n_frames: torch.Tensor) -> torch.Tensor:
        video = self.view.batch(vertices[:, : int(n_frames.max())], templates, n_frames)
        return self.model.video_features(blur_frames(video, self.setting.blur_px), self.view.lengths(n_frames))

    def forward(self, vertices: torch.Tensor, batch: dict) -> dict[str, torch.Tensor]:
        self.frozen_check()
        n_frames = batch["n_frames"]
        n_read = self.view.lengths(n_frames)  # the frames the reader reads (the view may retime them)
        missing = [b for b, u in enumerate(batch["utterances"]) if u not in self.reference]
        if missing:
            with torch.no_grad():
                idx = torch.tensor(missing, device=n_frames.device)
                ref = self.features(batch["vertices"][idx], batch["templates"][idx], n_frames[idx])
            for k, b in enumerate(missing):
                self.reference[batch["utterances"][b]] = ref[k, : int(n_read[b])].detach()
        pred = self.features(vertices, batch["templates"], n_frames)
        ref = torch.zeros_like(pred)
        for b, u in enumerate(batch["utterances"]):
            ref[b, : int(n_read[b])] = self.reference[u].to(pred.device)
        mask = torch.arange(pred.shape[1], device=pred.device)[None] < n_read.to(pred.device)[:, None]
        return {"value": ((pred - ref) ** 2).mean(-1)[mask].mean()}


class CriticTerm(FrozenModule):
    """The InfoNCE loss of a frozen speech–lip critic (avguide.models.critic.SyncCritic) on the predicted
    lip-vertex offsets from the template: true speech windows must score above the clip's other windows, so
    missing or mistimed lip motion costs. Acts on the vertices directly. Returns {"value"}."""

    def __init__(self, critic: nn.Module, lip_ids):
        super().__init__(critic, joint=False)
        self.register_buffer("lip_ids", torch.as_tensor(np.asarray(lip_ids), dtype=torch.long), persistent=False)

    def forward(self, vertices: torch.Tensor, batch: dict) -> dict[str, torch.Tensor]:
        self.frozen_check()
        ids = self.lip_ids.to(vertices.device)
        offsets = vertices[:, :, ids] - batch["templates"][:, None, ids]
        return {"value": self.model.loss(offsets, batch["audio"], batch["audio_lengths"], batch["n_frames"])}


class _Project(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, basis):
        ctx.save_for_backward(basis)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        (basis,) = ctx.saved_tensors
        g = grad.reshape(*grad.shape[:2], -1)
        return ((g @ basis) @ basis.T).reshape(grad.shape), None


class MotionBasis:
    """The leading principal directions (V·3, k) of the training offsets (vertices minus template, every frame of
    every training clip): `project(x)` is x in the forward pass, and in the backward pass projects dL/dx of each
    frame onto these motions, so a term's gradient moves the face only the ways faces move (the soft rasterizer's
    gradient is concentrated on a few silhouette vertices; its projection is smooth over the mesh)."""

    def __init__(self, basis: torch.Tensor):
        self.basis = basis

    @classmethod
    def of_offsets(cls, offsets: np.ndarray, k: int, seed: int = 0) -> MotionBasis:
        """From (N, V·3) offsets; uncentred (the template is the rest pose)."""
        if k < 1 or k > min(offsets.shape):
            raise ValueError(f"basis: need 1 <= k <= {min(offsets.shape)} principal motions; got {k}")
        x = torch.as_tensor(np.asarray(offsets, np.float64))
        values, vectors = torch.linalg.eigh(x @ x.T)  # N x N Gram matrix: N frames << V·3
        top = vectors[:, -k:].flip(1)
        basis = x.T @ top / values[-k:].flip(0).clamp_min(1e-30).sqrt()  # the right singular vectors
        signs = torch.sign(basis[basis.abs().argmax(0), torch.arange(k)])  # a fixed sign per motion
        return cls((basis * signs).float().contiguous())

    def project(self, x: torch.Tensor) -> torch.Tensor:
        return _Project.apply(x, self.basis.to(x.device, x.dtype))


def animator_loss(
    model: nn.Module,
    batch: dict,
    setting: LossSetting,
    lip_ids,
    term: nn.Module | None = None,
    basis: MotionBasis | None = None,
    diagnose: bool = False,
) -> dict[str, torch.Tensor]:
    """The weighted loss ("loss") and its parts on a collated batch; with `diagnose`, `gradient_diagnostics` of
    the vertex terms and of the weighted perceptual term."""
    pred, aux = model.training_prediction(batch)
    parts = {"mse": vertex_mse(pred, batch["vertices"], batch["frame_mask"])}
    vertex = setting.mse * parts["mse"]
    if setting.rlv:
        parts["rlv"] = vertex_mse(pred, batch["vertices"], batch["frame_mask"], lip_ids)
        vertex = vertex + setting.rlv * parts["rlv"]
    total = vertex + aux
    weighted = None
    if setting.term:
        if term is None:
            raise ValueError(f"loss setting with term {setting.term!r} needs its term module (ReaderTerm, ...)")
        out = term(basis.project(pred) if basis is not None and setting.basis else pred, batch)
        parts.update({("term" if k == "value" else k): v for k, v in out.items()})
        weighted = setting.weight * out["value"]
        total = total + weighted
    if diagnose:
        named = {"vertex": vertex} | ({"term": weighted} if weighted is not None else {})
        parts.update(gradient_diagnostics(named, pred, batch["vertices"], batch["frame_mask"], lip_ids))
    parts["loss"] = total
    return parts


def lip_gradients(loss: torch.Tensor, pred: torch.Tensor, frame_mask: torch.Tensor, lip_ids) -> torch.Tensor:
    """d(loss)/d(pred) on the lip vertices of the real frames, (N frames, L, 3); zeros where loss does not
    depend on pred."""
    (grad,) = torch.autograd.grad(loss, pred, retain_graph=True, allow_unused=True)
    ids = torch.as_tensor(np.asarray(lip_ids), device=pred.device, dtype=torch.long)
    grad = torch.zeros_like(pred) if grad is None else grad.detach()
    return grad[:, :, ids][frame_mask]


def gradient_diagnostics(
    parts: dict[str, torch.Tensor], pred: torch.Tensor, true: torch.Tensor, frame_mask: torch.Tensor, lip_ids
) -> dict[str, torch.Tensor]:
    """What each (weighted) part of the loss does to the lip vertices of the real frames:

    grad_lip_<part>  mean L2 norm of d(part)/d(vertex)
    cos_<part>       cosine between -d(part)/dv and (true - pred): +1 moves the lips straight to the truth
    ratio_<part>     grad_lip_<part> over grad_lip_vertex (the vertex terms'), for every part but "vertex"
    """
    ids = torch.as_tensor(np.asarray(lip_ids), device=pred.device, dtype=torch.long)
    error = (true - pred).detach()[:, :, ids][frame_mask].reshape(-1)
    out = {}
    for name, loss in parts.items():
        g = lip_gradients(loss, pred, frame_mask, lip_ids)
        out[f"grad_lip_{name}"] = g.norm(dim=-1).mean()
        out[f"cos_{name}"] = torch.nn.functional.cosine_similarity(-g.reshape(-1), error, dim=0, eps=1e-30)
    for name in parts:
        if name != "vertex" and "vertex" in parts:
            out[f"ratio_{name}"] = out[f"grad_lip_{name}"] / out["grad_lip_vertex"].clamp_min(1e-30)
    return out


def calibrate(
    model: nn.Module,
    batches,
    setting: LossSetting,
    lip_ids,
    term: nn.Module,
    basis: MotionBasis | None = None,
) -> dict[str, float]:
    """Set `setting.weight` so the term's mean lip gradient is `setting.grad_ratio` times the vertex terms', on the
    median over `batches` (collated training batches; no update is made). Returns the measured norms and λ."""
    if setting.grad_ratio is None or not setting.vertex_terms:
        raise ValueError("calibrate needs a setting with grad_ratio and vertex terms (mse or rlv)")
    term_norms, vertex_norms = [], []
    was_training = model.training
    model.train()
    for batch in batches:
        unit = LossSetting(**{**setting.__dict__, "weight": 1.0, "grad_ratio": None})
        d = animator_loss(model, batch, unit, lip_ids, term, basis, diagnose=True)
        term_norms.append(float(d["grad_lip_term"]))
        vertex_norms.append(float(d["grad_lip_vertex"]))
    model.train(was_training)
    term_norm, vertex_norm = float(np.median(term_norms)), float(np.median(vertex_norms))
    if term_norm <= 0:
        raise ValueError(f"calibrate: the {setting.term} term has no gradient on the lip vertices")
    setting.weight = setting.grad_ratio * vertex_norm / term_norm
    return {"weight": setting.weight, "grad_lip_term_unit": term_norm, "grad_lip_vertex": vertex_norm}
