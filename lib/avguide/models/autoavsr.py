"""An auto-AVSR reader (Ma et al., ICASSP 2023; github.com/mpc001/auto_avsr, ESPnet's conformer): the shape of the
published audio-only, visual-only and audio-visual checkpoints, so `avguide convert autoavsr` can load them, read
through the same interface as our Expert (`loss`, `encode`, `video_features`, `transcribe`, joint CTC/attention beam
search).

    video (B, T, H, W) in [0, 1] ─► 88×88, (x-0.421)/0.165 ─► Conv3d (5,7,7), BN, SiLU, max-pool ─► ResNet-18 ──┐
    audio (B, S) 16 kHz ─► normalised per utterance ─► Conv1d (80, stride 4), BN, SiLU ─► ResNet-18-1D, pool ─┤
        each stream: Linear(512, d) ─► ×√d ─► conformer layers (relative positions) ─► after_norm ◄───────────┘
        ─► (av: fusion MLP of [video; audio], BatchNorm) ─┬─► CTC head
                                                          └─► transformer decoder (pre-norm, ×√d + sinusoids)

A conformer layer is ESPnet's macaron block: x + ½FF(LN x); x + RelMHA(LN x); x + Conv(LN x); x + ½FF(LN x); LN. The
feed-forward uses ReLU, the convolution module GLU, a depthwise convolution, BatchNorm and SiLU. Attention uses
relative positions as Transformer-XL (ESPnet's "latest" RelPositionMultiHeadedAttention): with q, k, v the heads'
projections, p_r = W_pos·pe(r) for the sinusoid pe of the relative position r = i - j, and learnt biases u, v,

    score(i, j) = ((q_i + u)·k_j + (q_i + v)·p_{i-j}) / √d_k.

Every LayerNorm has ESPnet's eps 1e-12. Module names follow the release, so its keys map onto ours by prefixes
(avguide.convert.autoavsr).

What differs from the release, on purpose: padding never reaches a valid frame (zeroed before every convolution
along time, BatchNorm statistics over the valid positions only), so in eval mode an item's loss does not depend on
how much it was padded; inputs of other sizes are centre-cropped (larger) or resized (smaller) to `crop_size`; the
loss parts are per target token (as our Expert's); in mode "av" each item's audio is cut or zero-padded to its
video's duration (as the release's data loader does), and resampled onto the video frames when `fps` is not 25.

Tokens: `loss` takes the project's character tokens (avguide.data.VOCAB, as every batch holds them) and re-encodes
their text with the reader's `vocab` (VOCAB itself, or a SentencePieceVocabulary: the release's word pieces).
"""

from __future__ import annotations

import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from avguide.data.text import VOCAB, SentencePieceVocabulary
from avguide.models.checkpoint import load_checkpoint
from avguide.models.expert import (
    MODES,
    Decoding,
    ExpertLoss,
    Reader,
    lengths_to_mask,
    load_decoding,
    resample_frames,
    save_reader,
    sinusoids,
)

AUDIO_HOP = 640  # waveform samples per audio frame: 16 kHz -> 25 Hz (stem stride 4, stages 2·2·2, pool 20)
SPM_FILE, UNITS_FILE = "tokenizer.model", "tokenizer_units.txt"  # a SentencePiece reader's vocabulary, in its folder
RELEASE_DECODING = Decoding(beam_size=40, ctc_weight=0.1)  # auto-AVSR's eval.py


