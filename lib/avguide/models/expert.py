"""The audio-visual lip-reading expert (auto-AVSR design) and, in mode "video", the visual-only judge.

    video (B, T, H, W) grey in [0, 1] ─► centre crop ─► 3D conv stem ─► 2D ResNet per frame ─► pool ─► conformer ──────┐
    audio (B, S) 16 kHz ─► log-mel (100 Hz) ─► conv subsampling (25 Hz) ─► resampled to the video frames ─► conformer ─┤
        ┌──────────────────────────────────────────────────────────────────────────────────────────────────────────────┘
        └─► fusion MLP ─┬─► CTC head
                        └─► transformer decoder

One class serves three modes (`ExpertConfig.mode`): "av" (both streams, fused), "video" (lip reading only)
and "audio". Audio features are linearly resampled, per item, onto the video's frame count (times
`upsample`), so any frame rate works. The loss is λ·CTC + (1-λ)·label-smoothed cross-entropy of the
attention decoder; `loss(..., reduction="none")` gives both parts per item. Every stage masks padded
frames, so in eval mode the per-item losses do not depend on how much an item was padded. The whole
model is differentiable with respect to the video (rendered frames can be trained through it).

Decoding: `greedy_ctc` and `beam_search` (attention decoder with CTC prefix scores, as ESPnet /
auto-AVSR), both batched. `transcribe` decodes with the model's `decoding` settings unless told otherwise; a
reader folder (`save_reader`) holds them beside the weights as decoding.json, and `load_expert` reads them back.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
import torchaudio
from torch import nn

from avguide.data.text import VOCAB
from avguide.models.checkpoint import checkpoint_class, load_checkpoint, save_checkpoint

log = logging.getLogger(__name__)

MODES = ("av", "video", "audio")
DECODING_FILE = "decoding.json"  # beside a reader's weights: how it decodes


@dataclass
class ExpertConfig:
    mode: str = "av"  # av | video | audio
    vocab_size: int = len(VOCAB)
    fps: float = 25.0  # video frame rate (audio-only mode: how many frames the audio is resampled to)
    sample_rate: int = 16000
    # visual front end
    crop_size: int = 80  # larger inputs are centre-cropped to this (training crops at random beforehand)
    video_pool: int = 2  # average-pool frames by this factor first (88 -> 44: the renders are 56-88 px anyway)
    video_mean: float = 0.55
    video_std: float = 0.15
    stem_channels: int = 24
    stem_pool: bool = True  # 3x3 max-pool, stride 2, after the stem (as ResNet / auto-AVSR)
    resnet_channels: tuple[int, ...] = (24, 48, 96)  # one basic block per stage; strides 1, 2, 2
    # audio front end
    n_mels: int = 80
    # encoders, fusion, decoder
    d_model: int = 128
    n_heads: int = 4
    ffn_dim: int = 256
    conformer_layers: int = 2
    conv_kernel: int = 15
    decoder_layers: int = 1
    upsample: int = 1  # encoder frames per video frame
    dropout: float = 0.1
    # loss
    ctc_weight: float = 0.1  # λ_ctc
    label_smoothing: float = 0.1

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"ExpertConfig.mode must be one of {MODES}; found {self.mode!r}")
        self.resnet_channels = tuple(self.resnet_channels)


@dataclass(frozen=True)
class Decoding:
    """How a reader decodes by default: joint CTC/attention beam search with `beam_size` hypotheses (greedy CTC
    when beam_size <= 1), the CTC prefix score weighted by `ctc_weight`. The pretrain_expert stage saves its
    beam_size and decode_ctc_weight with each reader; these defaults are for a reader saved without them."""

    beam_size: int = 5
    ctc_weight: float = 0.3


class ExpertLoss(NamedTuple):
    loss: torch.Tensor  # λ·ctc + (1-λ)·ce
    ctc: torch.Tensor  # CTC negative log-likelihood per target token
    ce: torch.Tensor  # label-smoothed cross-entropy per target token (eos included)


def lengths_to_mask(lengths: torch.Tensor, size: int | None = None) -> torch.Tensor:
    """(B, size) bool, True on valid positions."""
    size = int(lengths.max()) if size is None else size
    return torch.arange(size, device=lengths.device)[None, :] < lengths[:, None]


def sinusoids(length: int, dim: int, device=None) -> torch.Tensor:
    pos = torch.arange(length, device=device, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / dim))
    pe = torch.zeros(length, dim, device=device)
    pe[:, 0::2], pe[:, 1::2] = torch.sin(pos * freq), torch.cos(pos * freq)
    return pe


# ---------------------------------------------------------------- front ends


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.skip = (
            nn.Sequential()
            if stride == 1 and cin == cout
            else nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        )

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(y)) + self.skip(x))


class VisualFrontEnd(nn.Module):
    """3D conv stem (k=(5,7,7), stride (1,2,2)) then a small ResNet on each valid frame, pooled to one vector."""

    def __init__(self, cfg: ExpertConfig):
        super().__init__()
        self.cfg = cfg
        c0 = cfg.stem_channels
        self.stem = nn.Conv3d(1, c0, (5, 7, 7), stride=(1, 2, 2), padding=(2, 3, 3), bias=False)
        self.stem_norm = nn.BatchNorm2d(c0)
        blocks, cin = [], c0
        for k, c in enumerate(cfg.resnet_channels):
            blocks.append(BasicBlock(cin, c, 1 if k == 0 else 2))
            cin = c
        self.resnet = nn.Sequential(*blocks)
        self.proj = nn.Linear(cin, cfg.d_model)

    def forward(self, video: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """(B, T, H, W) in [0, 1] -> (B, T, d_model); padded frames are zeros."""
        cfg = self.cfg
        b, t, h, w = video.shape
        if h > cfg.crop_size or w > cfg.crop_size:  # centre crop
            top, left = max(0, (h - cfg.crop_size) // 2), max(0, (w - cfg.crop_size) // 2)
            video = video[:, :, top : top + min(h, cfg.crop_size), left : left + min(w, cfg.crop_size)]
        x = (video - cfg.video_mean) / cfg.video_std
        if cfg.video_pool > 1:
            x = F.avg_pool2d(x.flatten(0, 1)[:, None], cfg.video_pool)[:, 0].unflatten(0, (b, t))
        valid = lengths_to_mask(lengths, t)
        x = x * valid[:, :, None, None]  # padding is zero, as the stem's own padding
        x = self._stem(x, valid)  # (N valid frames, C, h, w): neither the stem nor the ResNet computes padding
        x = x.contiguous(memory_format=torch.channels_last)  # oneDNN's faster layout on the CPU (docs/benchmarks.md)
        x = F.relu(self.stem_norm(x))
        if self.cfg.stem_pool:
            x = F.max_pool2d(x, 3, 2, 1)
        x = self.resnet(x).mean((-2, -1))
        out = x.new_zeros(b, t, x.shape[-1])
        out[valid] = x
        return self.proj(out) * valid[..., None]

    def _stem(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """`self.stem` (the 3D convolution) at the valid frames only: each frame's temporal neighbourhood stacked as
        channels, one 2D convolution with the same weights. The same sums as the Conv3d; on the CPU about half
        its time forward and backward (channels-last stacks, no padded frames)."""
        kt, pt = self.stem.kernel_size[0], self.stem.padding[0]
        stacks = F.pad(x, (0, 0, 0, 0, pt, pt)).unfold(1, kt, 1)[valid]  # (N, h, w, kt)
        return F.conv2d(
            stacks.permute(0, 3, 1, 2),
            self.stem.weight[:, 0],
            stride=self.stem.stride[1:],
            padding=self.stem.padding[1:],
        )


class AudioFrontEnd(nn.Module):
    """Log-mel at 100 Hz, per-utterance normalised, two stride-2 convolutions (25 Hz), resampled to `n_out` frames."""

    def __init__(self, cfg: ExpertConfig):
        super().__init__()
        self.hop, self.n_fft = cfg.sample_rate // 100, cfg.sample_rate // 40
        self.mel = torchaudio.transforms.MelSpectrogram(
            cfg.sample_rate, n_fft=self.n_fft, hop_length=self.hop, n_mels=cfg.n_mels, center=False
        )
        self.conv1 = nn.Conv1d(cfg.n_mels, cfg.d_model, 3, 2, 1)
        self.conv2 = nn.Conv1d(cfg.d_model, cfg.d_model, 3, 2, 1)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)

    def forward(self, audio: torch.Tensor, lengths: torch.Tensor, n_out: torch.Tensor) -> torch.Tensor:
        """(B, S) waveform -> (B, max n_out, d_model); item b is resampled onto n_out[b] frames."""
        x, n = log_mel(self.mel, audio, lengths, self.hop, self.n_fft)
        for conv in (self.conv1, self.conv2):
            x = F.gelu(conv(x))
            n = (n - 1) // 2 + 1
            x = x * lengths_to_mask(n, x.shape[-1])[:, None]
        return self.proj(resample_frames(x.transpose(1, 2), n, n_out))


def log_mel(mel: nn.Module, audio: torch.Tensor, lengths: torch.Tensor, hop: int, n_fft: int):
    """(B, n_mels, steps) log-mel of (B, S) waveforms of `lengths` samples (`mel`: a MelSpectrogram with
    center=False; the waveform padded by n_fft/2 on each side), normalised to zero mean and unit variance over each
    item's valid steps and zero beyond them; and those step counts (B,)."""
    pad = n_fft // 2
    audio = audio * lengths_to_mask(lengths, audio.shape[1])
    x = torch.log(mel(F.pad(audio, (pad, pad))) + 1e-6)
    n = lengths // hop + 1
    m = lengths_to_mask(n, x.shape[-1])[:, None]
    mean = (x * m).sum(-1, keepdim=True) / n[:, None, None]
    std = (((x - mean) * m) ** 2).sum(-1, keepdim=True).div(n[:, None, None]).add(1e-5).sqrt()
    return (x - mean) / std * m, n


