"""Phonemes -> visemes -> articulation trajectories (Cohen-Massaro coarticulation).

Each phoneme maps to one viseme target, or two for diphthongs (see visemes.json). Every target has a
dominance per rig parameter; the parameter value at time t is the dominance-weighted mean of all
targets, with dominance decaying away from each target's centre. High dominance (lip closure of
p/b/m, lower-lip tuck of f/v) means the target is reached whatever its neighbours do; low dominance
(the lips during k, t, n) means the lips take the shape of the neighbouring vowels.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from importlib.resources import files

import numpy as np


class VisemeError(KeyError):
    """A phoneme has no entry in the viseme table."""

    def __str__(self) -> str:
        return str(self.args[0])


@dataclass(frozen=True)
class VisemeTable:
    parameters: tuple[str, ...]
    targets: dict[str, np.ndarray]
    dominance: dict[str, np.ndarray]
    phonemes: dict[str, tuple[str, ...]]

    @property
    def visemes(self) -> list[str]:
        return list(self.targets)

    def of(self, phoneme: str, where: str = "") -> tuple[str, ...]:
        try:
            return self.phonemes[phoneme]
        except KeyError:
            raise VisemeError(
                f"phoneme {phoneme!r}{' in ' + where if where else ''} is not in the viseme table "
                f"(avguide/face/visemes.json); add it there"
            ) from None


@lru_cache(maxsize=1)
def load_table() -> VisemeTable:
    raw = json.loads(files("avguide.face").joinpath("visemes.json").read_text())
    targets = {k: np.array(v["target"], np.float64) for k, v in raw["visemes"].items()}
    dominance = {k: np.array(v["dominance"], np.float64) for k, v in raw["visemes"].items()}
    phonemes = {p: tuple(v) for p, v in raw["phonemes"].items()}
    for p, vs in phonemes.items():
        unknown = [v for v in vs if v not in targets]
        if unknown:
            raise ValueError(f"visemes.json: phoneme {p!r} maps to unknown viseme(s) {unknown}")
    return VisemeTable(tuple(raw["parameters"]), targets, dominance, phonemes)


def viseme_keys(phonemes: list[tuple[str, float, float]], where: str = "", table: VisemeTable | None = None):
    """Target keys (centre s, width s, viseme) for phoneme segments; long pauses get a key every 0.2 s.

    A key's dominance falls off over about half its segment (clipped to 35..100 ms), so short contacts
    such as a bilabial closure stay short instead of spreading over the neighbouring vowels.
    """
    table = table or load_table()
    keys = []
    for ph, start, end in phonemes:
        vis = table.of(ph, where)
        dur = end - start
        if vis == ("sil",) and dur > 0.3:
            keys += [(t, 0.1, "sil") for t in np.arange(start + 0.1, end, 0.2)]
        elif len(vis) == 1:
            keys.append((start + 0.5 * dur, float(np.clip(0.5 * dur, 0.035, 0.1)), vis[0]))
        else:
            w = float(np.clip(0.3 * dur, 0.035, 0.1))
            keys += [(start + 0.3 * dur, w, vis[0]), (start + 0.8 * dur, w, vis[1])]
    return keys


def articulate(
    keys,
    times: np.ndarray,
    gain: float = 1.0,
    jitter_s: float = 0.0,
    rng: np.random.Generator | None = None,
    table: VisemeTable | None = None,
) -> np.ndarray:
    """(T, 6) speech parameters at `times` (seconds) from viseme keys.

    gain scales the free articulators (jaw, rounding, spreading, upper-lip raise) and leaves contacts
    (closure, tuck) alone; jitter_s moves each key's centre by a normal amount.
    """
    table = table or load_table()
    if not keys:
        return np.zeros((len(times), len(table.parameters)))
    centres = np.array([t for t, _, _ in keys])
    widths = np.array([w for _, w, _ in keys])
    if jitter_s > 0:
        centres = centres + (rng or np.random.default_rng()).normal(0, jitter_s, len(centres))
    free = np.array([p not in ("close", "tuck") for p in table.parameters])
    targets = np.stack([table.targets[v] for _, _, v in keys])
    targets[:, free] = np.clip(targets[:, free] * gain, 0, 1)
    alpha = np.stack([table.dominance[v] for _, _, v in keys])  # (K, P)
    d = (times[:, None] - centres[None, :]) / widths[None, :]  # (T, K)
    log_dom = np.log(alpha)[None] - (d**2)[:, :, None]  # (T, K, P), in logs so far gaps do not underflow
    dom = np.exp(log_dom - log_dom.max(1, keepdims=True))
    return (dom * targets[None]).sum(1) / dom.sum(1)
