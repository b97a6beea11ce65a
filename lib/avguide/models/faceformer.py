"""FaceFormer (Fan et al., CVPR 2022): speech-driven 3D facial animation with transformers.

audio -> wav2vec 2.0 encoder -> features resampled to the motion frame rate -> transformer decoder with
periodic positional encoding, ALiBi-style biased causal self-attention and an alignment-masked
cross-attention (frame t sees the audio of frame t) -> vertex offsets from the subject's template.
A style embedding of the training subject is the decoder's first input.

Differences from the public code: batched training with padding (masked loss), a small randomly
initialised wav2vec 2.0 by default (a local wav2vec2-base-960h with `pretrained_audio`), and inference
with a key/value cache, so animating T frames costs O(T) decoder steps of O(t) work instead of
recomputing the whole prefix every frame. Our audio alignment resamples the encoder's output to the frame
rate; a converted published checkpoint (avguide.convert.faceformer) sets `audio_align` to the public code's
for its dataset: "vocaset" resamples the CNN features to the frame rate before the projection and the
transformer, "biwi" keeps 50 Hz and lets each frame attend to its two audio features.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import Wav2Vec2Config, Wav2Vec2Model

from avguide.losses import vertex_mse
from avguide.models.checkpoint import optional

SMALL_WAV2VEC2 = dict(
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=128,
    conv_dim=(64,) * 7,
    feat_extract_norm="layer",
    do_stable_layer_norm=True,
    num_conv_pos_embeddings=16,
    num_conv_pos_embedding_groups=4,
    mask_time_prob=0.0,
    layerdrop=0.0,
)
BASE_WAV2VEC2 = dict(  # wav2vec2-base(-960h): the public FaceFormer's and CodeTalker's encoder
    hidden_size=768,
    num_hidden_layers=12,
    num_attention_heads=12,
    intermediate_size=3072,
    conv_dim=(512,) * 7,
    feat_extract_norm="group",
    do_stable_layer_norm=False,
    num_conv_pos_embeddings=128,
    num_conv_pos_embedding_groups=16,
    mask_time_prob=0.05,
    layerdrop=0.0,
)
ALIGNMENTS = ("ours", "vocaset", "biwi")  # audio_align: ours, or the public code's for that dataset
HF_META = ("architectures", "transformers_version", "model_type", "_name_or_path", "torch_dtype", "dtype")


@dataclass
class FaceFormerConfig:
    n_vertices: int
    n_subjects: int  # training subjects (style embeddings)
    fps: float = 25.0
    feature_dim: int = 64  # the paper: 64 on VOCASET, 128 on BIWI
    period: int = 25  # of the positional encoding and the attention bias (the paper: 30 VOCASET, 25 BIWI)
    n_heads: int = 4
    n_layers: int = 1
    dropout: float = 0.1
    max_frames: int = 3000  # longest sequence one decoder pass handles (the CLI animates longer audio in chunks)
    teacher_forcing: bool = False  # train on the shifted ground truth (fast) instead of the model's own rollout
    motion_scale: float = 100.0  # offsets are learnt in centimetres for better conditioning; vertices stay in metres
    audio: dict | None = None  # the wav2vec 2.0 shape: None is SMALL_WAV2VEC2, or pretrained_audio's (filled in)
    pretrained_audio: str | None = None  # a local wav2vec 2.0 folder (wav2vec2-base-960h, or pretrain_audio's)
    audio_align: str = optional("ours")  # ALIGNMENTS: "vocaset" / "biwi" as the public code (converted models)
    subjects: list | None = optional(None)  # the styles' names in order (converted models; else the corpus')


def load_wav2vec2(folder: str | Path) -> Wav2Vec2Model:
    """A wav2vec 2.0 encoder from a local folder (never the hub), with a clear error if it is not all there."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(
            f"{folder}: no such folder; expected a local copy of wav2vec2-base-960h "
            f"(config.json and model.safetensors or pytorch_model.bin)"
        )
    missing = [] if (folder / "config.json").is_file() else ["config.json"]
    if not any((folder / w).is_file() for w in ("model.safetensors", "pytorch_model.bin")):
        missing.append("model.safetensors or pytorch_model.bin")
    if missing:
        raise FileNotFoundError(f"{folder}: incomplete wav2vec 2.0 folder, missing {', '.join(missing)}")
    return Wav2Vec2Model.from_pretrained(folder, local_files_only=True)


