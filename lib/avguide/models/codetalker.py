"""CodeTalker (Xing et al., CVPR 2023): speech-driven 3D facial animation as code-query prediction.

Stage 1 learns a discrete prior of facial motion: a VQ-VAE over vertex-offset sequences (transformer
encoder, a codebook of `n_codes` entries with each frame quantised as `codes_per_frame` codes, transformer
decoder), trained to reconstruct motion with a codebook and a commitment loss.
Stage 2 freezes it and learns an audio-conditioned autoregressive predictor (FaceFormer's decoder: wav2vec
2.0, periodic positional encoding, biased causal self-attention, alignment cross-attention) whose output
features are quantised with the codebook and decoded into motion; its loss is the motion error plus a
regression of the features onto the ground truth's codes.

Differences from the public code: batched training with padding masks; the VQ decoder is causal (frame t
depends on the codes of frames <= t), so inference decodes each frame once with key/value caches, linear
in length, where the public code re-decodes the whole prefix every frame; a small random wav2vec 2.0 by
default (a local wav2vec2-base-960h with `pretrained_audio`).

`vq_arch = "official"` (converted published checkpoints, avguide.convert.codetalker; inference only) builds the
public model instead: its VQ-VAE (avguide.models.codetalker_official, `vq_variant` "vocaset" or "biwi"), a
bias-free `feat_map`, the public audio alignment (`audio_align`) and the public prediction loop (official_rollout):
each frame the predictor's feature is quantised with those of the frames before, the whole prefix is decoded
(non-causally) and the last decoded frame is fed back; at the end the whole code sequence is decoded once more,
and that is the output.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from avguide.losses import vertex_mse
from avguide.models import codetalker_official as official
from avguide.models.checkpoint import optional
from avguide.models.faceformer import (
    Attention,
    AudioEncoder,
    DecoderLayer,
    alibi_slopes,
    alignment_bias,
    biased_causal_mask,
    check_styles,
    periodic_positional_encoding,
)


@dataclass
class CodeTalkerConfig:
    n_vertices: int
    n_subjects: int  # training subjects (style embeddings)
    fps: float = 25.0
    feature_dim: int = 64  # width of the stage-2 predictor
    period: int = 25  # of the positional encoding and the attention biases
    n_heads: int = 4
    n_layers: int = 1  # predictor decoder layers
    vq_dim: int = 64  # width of the VQ-VAE; a frame's latent is codes_per_frame codes of vq_dim / codes_per_frame
    vq_layers: int = 1  # transformer layers of the VQ encoder and of the VQ decoder
    n_codes: int = 256
    codes_per_frame: int = 4  # the paper's face_quan_num
    beta: float = 0.25  # commitment weight
    reg_weight: float = 1.0  # stage 2: weight of the feature regression onto the ground truth's codes
    dropout: float = 0.1  # of the predictor (the VQ-VAE has none: it is frozen in stage 2)
    max_frames: int = 3000
    teacher_forcing: bool = True  # stage 2 on the shifted ground truth as the public code; False: own rollout
    motion_scale: float = 100.0  # offsets are learnt in centimetres; vertices stay in metres
    audio: dict | None = None  # as FaceFormerConfig
    pretrained_audio: str | None = None
    # converted published checkpoints only (written to config.json only when set):
    vq_arch: str = optional("ours")  # "official": the public VQ-VAE, feature map and prediction loop
    vq_variant: str | None = optional(None)  # with "official": stage1_vocaset or stage1_BIWI ("vocaset" | "biwi")
    vq_heads: int = optional(8)  # the official VQ-VAE's attention heads (ours uses n_heads)
    vq_ff: int = optional(1536)  # the official VQ-VAE's MLP width (the public intermediate_size)
    audio_align: str = optional("ours")  # as FaceFormerConfig: "vocaset" / "biwi" as the public code
    subjects: list | None = optional(None)  # the styles' names in one-hot order (converted models)


class SelfLayer(nn.Module):
    """Post-norm transformer encoder layer (self-attention + feed-forward), cache-aware."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.attn = Attention(dim, heads, 0.0)
        self.ff = nn.Sequential(nn.Linear(dim, 2 * dim), nn.LeakyReLU(0.2), nn.Linear(2 * dim, dim))
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(2))

    def forward(self, x, bias, cache=None, name=""):
        x = self.norms[0](x + self.attn(x, x, bias, cache, name))
        return self.norms[1](x + self.ff(x))


