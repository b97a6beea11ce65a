"""A speech–lip contrastive critic ("sync critic") on lip-vertex motion windows: no renderer.

    lip offsets (B, T, L, 3) metres ─► ×1000 (mm) ─► flatten ─► linear ─┐
    audio (B, S) 16 kHz ─► log-mel (100 Hz) ─► resampled, 4 steps a frame ─► stacked ─► linear ─┤
        ┌────────────────────────────────────────────────────────────────────────────────────┘
        └─► (per stream) Conv1d k=window+1 ─► Conv1d k=window+1 ─► linear ─► L2-normalised (B, T, dim)

Each stream sees 2·window+1 frames around frame t (two "same"-padded convolutions whose kernels add up to
that receptive field; 11 frames, 0.44 s at 25 fps with window=5): about a syllable on either side, enough
context for coarticulation without seeing the whole sentence. Padded frames are zeroed before every
convolution, so the embedding of a frame does not depend on how much its item was padded.

The score of lip window t against audio window s is their cosine similarity divided by `temperature`
(a small temperature makes the softmax over candidates sharp, so the true window must beat its closest
rivals, not just the average). The loss is InfoNCE whose negatives are the OTHER windows of the SAME clip
(same speaker, same face, same sentence): what is left to tell the true window apart is timing, so a
lip motion that is late, early or missing costs, which is what a sync loss on an animator should measure.
Windows closer than `exclude` frames to the true one are left out: they overlap it almost entirely.

The critic is trained on ground-truth meshes (avguide.training.critic) and then frozen; its loss is
differentiable with respect to the lip offsets, so an animator's predictions can be trained through it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
import torchaudio
from torch import nn

from avguide.models.expert import lengths_to_mask, log_mel, resample_frames

AUDIO_STEPS = 4  # log-mel steps stacked per video frame (100 Hz mel onto 25 fps: no step is dropped)


@dataclass
class CriticConfig:
    n_lip_vertices: int
    fps: float = 25.0
    sample_rate: int = 16000
    n_mels: int = 40
    window: int = 5  # frames of context on each side: a window spans 2·window+1 frames
    dim: int = 64  # embedding width
    hidden: int = 128
    temperature: float = 0.1
    exclude: int = 1  # candidate windows closer than this many frames to the true one are left out
    offset_scale: float = 1000.0  # metres -> millimetres for the lip offsets

    def __post_init__(self):
        for name in ("n_lip_vertices", "n_mels", "dim", "hidden", "exclude"):
            if getattr(self, name) < 1:
                raise ValueError(f"CriticConfig.{name} must be >= 1; found {getattr(self, name)}")
        if self.window < 0:
            raise ValueError(f"CriticConfig.window must be >= 0; found {self.window}")
        if self.temperature <= 0:
            raise ValueError(f"CriticConfig.temperature must be > 0; found {self.temperature}")


class WindowEncoder(nn.Module):
    """Per-frame features (B, T, n_in) -> L2-normalised (B, T, dim) seeing 2·window+1 frames around each frame."""

    def __init__(self, n_in: int, cfg: CriticConfig):
        super().__init__()
        k1, k2 = 2 * (cfg.window // 2) + 1, 2 * (cfg.window - cfg.window // 2) + 1  # k1 + k2 - 1 = 2·window + 1
        self.inp = nn.Linear(n_in, cfg.hidden)
        self.conv1 = nn.Conv1d(cfg.hidden, cfg.hidden, k1, padding=k1 // 2)
        self.conv2 = nn.Conv1d(cfg.hidden, cfg.hidden, k2, padding=k2 // 2)
        self.out = nn.Linear(cfg.hidden, cfg.dim)

    def forward(self, x: torch.Tensor, n_frames: torch.Tensor) -> torch.Tensor:
        keep = lengths_to_mask(n_frames, x.shape[1])[:, None].to(x.dtype)  # (B, 1, T)
        x = F.gelu(self.inp(x)).transpose(1, 2) * keep
        x = F.gelu(self.conv1(x)) * keep
        x = F.gelu(self.conv2(x)) * keep
        return F.normalize(self.out(x.transpose(1, 2)), dim=-1) * keep.transpose(1, 2)


class SyncCritic(nn.Module):
    """Two window encoders, lips and speech, into one embedding space; `loss` is the symmetric InfoNCE over the
    windows of each clip. Inputs are checked: a wrong shape is a ValueError naming the expected and found sizes."""

    def __init__(self, cfg: CriticConfig):
        super().__init__()
        self.cfg = cfg
        self.hop, self.n_fft = cfg.sample_rate // 100, cfg.sample_rate // 40
        self.mel = torchaudio.transforms.MelSpectrogram(
            cfg.sample_rate, n_fft=self.n_fft, hop_length=self.hop, n_mels=cfg.n_mels, center=False
        )
        self.lips = WindowEncoder(cfg.n_lip_vertices * 3, cfg)
        self.audio = WindowEncoder(cfg.n_mels * AUDIO_STEPS, cfg)

    def _check(self, offsets: torch.Tensor | None, audio, audio_lengths, n_frames: torch.Tensor) -> None:
        if n_frames.dim() != 1:
            raise ValueError(f"SyncCritic: n_frames must be (B,); found shape {tuple(n_frames.shape)}")
        if offsets is not None:
            want = (len(n_frames), "T", self.cfg.n_lip_vertices, 3)
            if offsets.dim() != 4 or offsets.shape[0] != want[0] or tuple(offsets.shape[2:]) != want[2:]:
                raise ValueError(f"SyncCritic: expected lip offsets of shape {want}; found {tuple(offsets.shape)}")
            if int(n_frames.max()) > offsets.shape[1]:
                raise ValueError(
                    f"SyncCritic: n_frames up to {int(n_frames.max())} but offsets have {offsets.shape[1]}"
                )
        if audio is not None:
            if audio.dim() != 2 or audio.shape[0] != len(n_frames):
                raise ValueError(
                    f"SyncCritic: expected audio of shape ({len(n_frames)}, S); found {tuple(audio.shape)}"
                )
            if audio_lengths.shape != n_frames.shape or int(audio_lengths.max()) > audio.shape[1]:
                raise ValueError(
                    f"SyncCritic: audio_lengths {audio_lengths.tolist()} do not fit audio of shape {tuple(audio.shape)}"
                )
        if int(n_frames.min()) < 1:
            raise ValueError(f"SyncCritic: every item needs at least one frame; found n_frames {n_frames.tolist()}")

    def embed_lips(self, offsets: torch.Tensor, n_frames: torch.Tensor) -> torch.Tensor:
        """(B, T, L, 3) lip-vertex offsets from the template (metres) -> (B, T, dim); zero on padded frames."""
        self._check(offsets, None, None, n_frames)
        x = (offsets * self.cfg.offset_scale).flatten(2)
        return self.lips(x, n_frames.to(x.device))

    def embed_audio(self, audio: torch.Tensor, audio_lengths: torch.Tensor, n_frames: torch.Tensor) -> torch.Tensor:
        """(B, S) waveform -> (B, max n_frames, dim): log-mel normalised over each utterance's valid steps, then
        resampled onto AUDIO_STEPS steps per video frame of the item, stacked, and encoded like the lips."""
        self._check(None, audio, audio_lengths, n_frames)
        audio_lengths, n_frames = audio_lengths.to(audio.device), n_frames.to(audio.device)
        x, n = log_mel(self.mel, audio, audio_lengths, self.hop, self.n_fft)  # (B, n_mels, steps)
        x = resample_frames(x.transpose(1, 2), n, n_frames * AUDIO_STEPS)
        x = x.reshape(x.shape[0], -1, AUDIO_STEPS * self.cfg.n_mels)  # (B, T, steps·n_mels)
        return self.audio(x, n_frames)

    @staticmethod
    def similarity(lips_emb: torch.Tensor, audio_emb: torch.Tensor) -> torch.Tensor:
        """(B, T, T) cosine similarity of lip window t (rows) and audio window s (columns)."""
        t = min(lips_emb.shape[1], audio_emb.shape[1])
        return torch.einsum("btd,bsd->bts", lips_emb[:, :t], audio_emb[:, :t])

    def candidates(self, n_frames: torch.Tensor, size: int) -> torch.Tensor:
        """(B, T, T) bool: the (t, s) pairs that compete: both valid, and s = t or |s - t| >= exclude."""
        valid = lengths_to_mask(n_frames, size)
        t = torch.arange(size, device=n_frames.device)
        gap = (t[:, None] - t[None, :]).abs()
        keep = (gap == 0) | (gap >= self.cfg.exclude)
        return valid[:, :, None] & valid[:, None, :] & keep[None]

    def logits(self, lips_emb: torch.Tensor, audio_emb: torch.Tensor, n_frames: torch.Tensor) -> torch.Tensor:
        """(B, T, T) similarity / temperature; -inf where t or s is padding or 0 < |s - t| < exclude."""
        sim = self.similarity(lips_emb, audio_emb) / self.cfg.temperature
        keep = self.candidates(n_frames.to(sim.device), sim.shape[1])
        return sim.masked_fill(~keep, float("-inf"))

    def scores(self, offsets, audio, audio_lengths, n_frames) -> torch.Tensor:
        """(B, T, T) logits of a batch: lip window t (rows) against audio window s (columns)."""
        t = int(n_frames.max())
        lips = self.embed_lips(offsets, n_frames)[:, :t]
        return self.logits(lips, self.embed_audio(audio, audio_lengths, n_frames), n_frames)

    def loss(self, offsets, audio, audio_lengths, n_frames) -> torch.Tensor:
        """Symmetric InfoNCE of a batch (see `info_nce`); differentiable with respect to `offsets`."""
        return self.info_nce(self.scores(offsets, audio, audio_lengths, n_frames), n_frames)

    @staticmethod
    def info_nce(logits: torch.Tensor, n_frames: torch.Tensor) -> torch.Tensor:
        """Each valid lip window must pick its audio window among the clip's candidates (rows) and each audio
        window its lip window (columns): cross-entropy with target t, mean over valid frames, both directions."""
        valid = lengths_to_mask(n_frames.to(logits.device), logits.shape[1])
        target = torch.arange(logits.shape[1], device=logits.device).expand_as(valid)[valid]
        rows = F.cross_entropy(logits[valid], target)
        cols = F.cross_entropy(logits.transpose(1, 2)[valid], target)
        return (rows + cols) / 2

    @torch.no_grad()
    def accuracy(self, offsets, audio, audio_lengths, n_frames) -> float:
        """Share of valid lip windows whose true audio window scores highest among the candidates."""
        logits = self.scores(offsets, audio, audio_lengths, n_frames)
        valid = lengths_to_mask(n_frames.to(logits.device), logits.shape[1])
        target = torch.arange(logits.shape[1], device=logits.device).expand_as(valid)
        return float((logits.argmax(-1) == target)[valid].float().mean())