def normalize_audio(audio: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Zero mean, unit variance over each item's real samples (wav2vec 2.0's input convention, as its
    feature extractor does it); padding stays zero."""
    n = mask.sum(1, keepdim=True).clamp(min=1)
    mean = (audio * mask).sum(1, keepdim=True) / n
    var = (((audio - mean) * mask) ** 2).sum(1, keepdim=True) / n
    return (audio - mean) / torch.sqrt(var + 1e-7) * mask


def periodic_positional_encoding(n: int, dim: int, period: int) -> torch.Tensor:
    """(n, dim) sinusoidal encoding of the position within each period, repeated every `period` frames."""
    pos = torch.arange(period, dtype=torch.float32)[:, None]
    div = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    pe = torch.zeros(period, dim)
    pe[:, 0::2] = torch.sin(pos * div)
    pe[:, 1::2] = torch.cos(pos * div)
    return pe.repeat(n // period + 1, 1)[:n]


def alibi_slopes(n_heads: int) -> torch.Tensor:
    """ALiBi's per-head slopes (a geometric sequence; Press et al. 2022), as FaceFormer uses them."""

    def power_of_2(n):
        start = 2 ** (-(2 ** -(math.log2(n) - 3)))
        return [start * start**i for i in range(n)]

    if math.log2(n_heads).is_integer():
        return torch.tensor(power_of_2(n_heads))
    closest = 2 ** math.floor(math.log2(n_heads))
    return torch.tensor(power_of_2(closest) + power_of_2(2 * closest)[0::2][: n_heads - closest])


def biased_causal_mask(n_heads: int, n: int, period: int, first_row: int = 0) -> torch.Tensor:
    """(heads, n - first_row, n) additive mask, rows first_row..n-1 of: -slope * floor((i - j) / period)
    for j <= i, -inf for j > i."""
    i = torch.arange(first_row, n)[:, None]
    j = torch.arange(n)[None, :]
    distance = torch.div(i - j, period, rounding_mode="floor").float()
    bias = -alibi_slopes(n_heads)[:, None, None] * distance
    return bias.masked_fill((j > i)[None], float("-inf"))


def alignment_bias(t: int, s: int, device=None, per_frame: int = 1) -> torch.Tensor:
    """(t, s) additive cross-attention mask: frame i attends to audio features per_frame·i .. per_frame·i +
    per_frame - 1 only (one feature per frame; two for the public code's BIWI models)."""
    frame = torch.arange(t, device=device)[:, None]
    feature = torch.arange(s, device=device)[None]
    allowed = (feature >= per_frame * frame) & (feature < per_frame * (frame + 1))
    return torch.zeros(t, s, device=device).masked_fill(~allowed, float("-inf"))


class Attention(nn.Module):
    """Multi-head attention with an additive bias and an optional key/value cache for incremental decoding."""

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v, self.out = (nn.Linear(dim, dim) for _ in range(4))
        self.dropout = dropout

    def split(self, x):
        b, t, d = x.shape
        return x.view(b, t, self.heads, d // self.heads).transpose(1, 2)

    def forward(self, x, source, bias, cache: dict | None = None, name: str = ""):
        q = self.split(self.q(x))
        if cache is not None and name in cache and name.startswith("cross"):
            k, v = cache[name]  # the audio memory does not change while decoding
        else:
            k, v = self.split(self.k(source)), self.split(self.v(source))
            if cache is not None:
                if name in cache:  # self-attention: append the new step's keys and values
                    k = torch.cat([cache[name][0], k], 2)
                    v = torch.cat([cache[name][1], v], 2)
                cache[name] = (k, v)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=self.dropout if self.training else 0.0)
        return self.out(y.transpose(1, 2).flatten(2))