class Quantizer(nn.Module):
    """Nearest-neighbour vector quantisation with a straight-through gradient (van den Oord et al. 2017)."""

    def __init__(self, n_codes: int, dim: int):
        super().__init__()
        self.codebook = nn.Embedding(n_codes, dim)
        nn.init.uniform_(self.codebook.weight, -1.0 / n_codes, 1.0 / n_codes)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """z (..., dim) -> (straight-through quantised z, the codes' vectors, the code indices)."""
        e = self.codebook.weight
        dist = (z**2).sum(-1, keepdim=True) - 2 * z @ e.T + (e**2).sum(-1)
        idx = dist.argmin(-1)
        q = self.codebook(idx)
        return z + (q - z).detach(), q, idx


def symmetric_bias(n_heads: int, n: int, period: int, key_mask: torch.Tensor) -> torch.Tensor:
    """(B, heads, n, n) additive bias of the non-causal VQ encoder: -slope * floor(|i - j| / period), and
    -inf on padded keys (key_mask (B, n), True on real frames)."""
    i = torch.arange(n, device=key_mask.device)
    distance = torch.div((i[:, None] - i[None]).abs(), period, rounding_mode="floor").float()
    bias = -alibi_slopes(n_heads).to(key_mask.device)[:, None, None] * distance
    return bias[None].masked_fill(~key_mask[:, None, None, :], float("-inf"))


