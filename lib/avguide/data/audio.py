"""WAV input/output at the project's sample rate (16 kHz mono), with explicit conversion."""

from __future__ import annotations

import logging
from fractions import Fraction
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000


class AudioError(ValueError):
    """An audio file is missing, unreadable or empty."""


def resample(wav: np.ndarray, sr_in: int, sr_out: int = SAMPLE_RATE) -> np.ndarray:
    """Polyphase resampling (deterministic, exact rational ratio)."""
    if sr_in == sr_out:
        return wav.astype(np.float32, copy=False)
    ratio = Fraction(sr_out, sr_in)
    return resample_poly(wav, ratio.numerator, ratio.denominator).astype(np.float32)


def load_wav(path: str | Path, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Read a WAV as mono float32 at `sample_rate`; stereo is downmixed and other rates resampled, with a warning."""
    path = Path(path)
    if not path.is_file():
        raise AudioError(f"{path}: audio file not found")
    try:
        wav, sr = sf.read(path, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError) as e:
        raise AudioError(f"{path}: not a readable audio file ({e})") from None
    if wav.shape[0] == 0:
        raise AudioError(f"{path}: audio file holds no samples")
    if wav.shape[1] > 1:
        log.warning("%s: %d channels, downmixed to mono", path, wav.shape[1])
    wav = wav.mean(axis=1)
    if sr != sample_rate:
        log.warning("%s: sample rate %d Hz, resampled to %d Hz", path, sr, sample_rate)
        wav = resample(wav, sr, sample_rate)
    return wav


def save_wav(path: str | Path, wav: np.ndarray, sample_rate: int = SAMPLE_RATE) -> None:
    """Write 16-bit PCM mono (deterministic bytes for the same samples)."""
    wav = np.clip(np.asarray(wav, dtype=np.float32), -1.0, 1.0)
    sf.write(Path(path), wav, sample_rate, subtype="PCM_16")