class DecoderLayer(nn.Module):
    """Post-norm transformer decoder layer (as torch.nn.TransformerDecoderLayer), cache-aware."""

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.self_attn = Attention(dim, heads, dropout)
        self.cross_attn = Attention(dim, heads, dropout)
        self.ff = nn.Sequential(nn.Linear(dim, 2 * dim), nn.ReLU(), nn.Dropout(dropout), nn.Linear(2 * dim, dim))
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(3))
        self.drop = nn.Dropout(dropout)

    def forward(self, x, memory, self_bias, cross_bias, cache=None, index=0):
        x = self.norms[0](x + self.drop(self.self_attn(x, x, self_bias, cache, f"self{index}")))
        x = self.norms[1](x + self.drop(self.cross_attn(x, memory, cross_bias, cache, f"cross{index}")))
        return self.norms[2](x + self.drop(self.ff(x)))


class AudioEncoder(nn.Module):
    """wav2vec 2.0 (a small random one, or a pretrained one from a local folder) -> (B, T, dim) features
    linearly resampled to each item's number of motion frames; with `align` "vocaset" or "biwi", the public
    code's alignment for that dataset instead (`official`): (B, T, dim), or (B, 2T, dim) for "biwi".

    `pretrained` is read only when `shape` is None, i.e. when a model is first built; its shape is then
    `self.shape`, which the animator writes into its config, so a saved animator rebuilds without the folder."""

    def __init__(self, shape: dict | None, pretrained: str | None, dim: int, max_frames: int, align: str = "ours"):
        super().__init__()
        if align not in ALIGNMENTS:
            raise ValueError(f"audio_align {align!r}: expected one of {ALIGNMENTS}")
        self.max_frames, self.align = max_frames, align
        if pretrained and shape is None:
            self.wav2vec2 = load_wav2vec2(pretrained).train()  # from_pretrained returns eval mode; the owner decides
            self.shape = {k: v for k, v in self.wav2vec2.config.to_diff_dict().items() if k not in HF_META}
        else:
            self.shape = dict(shape or SMALL_WAV2VEC2)
            self.wav2vec2 = Wav2Vec2Model(Wav2Vec2Config(**self.shape))
        self.pretrained = bool(pretrained) or align != "ours"  # a converted model's encoder is wav2vec2-base-960h
        self.wav2vec2.config.layerdrop = 0.0  # a layer skipped at random has no gradient on that rank: DDP fails
        self.map = nn.Linear(self.wav2vec2.config.hidden_size, dim)
        self.requires_grad_(True)

    def requires_grad_(self, requires_grad: bool = True) -> AudioEncoder:
        """As nn.Module's, but some parameters always stay fixed: a pretrained CNN (as FaceFormer; a random
        one must learn) and SpecAugment's filler vector (unused, so DDP never sees an idle trainable tensor)."""
        super().requires_grad_(requires_grad)
        if self.pretrained:
            self.wav2vec2.feature_extractor._freeze_parameters()
        if getattr(self.wav2vec2, "masked_spec_embed", None) is not None:
            self.wav2vec2.masked_spec_embed.requires_grad_(False)
        return self

    def forward(self, audio: torch.Tensor, audio_lengths: torch.Tensor, n_frames: torch.Tensor) -> torch.Tensor:
        if int(n_frames.max()) > self.max_frames:
            raise ValueError(
                f"{int(n_frames.max())} frames is more than max_frames={self.max_frames}; animate long audio in chunks"
            )
        if self.align != "ours":
            return self.map(self.official(audio, audio_lengths, n_frames))
        mask = (torch.arange(audio.shape[1], device=audio.device)[None] < audio_lengths[:, None]).long()
        hidden = self.wav2vec2(normalize_audio(audio, mask), attention_mask=mask).last_hidden_state  # 50 Hz
        valid = self.wav2vec2._get_feat_extract_output_lengths(audio_lengths)
        out = hidden.new_zeros(len(audio), int(n_frames.max()), hidden.shape[-1])
        for b in range(len(audio)):
            item = hidden[b, : int(valid[b])].T[None]  # (1, H, S'_b)
            out[b, : int(n_frames[b])] = F.interpolate(item, size=int(n_frames[b]), mode="linear", align_corners=True)[
                0
            ].T
        return self.map(out)

    def official(self, audio: torch.Tensor, audio_lengths: torch.Tensor, n_frames: torch.Tensor) -> torch.Tensor:
        """The public code's alignment, item by item (its encoder reads one unpadded waveform: with group norm in
        the CNN, padding would change the features). "vocaset": the CNN's 50 Hz features linearly resampled to
        the frame count, then the projection and the transformer. "biwi": the 50 Hz features cut to 2 per frame
        (the public code drops an odd last one and any beyond 2·frames; where fewer, the last is repeated)."""
        w, per = self.wav2vec2, 2 if self.align == "biwi" else 1
        out = audio.new_zeros(len(audio), per * int(n_frames.max()), w.config.hidden_size)
        for b in range(len(audio)):
            x = audio[b : b + 1, : int(audio_lengths[b])]
            feats, n = w.feature_extractor(normalize_audio(x, torch.ones_like(x))), int(n_frames[b])  # (1, C, S)
            if self.align == "vocaset":
                feats = F.interpolate(feats, size=n, mode="linear", align_corners=True)
            else:
                feats = feats[..., : feats.shape[-1] // 2 * 2][..., : 2 * n]
                feats = (
                    F.pad(feats, (0, 2 * n - feats.shape[-1]), mode="replicate") if feats.shape[-1] < 2 * n else feats
                )
            hidden = w._mask_hidden_states(w.feature_projection(feats.transpose(1, 2))[0])  # SpecAugment in training
            out[b, : per * n] = w.encoder(hidden).last_hidden_state[0]
        return out


def check_styles(subject_ids: torch.Tensor, n_subjects: int) -> torch.Tensor:
    if (subject_ids < 0).any() or (subject_ids >= n_subjects).any():
        raise ValueError(
            f"subject ids must be training styles 0..{n_subjects - 1}; got {subject_ids.tolist()} "
            "(unseen subjects take a training subject's style)"
        )
    return subject_ids


class FaceFormer(nn.Module):
    def __init__(self, cfg: FaceFormerConfig):
        super().__init__()
        d = cfg.feature_dim
        self.audio_encoder = AudioEncoder(cfg.audio, cfg.pretrained_audio, d, cfg.max_frames, cfg.audio_align)
        self.per_frame = 2 if cfg.audio_align == "biwi" else 1  # audio features per frame
        self.cfg = replace(cfg, audio=self.audio_encoder.shape)
        self.motion_map = nn.Linear(3 * cfg.n_vertices, d)
        self.style = nn.Embedding(cfg.n_subjects, d)
        self.layers = nn.ModuleList(DecoderLayer(d, cfg.n_heads, cfg.dropout) for _ in range(cfg.n_layers))
        self.motion_out = nn.Linear(d, 3 * cfg.n_vertices)
        nn.init.zeros_(self.motion_out.weight)  # start from the template, as FaceFormer
        nn.init.zeros_(self.motion_out.bias)
        self.register_buffer("ppe", periodic_positional_encoding(cfg.max_frames, d, cfg.period), persistent=False)

    # --- pieces ---------------------------------------------------------------------------------------
    def style_of(self, subject_ids: torch.Tensor) -> torch.Tensor:
        return self.style(check_styles(subject_ids, self.cfg.n_subjects))

    def decode(self, inputs: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        """Whole-sequence causal decoding: (B, T, d) inputs -> (B, T, d)."""
        t = inputs.shape[1]
        x = inputs + self.ppe[:t]
        self_bias = biased_causal_mask(self.cfg.n_heads, t, self.cfg.period).to(inputs.device)
        cross_bias = alignment_bias(t, memory.shape[1], inputs.device, self.per_frame)
        for i, layer in enumerate(self.layers):
            x = layer(x, memory, self_bias, cross_bias, index=i)
        return x

    # --- training and inference ----------------------------------------------------------------------
    def forward(self, audio, audio_lengths, n_frames, templates, subject_ids, vertices=None) -> torch.Tensor:
        """Predicted vertices (B, T, V, 3). With `vertices` (teacher forcing), one causal pass over the
        ground truth shifted by one frame; without, autoregressive with a key/value cache."""
        if vertices is None:
            return self.predict(audio, audio_lengths, n_frames, templates, subject_ids)
        memory = self.audio_encoder(audio, audio_lengths, n_frames)
        style = self.style_of(subject_ids)[:, None]
        motion = (vertices - templates[:, None]).flatten(2) * self.cfg.motion_scale
        first = style + self.motion_map.bias if self.cfg.audio_align != "ours" else style  # public: map(0) + style
        inputs = torch.cat([first, self.motion_map(motion[:, :-1]) + style], 1)
        offsets = self.motion_out(self.decode(inputs, memory)) / self.cfg.motion_scale
        return templates[:, None] + offsets.view(*offsets.shape[:2], -1, 3)

    def rollout(self, memory: torch.Tensor, style: torch.Tensor, use_cache: bool = True) -> torch.Tensor:
        """Autoregressive decoding, each frame fed the model's own previous output: (B, T, V*3) offsets
        (scaled). Differentiable, so training can use it as FaceFormer does (no exposure bias)."""
        t_max = memory.shape[1] // self.per_frame
        cross_bias = alignment_bias(t_max, memory.shape[1], memory.device, self.per_frame)
        cache: dict | None = {} if use_cache else None
        inputs, outputs = style, []
        for t in range(t_max):
            if use_cache:  # only the newest input goes through the decoder; keys and values are cached
                x = inputs[:, -1:] + self.ppe[t]
                self_bias = biased_causal_mask(self.cfg.n_heads, t + 1, self.cfg.period, first_row=t).to(memory.device)
                for i, layer in enumerate(self.layers):
                    x = layer(x, memory, self_bias, cross_bias[t : t + 1], cache, i)
                step = x
            else:  # the public code's loop: the whole prefix again, every frame
                step = self.decode(inputs, memory)[:, -1:]
            offset = self.motion_out(step)
            outputs.append(offset)
            inputs = torch.cat([inputs, self.motion_map(offset) + style], 1)
        return torch.cat(outputs, 1)

    @torch.no_grad()
    def predict(self, audio, audio_lengths, n_frames, templates, subject_ids, use_cache: bool = True) -> torch.Tensor:
        """Autoregressive inference: (B, T_max, V, 3); frames past n_frames[b] are padding."""
        memory = self.audio_encoder(audio, audio_lengths, n_frames)
        offsets = self.rollout(memory, self.style_of(subject_ids)[:, None], use_cache) / self.cfg.motion_scale
        return templates[:, None] + offsets.view(*offsets.shape[:2], -1, 3)

    def training_prediction(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Differentiable (B, T, V, 3) prediction on a collated batch, as training sees it: the autoregressive
        rollout (FaceFormer's default) or, with `teacher_forcing`, one causal pass over the shifted ground
        truth; and the model's auxiliary loss (none)."""
        if self.cfg.teacher_forcing:
            pred = self(
                batch["audio"],
                batch["audio_lengths"],
                batch["n_frames"],
                batch["templates"],
                batch["subject_ids"],
                batch["vertices"],
            )
        else:
            memory = self.audio_encoder(batch["audio"], batch["audio_lengths"], batch["n_frames"])
            offsets = self.rollout(memory, self.style_of(batch["subject_ids"])[:, None]) / self.cfg.motion_scale
            pred = batch["templates"][:, None] + offsets.view(*offsets.shape[:2], -1, 3)
        return pred, pred.new_zeros(())

    def loss(self, batch: dict) -> torch.Tensor:
        """Vertex MSE over the real frames of a collated batch (the baseline loss)."""
        pred, aux = self.training_prediction(batch)
        return vertex_mse(pred, batch["vertices"], batch["frame_mask"]) + aux