@dataclass
class AutoAVSRConfig:
    """Defaults: the release's sizes (about 250 M parameters in mode "video", 243 M "audio"), with our characters."""

    mode: str = "av"  # av | video | audio
    vocab: str = "characters"  # characters (VOCAB) | sentencepiece (the folder's tokenizer files)
    vocab_size: int = len(VOCAB)  # the release: 5,049 (blank, 5,047 units, sos/eos)
    fps: float = 25.0  # video frame rate (the release: 25)
    sample_rate: int = 16000
    crop_size: int = 88
    video_mean: float = 0.421
    video_std: float = 0.165
    resnet_channels: tuple[int, ...] = (64, 128, 256, 512)  # both front ends (the stem: the first); strides 1, 2, 2, 2
    resnet_blocks: int = 2  # basic blocks per stage
    d_model: int = 768
    n_heads: int = 12
    ffn_dim: int = 3072
    encoder_layers: int = 12
    conv_kernel: int = 31
    fusion_dim: int = 8192
    decoder_layers: int = 6
    dropout: float = 0.1
    attention_dropout: float = 0.1
    ctc_weight: float = 0.1
    label_smoothing: float = 0.1

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"AutoAVSRConfig.mode must be one of {MODES}; found {self.mode!r}")
        if self.vocab not in ("characters", "sentencepiece"):
            raise ValueError(f"AutoAVSRConfig.vocab must be 'characters' or 'sentencepiece'; found {self.vocab!r}")
        self.resnet_channels = tuple(self.resnet_channels)
        stride = 4 * 2 ** (len(self.resnet_channels) - 1)
        if AUDIO_HOP % stride:
            raise ValueError(f"{len(self.resnet_channels)} ResNet stages stride {stride}: not a divisor of {AUDIO_HOP}")


def layer_norm(d: int) -> nn.LayerNorm:
    return nn.LayerNorm(d, eps=1e-12)  # ESPnet's


def masked_norm(bn: nn.Module, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """BatchNorm `bn` of (B, C, L) `x` at the valid positions (B, L) only (its statistics too); zeros elsewhere."""
    out = x.new_zeros(x.shape[0], x.shape[2], x.shape[1])
    out[valid] = bn(x.transpose(1, 2)[valid])
    return out.transpose(1, 2)


def relative_sinusoids(length: int, dim: int, device=None) -> torch.Tensor:
    """(2·length-1, dim) sinusoids of the relative positions length-1, ..., 0, ..., -(length-1)."""
    pos = torch.arange(length - 1, -length, -1, device=device, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / dim))
    pe = torch.zeros(2 * length - 1, dim, device=device)
    pe[:, 0::2], pe[:, 1::2] = torch.sin(pos * freq), torch.cos(pos * freq)
    return pe


def rel_shift(x: torch.Tensor) -> torch.Tensor:
    """(..., T, 2T-1) scores against the relative positions T-1 .. -(T-1) -> (..., T, T) with out[i, j] at i - j.

    Transformer-XL's shift: a zero column in front, the buffer re-read from its T-th element in rows of 2T-1, so
    row i starts at column T-1-i of the original row i."""
    *lead, t, n = x.shape
    x = F.pad(x, (1, 0)).view(*lead, n + 1, t)[..., 1:, :].reshape(*lead, t, n)
    return x[..., :t]


# ---------------------------------------------------------------- front ends


