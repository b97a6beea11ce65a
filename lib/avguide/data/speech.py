"""Text to speech through libespeak-ng (shipped by espeakng-loader), with exact phoneme start times.

espeak-ng runs in synchronous mode with phoneme events: every phoneme event carries the sample index at
which the phoneme starts in the synthesised audio, so the timings are exact, not estimated. The
library is process-global state, so calls are serialised by a lock, and its random generators are
seeded before every call.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import struct
import threading
from dataclasses import dataclass
from pathlib import Path

import espeakng_loader
import numpy as np

from avguide.data.audio import SAMPLE_RATE, resample

_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INIT_PHONEME_EVENTS = 0x0001
_INIT_DONT_EXIT = 0x8000
_EVENT_LIST_TERMINATED, _EVENT_PHONEME = 0, 7
_PARAM = {"rate": 1, "volume": 2, "pitch": 3, "range": 4, "wordgap": 7}
_CHARS_UTF8 = 1


class _Event(ctypes.Structure):  # espeak_EVENT from speak_lib.h
    _fields_ = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),
        ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int),
        ("sample", ctypes.c_int),
        ("user_data", ctypes.c_void_p),
        ("id", ctypes.c_char * 8),
    ]


_Callback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event))


@dataclass(frozen=True)
class Voice:
    """An espeak-ng voice: language voice + variant (e.g. "en-us+m3"), rate in words/min, pitch and range 0-100."""

    name: str = "en-us"
    rate: int = 170
    pitch: int = 50
    range: int = 50


@dataclass
class Speech:
    audio: np.ndarray  # float32 mono at SAMPLE_RATE
    phonemes: list[tuple[str, float, float]]  # (espeak phoneme mnemonic without stress marks, start s, end s)


class _Espeak:
    def __init__(self):
        self.lib = ctypes.CDLL(espeakng_loader.get_library_path())
        self.lib.espeak_Initialize.restype = ctypes.c_int
        data = espeakng_loader.get_data_path().encode()
        self.rate = self.lib.espeak_Initialize(
            _AUDIO_OUTPUT_SYNCHRONOUS, 0, data, _INIT_PHONEME_EVENTS | _INIT_DONT_EXIT
        )
        if self.rate <= 0:
            raise RuntimeError(f"libespeak-ng failed to initialise with data at {data.decode()}")
        self._chunks: list[np.ndarray] = []
        self._events: list[tuple[str, int]] = []
        self._callback = _Callback(self._on_audio)  # keep a reference: ctypes must not free it
        self.lib.espeak_SetSynthCallback(self._callback)
        self.lock = threading.Lock()
        self.libc = ctypes.CDLL(ctypes.util.find_library("c"))

    def _on_audio(self, wav, n, events) -> int:
        if wav and n > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
        i = 0
        while events[i].type != _EVENT_LIST_TERMINATED:
            if events[i].type == _EVENT_PHONEME:
                self._events.append((events[i].id.decode("ascii", "replace"), events[i].sample))
            i += 1
        return 0

    def synth(self, text: str, voice: Voice, seed: int) -> tuple[np.ndarray, list[tuple[str, int]]]:
        with self.lock:
            # Voices with breath noise draw from espeak-ng's generator and libc's rand(), seeded from the clock.
            self.lib.espeak_ng_SetRandSeed(ctypes.c_long(seed))
            self.libc.srand(ctypes.c_uint(seed))
            if self.lib.espeak_SetVoiceByName(voice.name.encode()) != 0:
                raise ValueError(f"espeak-ng has no voice {voice.name!r}")
            for key in ("rate", "pitch", "range"):
                self.lib.espeak_SetParameter(_PARAM[key], int(getattr(voice, key)), 0)
            self._chunks, self._events = [], []
            data = text.encode("utf-8") + b"\0"
            self.lib.espeak_Synth(data, len(data), 0, 0, 0, _CHARS_UTF8, None, None)
            self.lib.espeak_Synchronize()
            wav = np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)
            return wav, list(self._events)


_engine: _Espeak | None = None


def _espeak() -> _Espeak:
    global _engine
    if _engine is None:
        _engine = _Espeak()
    return _engine


def strip_stress(phoneme: str) -> str:
    return phoneme.lstrip("',")


def synthesize(text: str, voice: Voice = Voice(), seed: int = 0) -> Speech:
    """Speak `text`; return 16 kHz audio and the phoneme segments with exact start times.

    libespeak-ng also keeps state from one call to the next (a second call in a process can come out a
    few samples off the first), so a reproducible corpus makes its calls in a fixed order in a fresh
    process (see avguide.data.synthetic.build_corpus).
    """
    if not text.strip():
        raise ValueError("cannot synthesise an empty text")
    engine = _espeak()
    wav, events = engine.synth(text, voice, seed)
    if wav.size == 0:
        raise RuntimeError(f"espeak-ng produced no audio for {text!r} with voice {voice}")
    sr = engine.rate
    audio = resample(wav.astype(np.float32) / 32768.0, sr, SAMPLE_RATE)
    duration = len(audio) / SAMPLE_RATE
    phonemes = []
    for k, (ph, sample) in enumerate(events):
        start = sample / sr
        end = events[k + 1][1] / sr if k + 1 < len(events) else duration
        if end > start:  # zero-length markers (e.g. the final pause at the very end) carry no time
            phonemes.append((strip_stress(ph), start, min(end, duration)))
    return Speech(audio=audio, phonemes=phonemes)


def phoneme_inventory(voice_table: str = "en-us") -> dict[str, int]:
    """All phonemes of an espeak-ng phoneme table and the tables it inherits from, read from `phontab`.

    Returns {mnemonic: espeak phoneme type}; type 0 is a pause, 1 a stress mark, 9 a virtual phoneme.
    """
    data = (Path(espeakng_loader.get_data_path()) / "phontab").read_bytes()
    tables, pos = [], 4
    for _ in range(data[0]):
        n, includes = data[pos], data[pos + 1]
        name = data[pos + 4 : pos + 36].split(b"\0")[0].decode()
        pos += 36
        entries = {}
        for _ in range(n):
            mnemonic, _flags, _prog, _code, kind = struct.unpack_from("<IIHBB", data, pos)
            pos += 16
            label = mnemonic.to_bytes(4, "little").rstrip(b"\0").decode("latin1")
            if label:
                entries.setdefault(label, kind)
        tables.append((name, includes, entries))
    names = [t[0] for t in tables]
    if voice_table not in names:
        raise ValueError(f"phontab has no table {voice_table!r}")
    inventory: dict[str, int] = {}
    i = names.index(voice_table)
    while True:
        _, includes, entries = tables[i]
        for label, kind in entries.items():
            inventory.setdefault(label, kind)
        if includes == 0 or includes - 1 == i:
            break
        i = includes - 1
    return inventory