class CodeTalker(nn.Module):
    stages = (1, 2)  # trained one after the other: the VQ-VAE, then the code predictor

    def __init__(self, cfg: CodeTalkerConfig):
        super().__init__()
        if cfg.vq_dim % cfg.codes_per_frame:
            raise ValueError(f"vq_dim={cfg.vq_dim} must be a multiple of codes_per_frame={cfg.codes_per_frame}")
        self.stage = 2  # which loss `loss` computes; a trained model predicts with both stages
        v3, h, d = 3 * cfg.n_vertices, cfg.vq_dim, cfg.feature_dim
        self.official = cfg.vq_arch == "official"
        if cfg.vq_arch not in ("ours", "official") or self.official and cfg.vq_variant not in ("vocaset", "biwi"):
            raise ValueError(
                f"vq_arch={cfg.vq_arch!r}, vq_variant={cfg.vq_variant!r}: expected 'ours', or 'official' "
                "with vq_variant 'vocaset' or 'biwi'"
            )
        # stage 1: the VQ-VAE
        if self.official:
            args = (v3, h, cfg.vq_layers, cfg.vq_heads, cfg.vq_ff, cfg.vq_variant == "biwi")
            self.vq_encoder = official.Encoder(*args)
            self.quantizer = Quantizer(cfg.n_codes, h // cfg.codes_per_frame)
            self.vq_decoder = official.Decoder(*args)
        else:
            self.vq_in = nn.Sequential(nn.Linear(v3, h), nn.LeakyReLU(0.2))
            self.vq_encoder = nn.ModuleList(SelfLayer(h, cfg.n_heads) for _ in range(cfg.vq_layers))
            self.quantizer = Quantizer(cfg.n_codes, h // cfg.codes_per_frame)
            self.vq_decoder = nn.ModuleList(SelfLayer(h, cfg.n_heads) for _ in range(cfg.vq_layers))
            self.vq_out = nn.Linear(h, v3)
        # stage 2: the audio-conditioned code predictor
        self.audio_encoder = AudioEncoder(cfg.audio, cfg.pretrained_audio, d, cfg.max_frames, cfg.audio_align)
        self.per_frame = 2 if cfg.audio_align == "biwi" else 1  # audio features per frame
        self.cfg = cfg = replace(cfg, audio=self.audio_encoder.shape)
        self.motion_map = nn.Linear(v3, d)
        self.style = nn.Embedding(cfg.n_subjects, d)
        self.layers = nn.ModuleList(DecoderLayer(d, cfg.n_heads, cfg.dropout) for _ in range(cfg.n_layers))
        self.feat_map = nn.Linear(d, h, bias=not self.official)
        self.register_buffer("ppe", periodic_positional_encoding(cfg.max_frames, d, cfg.period), persistent=False)

    def vq_modules(self) -> list[nn.Module]:
        names = ("vq_in", "vq_encoder", "quantizer", "vq_decoder", "vq_out")
        return [getattr(self, name) for name in names if hasattr(self, name)]

    def set_stage(self, stage: int) -> None:
        """Select the loss and the trainable parameters: stage 1 the VQ-VAE only, stage 2 all but the VQ-VAE
        (and a pretrained audio CNN, which stays fixed)."""
        if stage not in self.stages:
            raise ValueError(f"CodeTalker has stages {self.stages}; got {stage}")
        self.stage = stage
        vq = self.vq_modules()
        for module in self.children():
            module.requires_grad_(any(module is m for m in vq) == (stage == 1))

    # --- stage 1: the VQ-VAE -------------------------------------------------------------------------
    def encode_motion(self, motion: torch.Tensor, frame_mask: torch.Tensor) -> torch.Tensor:
        """(B, T, V*3) scaled offsets -> (B, T, codes_per_frame, code_dim) continuous latents."""
        x = self.vq_in(motion)
        bias = symmetric_bias(self.cfg.n_heads, x.shape[1], self.cfg.period, frame_mask)
        for layer in self.vq_encoder:
            x = layer(x, bias)
        return x.view(*x.shape[:2], self.cfg.codes_per_frame, -1)

    def decode_codes(self, codes: torch.Tensor, cache: dict | None = None, first: int = 0) -> torch.Tensor:
        """(B, T, codes_per_frame, code_dim) quantised latents of frames first.. -> (B, T, V*3) scaled
        offsets; causal, so with a cache the frames can come one at a time."""
        x = codes.flatten(2)
        n = first + x.shape[1]
        bias = biased_causal_mask(self.cfg.n_heads, n, self.cfg.period, first_row=first).to(x.device)
        for i, layer in enumerate(self.vq_decoder):
            x = layer(x, bias, cache, f"vq{i}")
        return self.vq_out(x)

    def vq_loss(self, batch: dict) -> torch.Tensor:
        """Stage 1: motion reconstruction + codebook + beta * commitment, over the real frames."""
        self.check_trainable()
        motion = self.scaled_offsets(batch)
        mask = batch["frame_mask"].to(motion.dtype)
        z = self.encode_motion(motion, batch["frame_mask"])
        zq, q, _ = self.quantizer(z)
        recon = self.decode_codes(zq)
        n = mask.sum()
        rec = (((recon - motion) ** 2).mean(-1) * mask).sum() / n
        codebook = (((q - z.detach()) ** 2).mean((-1, -2)) * mask).sum() / n
        commit = (((z - q.detach()) ** 2).mean((-1, -2)) * mask).sum() / n
        return rec + codebook + self.cfg.beta * commit

    # --- stage 2: the code predictor -----------------------------------------------------------------
    def predictor_inputs(self, previous: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        """Style, then each previous frame's scaled offsets mapped to the model width plus the style."""
        return torch.cat([style, self.motion_map(previous) + style], 1)

    def features(self, inputs: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        """Whole-sequence causal pass of the predictor: (B, T, d) -> (B, T, codes_per_frame, code_dim)."""
        t = inputs.shape[1]
        x = inputs + self.ppe[:t]
        self_bias = biased_causal_mask(self.cfg.n_heads, t, self.cfg.period).to(inputs.device)
        cross_bias = alignment_bias(t, memory.shape[1], inputs.device, self.per_frame)
        for i, layer in enumerate(self.layers):
            x = layer(x, memory, self_bias, cross_bias, index=i)
        return self.feat_map(x).view(*x.shape[:2], self.cfg.codes_per_frame, -1)

    def next_feature(self, inputs, memory, cross_bias, cache: dict | None) -> torch.Tensor:
        """The (B, 1, codes_per_frame, code_dim) feature of the frame after `inputs` (B, t + 1, d): with a cache
        only the newest input goes through the predictor, without it the whole prefix again (the public loop)."""
        if cache is None:
            return self.features(inputs, memory)[:, -1:].clone()
        t = inputs.shape[1] - 1
        x = inputs[:, -1:] + self.ppe[t]
        self_bias = biased_causal_mask(self.cfg.n_heads, t + 1, self.cfg.period, first_row=t).to(memory.device)
        for i, layer in enumerate(self.layers):
            x = layer(x, memory, self_bias, cross_bias[t : t + 1], cache, i)
        return self.feat_map(x).view(x.shape[0], 1, self.cfg.codes_per_frame, -1)

    def rollout(
        self, memory: torch.Tensor, style: torch.Tensor, use_cache: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Autoregressive decoding fed the model's own output: (B, T, V*3) scaled offsets and the
        (B, T, codes_per_frame, code_dim) predicted features. With the cache each frame goes once through
        the predictor and once through the VQ decoder; without, the whole prefix again every frame."""
        t_max = memory.shape[1] // self.per_frame
        cross_bias = alignment_bias(t_max, memory.shape[1], memory.device, self.per_frame)
        cache: dict | None = {} if use_cache else None
        inputs, offsets, feats = style, [], []
        for t in range(t_max):
            feat = self.next_feature(inputs, memory, cross_bias, cache)
            if use_cache:
                offset = self.decode_codes(self.quantizer(feat)[0], cache, first=t)
            else:  # the public code's loop
                feats_so_far = torch.cat([*feats, feat], 1)
                offset = self.decode_codes(self.quantizer(feats_so_far)[0])[:, -1:].clone()  # not a view of the prefix
            feats.append(feat)
            offsets.append(offset)
            inputs = torch.cat([inputs, self.motion_map(offset) + style], 1)
        return torch.cat(offsets, 1), torch.cat(feats, 1)

    def official_rollout(
        self, memory: torch.Tensor, style: torch.Tensor, n: int, use_cache: bool = True
    ) -> torch.Tensor:
        """The public predict loop for one item (memory (1, S, d), style (1, 1, d)) -> (1, n, V*3) offsets in metres.
        Frame t's predictor feature is quantised together with those of frames < t, the whole prefix is decoded
        (frame 0 as a sequence of two equal frames, as the public code) and its last frame, mapped by motion_map plus
        the style, is the next input; the output is the decoding of all n frames' codes at the end (so frame t of the
        output also depends on the codes after t, which the frame fed back did not see)."""
        cross_bias = alignment_bias(n, memory.shape[1], memory.device, self.per_frame)
        cache: dict | None = {} if use_cache else None
        inputs, feats = style, []
        for t in range(n):
            feats.append(self.next_feature(inputs, memory, cross_bias, cache))
            if t < n - 1:
                codes = self.quantizer(torch.cat(feats, 1))[0]
                last = self.vq_decoder(codes.repeat(1, 2, 1, 1) if t == 0 else codes)[:, t : t + 1]
                inputs = torch.cat([inputs, self.motion_map(last) + style], 1)
        return self.vq_decoder(self.quantizer(torch.cat(feats, 1))[0])

    def check_trainable(self) -> None:
        if self.official:
            raise NotImplementedError(
                "a converted public CodeTalker (vq_arch 'official') predicts only; "
                "train a CodeTalker with vq_arch 'ours'"
            )

    def training_prediction(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Stage 2 on a collated batch: the differentiable (B, T, V, 3) prediction (teacher-forced as the
        public code, or the model's own rollout) and the auxiliary loss, reg_weight * MSE (m²-scaled) of the
        predicted features against the fixed quantised latents of the ground truth, over the real frames."""
        self.check_trainable()
        motion = self.scaled_offsets(batch)
        memory = self.audio_encoder(batch["audio"], batch["audio_lengths"], batch["n_frames"])
        style = self.style(check_styles(batch["subject_ids"], self.cfg.n_subjects))[:, None]
        if self.cfg.teacher_forcing:
            feat = self.features(self.predictor_inputs(motion[:, :-1], style), memory)
            offsets = self.decode_codes(self.quantizer(feat)[0])
        else:
            offsets, feat = self.rollout(memory, style)
        with torch.no_grad():
            target = self.quantizer(self.encode_motion(motion, batch["frame_mask"]))[1]
        mask = batch["frame_mask"].to(motion.dtype)
        reg = (((feat - target) ** 2).mean((-1, -2)) * mask).sum() / mask.sum() / self.cfg.motion_scale**2
        pred = batch["templates"][:, None] + (offsets / self.cfg.motion_scale).view(*offsets.shape[:2], -1, 3)
        return pred, self.cfg.reg_weight * reg

    # --- the animator interface ----------------------------------------------------------------------
    def scaled_offsets(self, batch: dict) -> torch.Tensor:
        return (batch["vertices"] - batch["templates"][:, None]).flatten(2) * self.cfg.motion_scale

    def loss(self, batch: dict) -> torch.Tensor:
        """The current stage's loss on a collated batch (avguide.data.dataset.collate)."""
        if self.stage == 1:
            return self.vq_loss(batch)
        pred, aux = self.training_prediction(batch)
        return vertex_mse(pred, batch["vertices"], batch["frame_mask"]) + aux

    def forward(self, audio, audio_lengths, n_frames, templates, subject_ids, use_cache: bool = True) -> torch.Tensor:
        """Predicted vertices (B, T_max, V, 3), autoregressive and differentiable; frames past n_frames[b]
        are padding."""
        memory = self.audio_encoder(audio, audio_lengths, n_frames)
        style = self.style(check_styles(subject_ids, self.cfg.n_subjects))[:, None]
        if self.official:  # item by item, as the public code (its decoder is not causal: padding would leak in)
            t_max = int(n_frames.max())
            offsets = (
                torch.cat(
                    [
                        F.pad(
                            self.official_rollout(memory[b : b + 1], style[b : b + 1], n, use_cache),
                            (0, 0, 0, t_max - n),
                        )
                        for b, n in enumerate(n_frames.tolist())
                    ]
                )
                / self.cfg.motion_scale
            )
        else:
            offsets = self.rollout(memory, style, use_cache)[0] / self.cfg.motion_scale
        return templates[:, None] + offsets.view(*offsets.shape[:2], -1, 3)

    @torch.no_grad()
    def predict(self, audio, audio_lengths, n_frames, templates, subject_ids, use_cache: bool = True) -> torch.Tensor:
        """Inference: (B, T_max, V, 3)."""
        return self(audio, audio_lengths, n_frames, templates, subject_ids, use_cache)