def resample_frames(x: torch.Tensor, n_in: torch.Tensor, n_out: torch.Tensor) -> torch.Tensor:
    """Linear resampling of each item's n_in[b] valid frames of (B, L, D) onto n_out[b] frames (align_corners=False)."""
    t_out = int(n_out.max())
    t = torch.arange(t_out, device=x.device, dtype=x.dtype)[None, :]
    pos = ((t + 0.5) * (n_in / n_out)[:, None].to(x.dtype) - 0.5).clamp(min=0)
    pos = torch.minimum(pos, (n_in - 1)[:, None].to(x.dtype))
    lo = pos.floor().long()
    hi = torch.minimum(lo + 1, (n_in - 1)[:, None])
    frac = (pos - lo)[..., None]
    take = lambda idx: torch.gather(x, 1, idx[..., None].expand(-1, -1, x.shape[-1]))
    out = take(lo) * (1 - frac) + take(hi) * frac
    return out * lengths_to_mask(n_out, t_out)[..., None]


# ---------------------------------------------------------------- encoder (torchaudio's conformer, masked)


def conformer_forward(conformer: torchaudio.models.Conformer, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """torchaudio's Conformer with padded frames zeroed before every depthwise convolution
    (torchaudio lets padding leak into the last valid frames there)."""
    valid = lengths_to_mask(lengths, x.shape[1])
    pad_mask = ~valid
    keep = valid.T[..., None].to(x.dtype)  # (T, B, 1)
    x = x.transpose(0, 1)
    for layer in conformer.conformer_layers:
        x = layer.ffn1(x) * 0.5 + x
        y = layer.self_attn_layer_norm(x)
        y, _ = layer.self_attn(y, y, y, key_padding_mask=pad_mask, need_weights=False)
        x = layer.self_attn_dropout(y) + x
        conv = layer.conv_module
        y = conv.layer_norm(x).permute(1, 2, 0)  # (B, D, T)
        seq = conv.sequential
        y = seq[1](seq[0](y)) * valid[:, None]
        for module in list(seq)[2:]:
            y = module(y)
        x = x + y.permute(2, 0, 1)
        x = layer.ffn2(x) * 0.5 + x
        x = layer.final_layer_norm(x) * keep
    return x.transpose(0, 1)


def make_conformer(cfg: ExpertConfig) -> torchaudio.models.Conformer:
    return torchaudio.models.Conformer(
        input_dim=cfg.d_model,
        num_heads=cfg.n_heads,
        ffn_dim=cfg.ffn_dim,
        num_layers=cfg.conformer_layers,
        depthwise_conv_kernel_size=cfg.conv_kernel,
        dropout=cfg.dropout,
    )


# ---------------------------------------------------------------- the model


class Reader(nn.Module):
    """What every reader shares: the joint loss, greedy CTC and beam-search decoding, on top of a subclass's
    `encode(video, video_lengths, audio, audio_lengths) -> (enc, n_enc)`, `ctc_log_probs(enc)`,
    `decode_step(ys, enc, enc_lengths)`, `device`, `cfg` (with `ctc_weight`, `label_smoothing`, `vocab_size`) and
    `decoding`. `vocab` numbers the outputs (blank, pad, sos, eos, decode): the project's characters here."""

    vocab = VOCAB

    def loss(
        self,
        video=None,
        video_lengths=None,
        audio=None,
        audio_lengths=None,
        tokens=None,
        token_lengths=None,
        reduction: str = "mean",
        ctc_weight: float | None = None,
        label_smoothing: float | None = None,
    ) -> ExpertLoss:
        """Joint CTC / attention loss; tokens (B, L) padded with the vocabulary's pad, no <sos/eos>.

        Each part is per target token of its item; reduction "none" gives (B,) tensors, "mean" their mean.
        `ctc_weight` and `label_smoothing` default to the config's.
        """
        if tokens is None:
            raise ValueError(f"{type(self).__name__}.loss needs the target tokens")
        enc, n_enc = self.encode(video, video_lengths, audio, audio_lengths)
        return self.loss_of_encoding(enc, n_enc, tokens, token_lengths, reduction, ctc_weight, label_smoothing)

    def loss_of_encoding(
        self,
        enc: torch.Tensor,
        n_enc: torch.Tensor,
        tokens: torch.Tensor,
        token_lengths=None,
        reduction: str = "mean",
        ctc_weight: float | None = None,
        label_smoothing: float | None = None,
    ) -> ExpertLoss:
        """`loss` on an `encode` output (enc, n_enc): for a caller that also decodes the same encoding."""
        lam = self.cfg.ctc_weight if ctc_weight is None else ctc_weight
        smoothing = self.cfg.label_smoothing if label_smoothing is None else label_smoothing
        vocab, tokens = self.vocab, tokens.to(self.device)
        token_lengths = (token_lengths if token_lengths is not None else (tokens != vocab.pad).sum(1)).to(self.device)
        logp = self.ctc_log_probs(enc)
        ctc = F.ctc_loss(
            logp.transpose(0, 1), tokens, n_enc, token_lengths, blank=vocab.blank, reduction="none", zero_infinity=True
        ) / token_lengths.clamp(min=1)
        b = tokens.shape[0]
        valid = lengths_to_mask(token_lengths, tokens.shape[1])
        sos = torch.full((b, 1), vocab.sos, dtype=torch.long, device=self.device)
        ys_in = torch.cat([sos, tokens.masked_fill(~valid, vocab.pad)], 1)
        ys_out = torch.cat([tokens.masked_fill(~valid, vocab.pad), sos], 1)
        ys_out[torch.arange(b), token_lengths] = vocab.eos
        out_valid = lengths_to_mask(token_lengths + 1, ys_out.shape[1])
        logits = self.decode_step(ys_in, enc, n_enc)
        ce = F.cross_entropy(logits.transpose(1, 2), ys_out, reduction="none", label_smoothing=smoothing)
        ce = (ce * out_valid).sum(1) / (token_lengths + 1)
        total = lam * ctc + (1 - lam) * ce
        if reduction == "none":
            return ExpertLoss(total, ctc, ce)
        if reduction != "mean":
            raise ValueError(f"reduction must be 'mean' or 'none'; found {reduction!r}")
        return ExpertLoss(total.mean(), ctc.mean(), ce.mean())

    # ------------------------------------------------------------ decoding

    @torch.no_grad()
    def greedy_ctc(self, video=None, video_lengths=None, audio=None, audio_lengths=None) -> list[str]:
        enc, n = self.encode(video, video_lengths, audio, audio_lengths)
        return ctc_greedy_decode(self.ctc_log_probs(enc), n, self.vocab)

    @torch.no_grad()
    def beam_search(
        self,
        video=None,
        video_lengths=None,
        audio=None,
        audio_lengths=None,
        beam_size: int | None = None,
        ctc_weight: float | None = None,
    ) -> list[str]:
        enc, n = self.encode(video, video_lengths, audio, audio_lengths)
        beam_size, ctc_weight = self._settings(beam_size, ctc_weight)
        return joint_beam_search(self, enc, n, beam_size, ctc_weight)

    def transcribe(
        self,
        video=None,
        video_lengths=None,
        audio=None,
        audio_lengths=None,
        beam_size: int | None = None,
        ctc_weight: float | None = None,
    ) -> list[str]:
        """Transcripts by beam search (beam_size > 1) or greedy CTC (beam_size <= 1), in eval mode; settings not
        given are the model's `decoding`."""
        beam_size, ctc_weight = self._settings(beam_size, ctc_weight)
        was = self.training
        self.eval()
        try:
            if beam_size <= 1:
                return self.greedy_ctc(video, video_lengths, audio, audio_lengths)
            return self.beam_search(video, video_lengths, audio, audio_lengths, beam_size, ctc_weight)
        finally:
            self.train(was)

    def _settings(self, beam_size: int | None, ctc_weight: float | None) -> tuple[int, float]:
        return (
            self.decoding.beam_size if beam_size is None else beam_size,
            self.decoding.ctc_weight if ctc_weight is None else ctc_weight,
        )


class Expert(Reader):
    def __init__(self, cfg: ExpertConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        if cfg.mode in ("av", "video"):
            self.video_front = VisualFrontEnd(cfg)
            self.video_encoder = make_conformer(cfg)
        if cfg.mode in ("av", "audio"):
            self.audio_front = AudioFrontEnd(cfg)
            self.audio_encoder = make_conformer(cfg)
        if cfg.mode == "av":
            self.fusion = nn.Sequential(
                nn.Linear(2 * d, cfg.ffn_dim),
                nn.LayerNorm(cfg.ffn_dim),
                nn.ReLU(),
                nn.Dropout(cfg.dropout),
                nn.Linear(cfg.ffn_dim, d),
            )
        self.ctc_head = nn.Linear(d, cfg.vocab_size)
        self.embed = nn.Embedding(cfg.vocab_size, d)
        layer = nn.TransformerDecoderLayer(d, cfg.n_heads, cfg.ffn_dim, cfg.dropout, batch_first=True, norm_first=True)
        self.decoder = nn.TransformerDecoder(layer, cfg.decoder_layers, norm=nn.LayerNorm(d))
        self.out = nn.Linear(d, cfg.vocab_size)
        self.decoding = Decoding()  # load_expert sets the settings saved with the reader

    @property
    def device(self) -> torch.device:
        return self.ctc_head.weight.device

    def frames_for(self, audio_lengths: torch.Tensor) -> torch.Tensor:
        """Video frames spanned by audio of these lengths (audio-only mode)."""
        return torch.floor(audio_lengths.double() * self.cfg.fps / self.cfg.sample_rate + 0.5).long().clamp(min=1)

    def encode(
        self, video=None, video_lengths=None, audio=None, audio_lengths=None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Encoder output (B, T·upsample, d_model) and its lengths.

        Video (B, T, H, W) in [0, 1], audio (B, S) 16 kHz."""
        cfg, r = self.cfg, self.cfg.upsample
        need = {"av": ("video", "audio"), "video": ("video",), "audio": ("audio",)}[cfg.mode]
        given = {"video": video, "audio": audio}
        missing = [k for k in need if given[k] is None]
        if missing:
            raise ValueError(f"Expert in mode {cfg.mode!r} needs {' and '.join(need)}; {missing} not given")
        if video is not None and "video" in need:
            if video.ndim != 4:
                raise ValueError(f"video must be (B, T, H, W) grey frames in [0, 1]; got shape {tuple(video.shape)}")
            if video_lengths is None:
                video_lengths = torch.full((video.shape[0],), video.shape[1], dtype=torch.long, device=video.device)
        else:
            video_lengths = None
        if audio is not None and "audio" in need:
            if audio.ndim != 2:
                raise ValueError(f"audio must be (B, S) 16 kHz waveforms; got shape {tuple(audio.shape)}")
            if audio_lengths is None:
                audio_lengths = torch.full((audio.shape[0],), audio.shape[1], dtype=torch.long, device=audio.device)
        n_frames = (video_lengths if video_lengths is not None else self.frames_for(audio_lengths)).to(self.device)
        n_enc = n_frames * r
        streams = []
        if "video" in need:
            streams.append(self.video_features(video, n_frames))
        if "audio" in need:
            a = self.audio_front(audio.to(self.device), audio_lengths.to(self.device), n_enc)
            streams.append(
                conformer_forward(self.audio_encoder, a + sinusoids(a.shape[1], cfg.d_model, a.device), n_enc)
            )
        x = self.fusion(torch.cat(streams, -1)) if cfg.mode == "av" else streams[0]
        return x * lengths_to_mask(n_enc, x.shape[1])[..., None], n_enc

    def video_features(self, video: torch.Tensor, n_frames: torch.Tensor) -> torch.Tensor:
        """The visual stream's encoder output (B, T·upsample, d_model) for (B, T, H, W) video of n_frames (B,)
        frames: what the reader knows from the lips alone, each frame in the context of the whole clip (the
        input of the fusion in mode "av", of the heads in mode "video")."""
        if self.cfg.mode == "audio":
            raise ValueError("an audio-only Expert has no visual stream")
        r, n_frames = self.cfg.upsample, n_frames.to(self.device)
        v = self.video_front(video.to(self.device), n_frames)
        v = v.repeat_interleave(r, dim=1) if r > 1 else v
        return conformer_forward(
            self.video_encoder, v + sinusoids(v.shape[1], self.cfg.d_model, v.device), n_frames * r
        )

    def ctc_log_probs(self, enc: torch.Tensor) -> torch.Tensor:
        return F.log_softmax(self.ctc_head(enc), -1)

    def decode_step(self, ys: torch.Tensor, enc: torch.Tensor, enc_lengths: torch.Tensor) -> torch.Tensor:
        """Attention-decoder logits (B, L, V) for token prefixes ys (B, L) that start with <sos>."""
        L = ys.shape[1]
        x = self.embed(ys) * math.sqrt(self.cfg.d_model) + sinusoids(L, self.cfg.d_model, ys.device)
        causal = torch.triu(torch.ones(L, L, dtype=torch.bool, device=ys.device), 1)
        h = self.decoder(x, enc, tgt_mask=causal, memory_key_padding_mask=~lengths_to_mask(enc_lengths, enc.shape[1]))
        return self.out(h)


def ctc_greedy_decode(log_probs: torch.Tensor, lengths: torch.Tensor, vocab=VOCAB) -> list[str]:
    """Best path: argmax per frame, repeats collapsed, blanks removed; read with `vocab`."""
    best = log_probs.argmax(-1).cpu()
    out = []
    for b, n in enumerate(lengths.tolist()):
        path = best[b, :n].tolist()
        out.append(vocab.decode(t for k, t in enumerate(path) if t != vocab.blank and (k == 0 or t != path[k - 1])))
    return out


def joint_beam_search(
    model: Reader, enc: torch.Tensor, enc_lengths: torch.Tensor, beam_size: int, ctc_weight: float
) -> list[str]:
    """Batched beam search: score = (1-w)·log p_att + w·log p_ctc-prefix (ESPnet's joint decoding).

    The CTC prefix score of every extension of every hypothesis is computed for the whole vocabulary
    at once (the vocabulary is ~30 characters; auto-AVSR's 5,049 word pieces cost more but fit), with the forward
    variables of each hypothesis kept. Token ids and the text are the model's `vocab`'s.
    """
    vocab, device, neg = model.vocab, enc.device, -1e30
    B, T, _ = enc.shape
    K, V = beam_size, model.cfg.vocab_size
    N = B * K
    x = model.ctc_log_probs(enc)  # (B, T, V)
    tmask = lengths_to_mask(enc_lengths, T)
    x = x.masked_fill(~tmask[..., None], 0.0)  # beyond the end: probability one, never read by the end score
    x = x.repeat_interleave(K, 0)  # (N, T, V)
    enc_k, len_k = enc.repeat_interleave(K, 0), enc_lengths.repeat_interleave(K, 0)
    last_t = len_k - 1
    blank = x[:, :, vocab.blank]
    r_n = torch.full((N, T), neg, device=device)  # forward variables of each hypothesis' prefix
    r_b = torch.cumsum(blank, 1)
    valid_t = tmask.repeat_interleave(K, 0)
    r_b = r_b.masked_fill(~valid_t, neg)
    psi_prev = torch.zeros(N, device=device)
    ys = torch.full((N, 1), vocab.sos, dtype=torch.long, device=device)
    score = torch.full((B, K), neg, device=device)
    score[:, 0] = 0.0
    score = score.view(N)
    finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(B)]
    alive = torch.ones(B, dtype=torch.bool, device=device)
    max_len = int(enc_lengths.max())
    for step in range(max_len + 1):
        att = F.log_softmax(model.decode_step(ys, enc_k, len_k)[:, -1], -1)  # (N, V)
        # CTC prefix scores of every extension c
        last = ys[:, -1]
        rb_prev, rn_prev = r_b, r_n
        phi = torch.logaddexp(rn_prev, rb_prev)[..., None].repeat(1, 1, V)  # (N, T, V)
        if step > 0:  # a repeated character needs a blank in between
            phi[torch.arange(N, device=device), :, last] = rb_prev
        new_n = torch.full((N, T, V), neg, device=device)
        new_b = torch.full((N, T, V), neg, device=device)
        if step == 0:
            new_n[:, 0] = x[:, 0]
        log_psi = new_n[:, 0].clone()
        for t in range(1, T):
            ok = valid_t[:, t, None]
            n_t = torch.logaddexp(new_n[:, t - 1], phi[:, t - 1]) + x[:, t]
            b_t = torch.logaddexp(new_n[:, t - 1], new_b[:, t - 1]) + blank[:, t, None]
            new_n[:, t] = torch.where(ok, n_t, neg)
            new_b[:, t] = torch.where(ok, b_t, neg)
            log_psi = torch.where(ok, torch.logaddexp(log_psi, phi[:, t - 1] + x[:, t]), log_psi)
        end = torch.logaddexp(rn_prev, rb_prev).gather(1, last_t[:, None])[:, 0]
        log_psi[:, vocab.eos] = end
        log_psi[:, vocab.blank] = neg
        ctc_delta = log_psi - psi_prev[:, None]
        joint = (1 - ctc_weight) * att + ctc_weight * ctc_delta
        joint[:, vocab.blank] = neg
        total = (score[:, None] + joint).view(B, K * V)
        top, idx = total.topk(K, dim=1)  # (B, K)
        src = (idx // V) + torch.arange(B, device=device)[:, None] * K
        tok = idx % V
        src, tok, top = src.view(N), tok.view(N), top.view(N)
        # finished hypotheses leave the beam
        ended = (tok == vocab.eos) & (top > neg / 2)
        for n in ended.nonzero()[:, 0].tolist():
            b = n // K
            if alive[b]:
                finished[b].append((float(top[n]), ys[src[n], 1:].tolist()))
        top = top.masked_fill(ended, neg)
        ys = torch.cat([ys[src], tok[:, None]], 1)
        r_n = new_n[src, :, tok]
        r_b = new_b[src, :, tok]
        psi_prev = log_psi[src, tok]
        score = top
        best_alive = score.view(B, K).max(1).values
        for b in range(B):  # scores only fall as hypotheses grow: the best finished one cannot be overtaken
            if alive[b] and finished[b] and max(s for s, _ in finished[b]) >= float(best_alive[b]):
                alive[b] = False
        if not alive.any():
            break
        score = score.view(B, K).masked_fill(~alive[:, None], neg).view(N)
    out = []
    for b in range(B):
        if not finished[b]:
            out.append("")
            continue
        out.append(vocab.decode(max(finished[b], key=lambda h: h[0])[1]))
    return out


# ---------------------------------------------------------------- reader folders


def save_reader(model: Reader, folder: str | Path, decoding: Decoding | None = None) -> Path:
    """A reader folder: the weights and config (save_checkpoint) and decoding.json, the settings it decodes with
    (`decoding`, which also becomes the model's; default: the model's own)."""
    if decoding is not None:
        model.decoding = decoding
    folder = save_checkpoint(model, folder)
    (folder / DECODING_FILE).write_text(json.dumps(asdict(model.decoding), indent=1) + "\n")
    if hasattr(model, "save_vocabulary"):  # a reader of word pieces: its tokenizer files too
        model.save_vocabulary(folder)
    return folder


def load_decoding(folder: str | Path) -> Decoding:
    """The decoding settings saved in a reader folder; the defaults of Decoding for a folder saved without them."""
    path = Path(folder) / DECODING_FILE
    if not path.is_file():
        log.info(
            "%s: not found (a reader saved before decoding settings were); decoding with the defaults %s",
            path,
            Decoding(),
        )
        return Decoding()
    try:
        return Decoding(**json.loads(path.read_text()))
    except (ValueError, TypeError) as e:
        raise ValueError(f'{path}: expected {{"beam_size": int, "ctc_weight": float}} ({e})') from None


def load_expert(folder: str | Path, map_location: str | None = None) -> Reader:
    """A reader saved with save_reader (or save_checkpoint: then the default decoding), in eval mode (on CUDA when
    there is one, unless `map_location`): an Expert, or a converted auto-AVSR reader (avguide.models.autoavsr)."""
    if (Path(folder) / "model.safetensors").is_file() and checkpoint_class(folder) == "AutoAVSR":
        from avguide.models.autoavsr import load_autoavsr

        return load_autoavsr(folder, map_location)
    device = map_location or ("cuda" if torch.cuda.is_available() else "cpu")
    model = load_checkpoint(Expert, ExpertConfig, folder, map_location=device).to(device).eval()
    model.decoding = load_decoding(folder)
    return model
