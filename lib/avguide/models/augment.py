"""Training augmentation of audio-visual batches, as auto-AVSR: tensor in, tensor out, on any device.

Video (B, T, H, W) in [0, 1] with lengths (B,); audio (B, S) with lengths (B,). Each function leaves
padding untouched and takes an optional torch.Generator (on the tensors' device) for reproducibility.
`augment_av` applies the whole recipe of an `AugmentConfig`; it works as well on rendered video with
ground-truth audio (the AV-guided animator loss) as on the 2D corpus.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class AugmentConfig:
    crop_size: int = 80  # random crop (centre crop at evaluation: the expert does it itself)
    flip_prob: float = 0.5  # horizontal flip of the whole clip
    video_mask_s: float = 0.4  # adaptive time masking: up to this long a mask ...
    video_mask_every_s: float = 1.0  # ... one mask per this many seconds of clip
    audio_mask_s: float = 0.4
    audio_mask_every_s: float = 1.0
    noise_prob: float = 0.5  # additive white noise at a random SNR
    snr_db: tuple[float, float] = (-5.0, 20.0)
    drop_audio_prob: float = 0.0  # whole stream zeroed (modality dropout): the model must read the lips
    drop_video_prob: float = 0.0  # whole stream zeroed: the model must also work from audio alone
    fps: float = 25.0
    sample_rate: int = 16000


def _rand(n: int, device, generator=None) -> torch.Tensor:
    return torch.rand(n, device=device, generator=generator)


def random_crop(video: torch.Tensor, size: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """One random size x size window per clip (the same for all its frames)."""
    b, t, h, w = video.shape
    if h < size or w < size:
        raise ValueError(f"random_crop: frames are {h}x{w}, smaller than the crop {size}")
    tops = (_rand(b, video.device, generator) * (h - size + 1)).long().tolist()
    lefts = (_rand(b, video.device, generator) * (w - size + 1)).long().tolist()
    return torch.stack([video[k, :, y : y + size, x : x + size] for k, (y, x) in enumerate(zip(tops, lefts))])


def center_crop(video: torch.Tensor, size: int) -> torch.Tensor:
    h, w = video.shape[-2:]
    top, left = max(0, (h - size) // 2), max(0, (w - size) // 2)
    return video[..., top : top + size, left : left + size]


def random_flip(video: torch.Tensor, prob: float = 0.5, generator: torch.Generator | None = None) -> torch.Tensor:
    """Mirror each clip left-right with probability `prob`."""
    flip = _rand(video.shape[0], video.device, generator) < prob
    return torch.where(flip[:, None, None, None], video.flip(-1), video)


def time_mask(
    x: torch.Tensor,
    lengths: torch.Tensor,
    max_width: int,
    every: int,
    fill: torch.Tensor | float = 0.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Adaptive time masking (auto-AVSR): item b gets lengths[b] // every masks, each of a random width in
    [0, max_width) at a random place inside its valid part, filled with `fill` (a scalar or one value per item)."""
    b, n = x.shape[0], x.shape[1]
    keep = torch.ones(b, n, dtype=torch.bool, device=x.device)
    pos = torch.arange(n, device=x.device)
    counts = (lengths // max(every, 1)).tolist()
    for k, count in enumerate(counts):
        if count == 0 or max_width < 1:
            continue
        width = (_rand(count, x.device, generator) * max_width).long()
        start = (_rand(count, x.device, generator) * (lengths[k] - width).clamp(min=1)).long()
        hit = (pos[None] >= start[:, None]) & (pos[None] < (start + width)[:, None])
        keep[k] &= ~hit.any(0)
    keep = keep.view(b, n, *([1] * (x.ndim - 2)))
    fill = torch.as_tensor(fill, dtype=x.dtype, device=x.device)
    if fill.ndim == 1:
        fill = fill.view(b, *([1] * (x.ndim - 1)))
    return torch.where(keep, x, fill)


def add_noise(
    audio: torch.Tensor,
    lengths: torch.Tensor,
    snr_db: tuple[float, float],
    prob: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """White noise at a random SNR (uniform in `snr_db`) on each waveform with probability `prob`, not on padding."""
    b, s = audio.shape
    valid = torch.arange(s, device=audio.device)[None] < lengths[:, None]
    power = (audio**2 * valid).sum(1) / lengths.clamp(min=1)
    snr = snr_db[0] + _rand(b, audio.device, generator) * (snr_db[1] - snr_db[0])
    scale = torch.sqrt(power / 10 ** (snr / 10)) * (_rand(b, audio.device, generator) < prob)
    noise = torch.randn(audio.shape, device=audio.device, generator=generator, dtype=audio.dtype)
    return audio + noise * scale[:, None] * valid


def mask_chunks(
    audio: torch.Tensor,
    lengths: torch.Tensor,
    fraction: float,
    chunk: int,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Zero round(fraction · k) of the k chunks of `chunk` samples of each waveform, chosen at random (1.0: the
    whole waveform; what is left of a masked chunk beyond the waveform is padding anyway)."""
    if not 0 <= fraction <= 1:
        raise ValueError(f"the masked fraction of the speech must be in [0, 1]; got {fraction}")
    keep = torch.ones_like(audio)
    for b, n in enumerate(lengths.tolist()):
        k = -(-int(n) // chunk)
        masked = torch.randperm(k, generator=generator, device="cpu")[: int(round(fraction * k))]
        for c in masked.tolist():
            keep[b, c * chunk : (c + 1) * chunk] = 0
    return audio * keep


def drop_stream(x: torch.Tensor, prob: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Zero each item's whole stream with probability `prob` (modality dropout)."""
    drop = _rand(x.shape[0], x.device, generator) < prob
    return x * (~drop).view(-1, *([1] * (x.ndim - 1)))


def augment_av(
    video: torch.Tensor | None,
    video_lengths: torch.Tensor | None,
    audio: torch.Tensor | None,
    audio_lengths: torch.Tensor | None,
    cfg: AugmentConfig,
    generator: torch.Generator | None = None,
):
    """The training recipe: video random crop, flip, time masks (filled with the clip's mean frame);
    audio additive noise, time masks; optional modality dropout (never both streams of one item).
    Either stream may be None. Returns (video, audio)."""
    if video is not None:
        video = random_crop(video, cfg.crop_size, generator) if video.shape[-1] >= cfg.crop_size else video
        video = random_flip(video, cfg.flip_prob, generator)
        valid = (torch.arange(video.shape[1], device=video.device)[None] < video_lengths[:, None]).to(video.dtype)
        mean = (video * valid[..., None, None]).sum(1) / video_lengths.clamp(min=1)[:, None, None]
        keep = time_mask(
            torch.ones_like(valid),
            video_lengths,
            round(cfg.video_mask_s * cfg.fps),
            round(cfg.video_mask_every_s * cfg.fps),
            0.0,
            generator,
        )
        video = torch.where(keep[..., None, None] > 0, video, mean[:, None])
    if audio is not None:
        audio = add_noise(audio, audio_lengths, cfg.snr_db, cfg.noise_prob, generator)
        audio = time_mask(
            audio,
            audio_lengths,
            round(cfg.audio_mask_s * cfg.sample_rate),
            round(cfg.audio_mask_every_s * cfg.sample_rate),
            0.0,
            generator,
        )
    if video is not None and audio is not None and (cfg.drop_audio_prob > 0 or cfg.drop_video_prob > 0):
        u = _rand(video.shape[0], video.device, generator)
        drop_audio = u < cfg.drop_audio_prob
        drop_video = (u >= cfg.drop_audio_prob) & (u < cfg.drop_audio_prob + cfg.drop_video_prob)
        audio = audio * (~drop_audio)[:, None].to(audio.device)
        video = video * (~drop_video)[:, None, None, None]
    return video, audio
