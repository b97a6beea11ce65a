"""The public CodeTalker's stage-1 VQ-VAE (models/stage1_vocaset.py and models/stage1_BIWI.py of Doubiiu/CodeTalker),
for converted published checkpoints (CodeTalkerConfig.vq_arch = "official"). Ours differs in every block; only the
codebook (the quantizer) is shared.

Encoder, (B, T, V*3) offsets in metres -> (B, T, h):
    vertex_map: Linear(V*3, h) + LeakyReLU(0.2)
    squash: Conv1d(h, h, 5, padding 2, replicate) + LeakyReLU(0.2) + InstanceNorm1d (no affine: statistics of each
        channel over the whole sequence)
    embed: Linear(h, h), + the position-0 encoding (below)
    blocks: `layers` pre-norm blocks, x + attention(LN(x)), x + MLP(LN(x)); attention with a bias-free qkv
        projection, `heads` heads and scores scaled by 1/sqrt(h) (the whole width, not a head's); MLP Linear(h, ff),
        GELU (tanh approximation), Linear(ff, h); no final norm
    post (BIWI only): Linear(h, codes_per_frame * code_dim)
Each frame's vector is cut into codes_per_frame pieces, each replaced by its nearest codebook entry.
Decoder, (B, T, codes_per_frame, code_dim) -> (B, T, V*3):
    pre (BIWI only): Linear(codes_per_frame * code_dim, h)
    expand: as squash; embed: Linear(h, h) + the position-0 encoding; blocks as the encoder's
    out: Linear(h, V*3), without bias for BIWI
So the two variants differ only in BIWI's pre/post linear layers and its bias-free output layer (both published
configs have h = codes_per_frame * code_dim = 1024, so the BIWI layers are square).

Not causal: every output frame depends on every code (full attention, 5-tap convolutions, instance statistics over
the sequence), so the public stage 2 re-decodes the whole prefix every frame (CodeTalker.official_rollout).
The position encoding: the public PositionalEncoding indexes its (max_len, 1, h) table by x.size(0), but is handed
batch-first (B, T, h) features, so it adds the encoding of position b to item b, and with the batch of one the public
code always uses, the encoding of position 0, (sin 0, cos 0, ...) = (0, 1, 0, 1, ...), to every frame: that constant
is what we add. Only quant_factor = 0 (no temporal down-sampling, the published configs) is built; dropout is off.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

SLOPE = 0.2  # the public `neg`


def position_zero(x: torch.Tensor) -> torch.Tensor:
    """x + the sinusoidal encoding of position 0 (0, 1, 0, 1, ...) on every frame (see the module's docstring)."""
    return x + (torch.arange(x.shape[-1], device=x.device) % 2).to(x.dtype)


def conv_block(dim: int) -> nn.Sequential:
    """The public squasher / expander (quant_factor 0): on (B, dim, T), length-preserving."""
    return nn.Sequential(
        nn.Conv1d(dim, dim, 5, padding=2, padding_mode="replicate"), nn.LeakyReLU(SLOPE), nn.InstanceNorm1d(dim)
    )


class Block(nn.Module):
    """One pre-norm transformer block: the public Transformer's net[2i] (attention) and net[2i + 1] (MLP)."""

    def __init__(self, dim: int, heads: int, ff: int):
        super().__init__()
        self.heads = heads
        self.attn_norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.attn_out = nn.Linear(dim, dim)
        self.ff_norm = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, ff), nn.GELU(approximate="tanh"), nn.Linear(ff, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.attn_norm(x)).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, scale=d**-0.5)  # the public scale: the width's, not a head's
        x = x + self.attn_out(y.transpose(1, 2).reshape(b, t, d))
        return x + self.ff(self.ff_norm(x))


class Encoder(nn.Module):
    def __init__(self, v3: int, dim: int, layers: int, heads: int, ff: int, biwi: bool):
        super().__init__()
        self.vertex_map = nn.Linear(v3, dim)
        self.squash = conv_block(dim)
        self.embed = nn.Linear(dim, dim)
        self.blocks = nn.ModuleList(Block(dim, heads, ff) for _ in range(layers))
        self.post = nn.Linear(dim, dim) if biwi else None

    def forward(self, motion: torch.Tensor) -> torch.Tensor:
        """(B, T, V*3) offsets -> (B, T, h) continuous latents (codes_per_frame codes per frame)."""
        x = F.leaky_relu(self.vertex_map(motion), SLOPE)
        x = position_zero(self.embed(self.squash(x.transpose(1, 2)).transpose(1, 2)))
        for block in self.blocks:
            x = block(x)
        return self.post(x) if self.post is not None else x


class Decoder(nn.Module):
    def __init__(self, v3: int, dim: int, layers: int, heads: int, ff: int, biwi: bool):
        super().__init__()
        self.pre = nn.Linear(dim, dim) if biwi else None
        self.expand = conv_block(dim)
        self.embed = nn.Linear(dim, dim)
        self.blocks = nn.ModuleList(Block(dim, heads, ff) for _ in range(layers))
        self.out = nn.Linear(dim, v3, bias=not biwi)

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        """(B, T, codes_per_frame, code_dim) quantised latents -> (B, T, V*3) offsets; the whole sequence at once."""
        x = codes.flatten(2)
        x = self.pre(x) if self.pre is not None else x
        x = position_zero(self.embed(self.expand(x.transpose(1, 2)).transpose(1, 2)))
        for block in self.blocks:
            x = block(x)
        return self.out(x)