class Block(nn.Module):
    """A ResNet basic block with SiLU, 2D (frames) or 1D (waveform features, masked at `valid` positions)."""

    def __init__(self, cin: int, cout: int, stride: int, dim: int):
        super().__init__()
        conv, bn = (nn.Conv2d, nn.BatchNorm2d) if dim == 2 else (nn.Conv1d, nn.BatchNorm1d)
        self.conv1 = conv(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = bn(cout)
        self.conv2 = conv(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = bn(cout)
        self.downsample = (
            nn.Sequential(conv(cin, cout, 1, stride, bias=False), bn(cout)) if stride != 1 or cin != cout else None
        )

    def forward(self, x: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """`valid` (B, L_out): the positions of the output (1D); their padding stays zero."""
        norm = (lambda bn, y: bn(y)) if valid is None else (lambda bn, y: masked_norm(bn, y, valid))
        y = F.silu(norm(self.bn1, self.conv1(x)))
        y = norm(self.bn2, self.conv2(y))
        skip = x if self.downsample is None else norm(self.downsample[1], self.downsample[0](x))
        return F.silu(y + skip)


def resnet(channels: tuple[int, ...], blocks: int, dim: int) -> dict[str, nn.Module]:
    """The stages layer1.. of a ResNet (strides 1, 2, 2, ...), named as torchvision and the release name them."""
    layers, cin = {}, channels[0]
    for k, c in enumerate(channels):
        strides = [2 if k and not b else 1 for b in range(blocks)]
        layers[f"layer{k + 1}"] = nn.Sequential(*(Block(c if b else cin, c, s, dim) for b, s in enumerate(strides)))
        cin = c
    return layers


class VideoFrontEnd(nn.Module):
    """(B, T, H, W) frames in [0, 1] -> (B, T, 512) features; zeros at padded frames. The ResNet runs on the valid
    frames only."""

    def __init__(self, cfg: AutoAVSRConfig):
        super().__init__()
        self.cfg = cfg
        c0 = cfg.resnet_channels[0]
        self.frontend3D = nn.Sequential(
            nn.Conv3d(1, c0, (5, 7, 7), (1, 2, 2), (2, 3, 3), bias=False), nn.BatchNorm3d(c0)
        )
        self.trunk = nn.ModuleDict(resnet(cfg.resnet_channels, cfg.resnet_blocks, 2))

    def forward(self, video: torch.Tensor, n_frames: torch.Tensor) -> torch.Tensor:
        cfg, size = self.cfg, self.cfg.crop_size
        b, t, h, w = video.shape
        valid = lengths_to_mask(n_frames, t)
        top, left = max(0, (h - size) // 2), max(0, (w - size) // 2)
        video = video[:, :, top : top + size, left : left + size]
        if video.shape[-2:] != (size, size):  # smaller than the release's crops: resized up
            video = F.interpolate(video, (size, size), mode="bilinear", align_corners=False)
        x = (video - cfg.video_mean) / cfg.video_std * valid[:, :, None, None]  # padding: zeros, as the release's
        conv, bn = self.frontend3D
        x = conv(x[:, None]).transpose(1, 2)[valid]  # (N valid frames, C, h, w)
        x = bn(x.transpose(0, 1)[None])[0].transpose(0, 1)  # BatchNorm3d over the valid frames
        x = F.max_pool2d(F.silu(x), 3, 2, 1).contiguous(memory_format=torch.channels_last)
        for layer in self.trunk.values():
            x = layer(x)
        out = x.new_zeros(b, t, x.shape[1])
        out[valid] = x.mean((-2, -1))
        return out


class AudioFrontEnd(nn.Module):
    """(B, 640·T) normalised waveforms, zero beyond each item's 640·n_frames samples -> (B, T, 512) features."""

    def __init__(self, cfg: AutoAVSRConfig):
        super().__init__()
        c0 = cfg.resnet_channels[0]
        stem = {"conv1": nn.Conv1d(1, c0, 80, 4, 38, bias=False), "bn1": nn.BatchNorm1d(c0)}
        self.trunk = nn.ModuleDict({**stem, **resnet(cfg.resnet_channels, cfg.resnet_blocks, 1)})
        self.pool = AUDIO_HOP // (4 * 2 ** (len(cfg.resnet_channels) - 1))

    def forward(self, audio: torch.Tensor, n_frames: torch.Tensor) -> torch.Tensor:
        t, steps = audio.shape[1] // AUDIO_HOP, AUDIO_HOP // 4  # positions per frame after the stem, then each stage
        x = self.trunk["conv1"](audio[:, None])
        x = F.silu(masked_norm(self.trunk["bn1"], x, lengths_to_mask(n_frames * steps, t * steps)))
        for name, layer in self.trunk.items():
            if name.startswith("layer"):
                steps //= 1 if name == "layer1" else 2
                for block in layer:
                    x = block(x, lengths_to_mask(n_frames * steps, t * steps))
        return F.avg_pool1d(x, self.pool).transpose(1, 2)


# ---------------------------------------------------------------- conformer


class MultiHeadedAttention(nn.Module):
    def __init__(self, n_heads: int, d: int, dropout: float):
        super().__init__()
        self.h, self.d_k = n_heads, d // n_heads
        self.linear_q, self.linear_k, self.linear_v, self.linear_out = (nn.Linear(d, d) for _ in range(4))
        self.dropout = nn.Dropout(dropout)

    def heads(self, linear: nn.Linear, x: torch.Tensor) -> torch.Tensor:
        return linear(x).unflatten(-1, (self.h, self.d_k)).transpose(1, 2)  # (B, H, T, d_k)

    def attend(self, scores: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        """softmax(scores) over the allowed keys (True; broadcast to (B, H, Tq, Tk)), applied to v (B, H, Tk, d_k)."""
        scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
        attn = torch.softmax(scores, -1).masked_fill(~allowed, 0.0)
        return self.linear_out((self.dropout(attn) @ v).transpose(1, 2).flatten(2))

    def forward(self, query: torch.Tensor, memory: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        q, k, v = self.heads(self.linear_q, query), self.heads(self.linear_k, memory), self.heads(self.linear_v, memory)
        return self.attend(q @ k.transpose(-2, -1) / math.sqrt(self.d_k), v, allowed)


class RelPositionAttention(MultiHeadedAttention):
    """Self-attention with relative positions (the module docstring's formula)."""

    def __init__(self, n_heads: int, d: int, dropout: float):
        super().__init__(n_heads, d, dropout)
        self.linear_pos = nn.Linear(d, d, bias=False)
        self.pos_bias_u = nn.Parameter(torch.empty(self.h, self.d_k))
        self.pos_bias_v = nn.Parameter(torch.empty(self.h, self.d_k))
        nn.init.xavier_uniform_(self.pos_bias_u)
        nn.init.xavier_uniform_(self.pos_bias_v)

    def forward(self, x: torch.Tensor, pos: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        """x (B, T, d); pos (2T-1, d) sinusoids of the relative positions T-1 .. -(T-1); allowed (B, 1, 1, T)."""
        q, k, v = self.heads(self.linear_q, x), self.heads(self.linear_k, x), self.heads(self.linear_v, x)
        p = self.linear_pos(pos).unflatten(-1, (self.h, self.d_k)).transpose(0, 1)  # (H, 2T-1, d_k)
        content = (q + self.pos_bias_u[:, None]) @ k.transpose(-2, -1)
        position = rel_shift((q + self.pos_bias_v[:, None]) @ p.transpose(-2, -1))
        return self.attend((content + position) / math.sqrt(self.d_k), v, allowed)


class FeedForward(nn.Module):
    def __init__(self, d: int, hidden: int, dropout: float):
        super().__init__()
        self.w_1, self.w_2, self.dropout = nn.Linear(d, hidden), nn.Linear(hidden, d), nn.Dropout(dropout)

    def forward(self, x):
        return self.w_2(self.dropout(F.relu(self.w_1(x))))


class ConvModule(nn.Module):
    """Pointwise conv + GLU, depthwise conv (padding zeroed first), BatchNorm (valid positions), SiLU, pointwise."""

    def __init__(self, d: int, kernel: int):
        super().__init__()
        self.pointwise_cov1 = nn.Conv1d(d, 2 * d, 1)  # sic: the release's name
        self.depthwise_conv = nn.Conv1d(d, d, kernel, padding=(kernel - 1) // 2, groups=d)
        self.norm = nn.BatchNorm1d(d)
        self.pointwise_cov2 = nn.Conv1d(d, d, 1)

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        y = F.glu(self.pointwise_cov1(x.transpose(1, 2)), dim=1) * valid[:, None]
        y = F.silu(masked_norm(self.norm, self.depthwise_conv(y), valid))
        return self.pointwise_cov2(y).transpose(1, 2)


class ConformerLayer(nn.Module):
    def __init__(self, cfg: AutoAVSRConfig):
        super().__init__()
        d = cfg.d_model
        self.feed_forward_macaron = FeedForward(d, cfg.ffn_dim, cfg.dropout)
        self.self_attn = RelPositionAttention(cfg.n_heads, d, cfg.attention_dropout)
        self.conv_module = ConvModule(d, cfg.conv_kernel)
        self.feed_forward = FeedForward(d, cfg.ffn_dim, cfg.dropout)
        self.norm_ff_macaron, self.norm_mha, self.norm_conv, self.norm_ff, self.norm_final = (
            layer_norm(d) for _ in range(5)
        )
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, pos: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        x = x + 0.5 * self.dropout(self.feed_forward_macaron(self.norm_ff_macaron(x)))
        x = x + self.dropout(self.self_attn(self.norm_mha(x), pos, valid[:, None, None, :]))
        x = x + self.dropout(self.conv_module(self.norm_conv(x), valid))
        x = x + 0.5 * self.dropout(self.feed_forward(self.norm_ff(x)))
        return self.norm_final(x)


class Stream(nn.Module):
    """One modality's encoder: front end, Linear to d (`embed.0`), ×√d, conformer layers, `after_norm`."""

    def __init__(self, cfg: AutoAVSRConfig, kind: str):
        super().__init__()
        self.d = cfg.d_model
        self.frontend = VideoFrontEnd(cfg) if kind == "video" else AudioFrontEnd(cfg)
        self.embed = nn.Sequential(nn.Linear(cfg.resnet_channels[-1], cfg.d_model))
        self.encoders = nn.ModuleList(ConformerLayer(cfg) for _ in range(cfg.encoder_layers))
        self.after_norm = layer_norm(cfg.d_model)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, inputs: torch.Tensor, n_frames: torch.Tensor) -> torch.Tensor:
        """Video (B, T, H, W) or normalised audio (B, 640·T); n_frames (B,) -> (B, T, d), zeros at padding."""
        x = self.dropout(self.embed(self.frontend(inputs, n_frames)) * math.sqrt(self.d))
        valid = lengths_to_mask(n_frames, x.shape[1])
        pos = self.dropout(relative_sinusoids(x.shape[1], self.d, x.device))
        for layer in self.encoders:
            x = layer(x, pos, valid)
        return self.after_norm(x) * valid[..., None]


class Fusion(nn.Module):
    """[video; audio] -> Linear -> BatchNorm (valid frames) -> ReLU -> Linear."""

    def __init__(self, cfg: AutoAVSRConfig):
        super().__init__()
        self.fc1 = nn.Linear(2 * cfg.d_model, cfg.fusion_dim)
        self.bn1 = nn.BatchNorm1d(cfg.fusion_dim)
        self.fc2 = nn.Linear(cfg.fusion_dim, cfg.d_model)

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.relu(masked_norm(self.bn1, self.fc1(x).transpose(1, 2), valid).transpose(1, 2)))


# ---------------------------------------------------------------- decoder and CTC


class DecoderLayer(nn.Module):
    def __init__(self, cfg: AutoAVSRConfig):
        super().__init__()
        d = cfg.d_model
        self.self_attn = MultiHeadedAttention(cfg.n_heads, d, cfg.attention_dropout)
        self.src_attn = MultiHeadedAttention(cfg.n_heads, d, cfg.attention_dropout)
        self.feed_forward = FeedForward(d, cfg.ffn_dim, cfg.dropout)
        self.norm1, self.norm2, self.norm3 = layer_norm(d), layer_norm(d), layer_norm(d)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x, causal, memory, memory_valid):
        y = self.norm1(x)
        x = x + self.dropout(self.self_attn(y, y, causal))
        x = x + self.dropout(self.src_attn(self.norm2(x), memory, memory_valid))
        return x + self.dropout(self.feed_forward(self.norm3(x)))


class Decoder(nn.Module):
    """Pre-norm transformer decoder: token embedding ×√d + sinusoids, layers, `after_norm`, `output_layer`."""

    def __init__(self, cfg: AutoAVSRConfig):
        super().__init__()
        self.d = cfg.d_model
        self.embed = nn.Sequential(nn.Embedding(cfg.vocab_size, cfg.d_model))
        self.decoders = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.decoder_layers))
        self.after_norm = layer_norm(cfg.d_model)
        self.output_layer = nn.Linear(cfg.d_model, cfg.vocab_size)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, ys: torch.Tensor, memory: torch.Tensor, memory_lengths: torch.Tensor) -> torch.Tensor:
        """Logits (B, L, V) of the next token after each prefix of ys (B, L)."""
        L = ys.shape[1]
        x = self.dropout(self.embed(ys) * math.sqrt(self.d) + sinusoids(L, self.d, ys.device))
        causal = torch.ones(L, L, dtype=torch.bool, device=ys.device).tril()
        memory_valid = lengths_to_mask(memory_lengths, memory.shape[1])[:, None, None, :]
        for layer in self.decoders:
            x = layer(x, causal, memory, memory_valid)
        return self.output_layer(self.after_norm(x))


class CTCHead(nn.Module):
    def __init__(self, cfg: AutoAVSRConfig):
        super().__init__()
        self.ctc_lo = nn.Linear(cfg.d_model, cfg.vocab_size)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, enc: torch.Tensor) -> torch.Tensor:
        return F.log_softmax(self.ctc_lo(self.dropout(enc)), -1)


# ---------------------------------------------------------------- the reader


class AutoAVSR(Reader):
    """The reader. `vocab`: the object its outputs are numbered by (default: VOCAB, for cfg.vocab "characters"; a
    SentencePieceVocabulary for "sentencepiece", which `load_autoavsr` reads from the folder)."""

    def __init__(self, cfg: AutoAVSRConfig, vocab=None):
        super().__init__()
        self.cfg = cfg
        if cfg.mode in ("av", "video"):
            self.video_encoder = Stream(cfg, "video")
        if cfg.mode in ("av", "audio"):
            self.audio_encoder = Stream(cfg, "audio")
        if cfg.mode == "av":
            self.fusion = Fusion(cfg)
        self.decoder = Decoder(cfg)
        self.ctc = CTCHead(cfg)
        if vocab is None and cfg.vocab == "characters":
            vocab = VOCAB
        if vocab is not None and len(vocab) != cfg.vocab_size:
            raise ValueError(f"the vocabulary {vocab!r} has {len(vocab)} tokens; the config says {cfg.vocab_size}")
        self.vocab = vocab  # None: a model built for its shapes only (it cannot read text)
        self.decoding = Decoding()

    @property
    def device(self) -> torch.device:
        return self.ctc.ctc_lo.weight.device

    def save_vocabulary(self, folder: Path) -> None:
        """The SentencePiece model and units beside the weights, when the reader reads word pieces."""
        if isinstance(self.vocab, SentencePieceVocabulary):
            for src, name in ((self.vocab.model, SPM_FILE), (self.vocab.units, UNITS_FILE)):
                if src.resolve() != (folder / name).resolve():
                    shutil.copyfile(src, folder / name)

    def frames_for(self, audio_lengths: torch.Tensor) -> torch.Tensor:
        """Frames of audio-only input: whole 640-sample hops (as the release), at least one."""
        return (audio_lengths // AUDIO_HOP).clamp(min=1)

    def encode(self, video=None, video_lengths=None, audio=None, audio_lengths=None):
        """Encoder output (B, T, d_model) and its lengths; video (B, T, H, W) in [0, 1], audio (B, S) 16 kHz."""
        mode = self.cfg.mode
        need = {"av": ("video", "audio"), "video": ("video",), "audio": ("audio",)}[mode]
        missing = [k for k, x in (("video", video), ("audio", audio)) if k in need and x is None]
        if missing:
            raise ValueError(f"AutoAVSR in mode {mode!r} needs {' and '.join(need)}; {missing} not given")
        if "video" in need:
            if video.ndim != 4:
                raise ValueError(f"video must be (B, T, H, W) grey frames in [0, 1]; got shape {tuple(video.shape)}")
            if video_lengths is None:
                video_lengths = torch.full((video.shape[0],), video.shape[1], dtype=torch.long)
        if "audio" in need:
            if audio.ndim != 2:
                raise ValueError(f"audio must be (B, S) 16 kHz waveforms; got shape {tuple(audio.shape)}")
            if audio_lengths is None:
                audio_lengths = torch.full((audio.shape[0],), audio.shape[1], dtype=torch.long)
            audio_lengths = audio_lengths.to(self.device)
        n = (video_lengths if "video" in need else self.frames_for(audio_lengths)).to(self.device)
        streams = []
        if "video" in need:
            streams.append(self.video_features(video[:, : int(n.max())], n))
        if "audio" in need:
            streams.append(self.audio_features(audio.to(self.device), audio_lengths, n))
        valid = lengths_to_mask(n, streams[0].shape[1])
        x = self.fusion(torch.cat(streams, -1), valid) if mode == "av" else streams[0]
        return x * valid[..., None], n

    def video_features(self, video: torch.Tensor, n_frames: torch.Tensor) -> torch.Tensor:
        """The visual stream's output (B, T, d_model): what the reader knows from the lips alone."""
        if self.cfg.mode == "audio":
            raise ValueError("an audio-only AutoAVSR has no visual stream")
        return self.video_encoder(video.to(self.device), n_frames.to(self.device))

    def audio_features(self, audio: torch.Tensor, audio_lengths: torch.Tensor, n_frames: torch.Tensor) -> torch.Tensor:
        """The audio stream's output on the video's frames (B, max n_frames, d_model). In mode "av" each item's
        audio spans its video (cut or zero-padded, as the release's loader); each waveform is normalised to zero mean
        and unit variance over the samples read (the release's layer_norm)."""
        cfg = self.cfg
        if cfg.mode == "av":
            want = torch.round(n_frames * (cfg.sample_rate / cfg.fps)).long()
            n_audio = (want // AUDIO_HOP).clamp(min=1)
        else:
            n_audio = n_frames
        used = n_audio * AUDIO_HOP
        size = int(used.max())
        x = F.pad(audio, (0, max(0, size - audio.shape[1])))[:, :size]
        x = x * lengths_to_mask(torch.minimum(audio_lengths, used), size)
        inside = lengths_to_mask(used, size)
        mean = x.sum(1, keepdim=True) / used[:, None]
        var = (((x - mean) * inside) ** 2).sum(1, keepdim=True) / used[:, None]
        x = (x - mean) / torch.sqrt(var + 1e-8) * inside
        out = self.audio_encoder(x, n_audio)
        if not torch.equal(n_audio, n_frames):  # another video frame rate: onto the video's frames
            out = resample_frames(out, n_audio, n_frames)
        return out

    def ctc_log_probs(self, enc: torch.Tensor) -> torch.Tensor:
        return self.ctc(enc)

    def decode_step(self, ys: torch.Tensor, enc: torch.Tensor, enc_lengths: torch.Tensor) -> torch.Tensor:
        """Attention-decoder logits (B, L, V) for token prefixes ys (B, L) that start with <sos>."""
        return self.decoder(ys, enc, enc_lengths)

    def retokenize(self, tokens: torch.Tensor, token_lengths: torch.Tensor | None = None):
        """Character tokens (VOCAB ids, padded; as batches hold them) -> this reader's ids (B, L') and lengths."""
        if self.vocab is VOCAB:
            return tokens, token_lengths
        if self.vocab is None:
            raise ValueError("this AutoAVSR has no vocabulary (load it with load_autoavsr, or pass vocab=)")
        if token_lengths is None:
            token_lengths = (tokens != VOCAB.pad).sum(1)
        ids = [self.vocab.encode(VOCAB.decode(t[:n])) for t, n in zip(tokens.tolist(), token_lengths.tolist())]
        out = torch.full((len(ids), max(1, max(map(len, ids)))), self.vocab.pad, dtype=torch.long)
        for b, seq in enumerate(ids):
            out[b, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        return out, torch.tensor([len(s) for s in ids])

    def loss_of_encoding(self, enc, n_enc, tokens, token_lengths=None, *args, **kwargs) -> ExpertLoss:
        """`Reader.loss_of_encoding`, with the character tokens re-encoded in this reader's vocabulary."""
        tokens, token_lengths = self.retokenize(tokens, token_lengths)
        return super().loss_of_encoding(enc, n_enc, tokens, token_lengths, *args, **kwargs)


# ---------------------------------------------------------------- reader folders


def save_autoavsr(model: AutoAVSR, folder: str | Path, decoding: Decoding | None = None) -> Path:
    """A reader folder: save_reader's, which also writes the vocabulary files (AutoAVSR.save_vocabulary)."""
    return save_reader(model, folder, decoding)


def load_autoavsr(folder: str | Path, map_location: str | None = None) -> AutoAVSR:
    """The reader in `folder` (save_autoavsr), in eval mode, with its vocabulary and decoding settings."""
    folder = Path(folder)
    device = map_location or ("cuda" if torch.cuda.is_available() else "cpu")

    def build(cfg: AutoAVSRConfig) -> AutoAVSR:
        pieces = cfg.vocab == "sentencepiece"
        return AutoAVSR(cfg, SentencePieceVocabulary(folder / SPM_FILE, folder / UNITS_FILE) if pieces else None)

    model = load_checkpoint(build, AutoAVSRConfig, folder, map_location=device)
    model.decoding = load_decoding(folder)
    return model.to(device).eval()
