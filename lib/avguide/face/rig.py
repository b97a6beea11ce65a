"""Articulatory face rig: per-frame articulation parameters -> vertex positions.

Parameters (all 0..1, one row per frame), in the order of `PARAMETERS`:
jaw opening, lip rounding/protrusion, lip spreading, lip closure/press, lower-lip tuck (f, v),
upper-lip raise; then the non-speech controls blink and brow raise.

Jaw opening rotates the lower face about a hinge behind the face. Rounding narrows and protrudes the
lips, spreading widens them. Closure is applied last and is exact: at closure 1 the lips meet along
the whole inner contour whatever the jaw does (a bilabial closes the lips), the upper lip taking
`UPPER_SHARE` of the way.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from avguide.face.template import BROW_Y, EYE, HINGE, N_ANGLES, N_LIP, N_ROLL, PARTS, FaceMesh

PARAMETERS = ("jaw", "round", "spread", "close", "tuck", "raise", "blink", "brow")
SPEECH_PARAMETERS = PARAMETERS[:6]
JAW_MAX_RAD = 0.17
UPPER_SHARE = 0.35


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3 - 2 * x)


@dataclass
class Rig:
    mesh: FaceMesh
    asymmetry: float = 0.0  # > 0: the subject's left side (x > 0) moves more

    def __post_init__(self):
        m = self.mesh
        v = m.vertices.astype(np.float64)
        self.rest = v
        on = m.ring >= 0
        theta = 2 * np.pi * np.maximum(m.angle, 0) / N_ANGLES
        sn, cs = np.sin(theta), np.cos(theta)
        n_lip_rings = N_ROLL + N_LIP
        # Distance (m) of a skin vertex from the vermilion border along its ray; 0 on the lips.
        border = (n_lip_rings - 1) * N_ANGLES + np.maximum(m.angle, 0)
        skin_d = np.where(m.ring >= n_lip_rings, np.linalg.norm(v[:, :2] - v[border, :2], axis=1), 0.0)
        # How much a vertex belongs to the lips: 1 on the lips, fading smoothly over the nearby skin
        # (over several millimetres, so no skin ring overtakes the next one and the surface never folds).
        self.w_lip = np.where(on, np.exp(-((skin_d / 0.009) ** 2)), 0.0)
        # Jaw: the lower face, half at the mouth corners, fading laterally towards the outline.
        lateral = np.clip(skin_d / 0.045, 0, 1) * np.abs(cs)
        w_jaw = _smoothstep(0.5 - 1.5 * sn) * (1 - 0.8 * lateral)
        w_jaw = np.where(on, w_jaw, 0.0)
        w_jaw[m.teeth_lower] = 1.0
        mouth_wall = (m.part == PARTS["mouth"]) & ~on
        w_jaw[mouth_wall] = _smoothstep(-v[mouth_wall, 1] / 0.02)
        self.w_jaw = w_jaw
        self.upper = on & (sn > 0)
        self.lower = on & (sn < 0)
        self.corner = np.where(on, cs**2, 0.0)
        self.mid = np.where(on, np.abs(sn), 0.0)  # 0 at the mouth corners, where the lips join
        self.on_lips = np.where(on, np.exp(-((skin_d / 0.003) ** 2)), 0.0)
        # Closure moves whole lips: 1 from the roll to the middle of the vermilion, then fading into the skin.
        u = np.clip((m.ring - N_ROLL) / (N_LIP - 1), 0, 1)
        self.w_close = np.where(on, (1 - 0.3 * _smoothstep(2 * u - 1)) * np.exp(-((skin_d / 0.009) ** 2)), 0.0)
        self.contour_up, self.contour_low = m.contour_ids()
        self.column = np.where(on, m.angle, -1)
        self.side_gain = 1 + self.asymmetry * np.tanh(v[:, 0] / 0.02)
        eye_d = ((np.abs(v[:, 0]) - EYE[0]) / 0.013) ** 2 + ((v[:, 1] - EYE[1] - 0.004) / 0.007) ** 2
        self.w_lid = np.where(on & (v[:, 1] > EYE[1] - 0.002), np.exp(-eye_d), 0.0)
        brow_d = ((np.abs(v[:, 0]) - 0.03) / 0.022) ** 2 + ((v[:, 1] - BROW_Y) / 0.012) ** 2
        self.w_brow = np.where(on, np.exp(-brow_d), 0.0)
        # Upper teeth edge: where a tucked lower lip goes.
        teeth_up = (m.part == PARTS["teeth"]) & ~m.teeth_lower
        self.teeth_edge = np.array([v[teeth_up, 1].min(), v[teeth_up, 2].max()])

    def pose(self, params: np.ndarray) -> np.ndarray:
        """(T, 8) parameters -> (T, V, 3) float32 vertices."""
        p = np.asarray(params, np.float64)
        if p.ndim != 2 or p.shape[1] != len(PARAMETERS):
            raise ValueError(f"rig parameters must be (frames, {len(PARAMETERS)}) in order {PARAMETERS}; got {p.shape}")
        jaw, rnd, spread, close, tuck, raise_, blink, brow = (p[:, k : k + 1] for k in range(len(PARAMETERS)))
        x, y, z = (np.broadcast_to(self.rest[:, k], (len(p), len(self.rest))).copy() for k in range(3))

        # Jaw: rotate about the hinge by a per-vertex share of the angle.
        ang = JAW_MAX_RAD * jaw * self.w_jaw
        dy, dz = y - HINGE[0], z - HINGE[1]
        y = HINGE[0] + dy * np.cos(ang) - dz * np.sin(ang)
        z = HINGE[1] + dy * np.sin(ang) + dz * np.cos(ang)
        # Rounding narrows and protrudes; spreading widens and pulls the corners back and up.
        wl = self.w_lip
        x = x * (1 - 0.30 * rnd * wl + 0.20 * spread * wl)
        z = z + 0.007 * rnd * wl * (1 - 0.5 * self.corner) - 0.003 * spread * wl * self.corner
        y = y + 0.002 * spread * wl * self.corner
        y = y + 0.004 * raise_ * wl * self.upper * self.mid
        # Lower-lip tuck: the lower lip rises and goes back under the upper teeth.
        low_contour_y = y[:, self.contour_low].min(axis=1, keepdims=True)
        tucked = tuck * self.w_close * self.lower * self.mid
        y = y + tucked * np.clip(self.teeth_edge[0] + 0.0008 - low_contour_y, 0, None)
        z = z - 0.003 * tucked * self.on_lips  # only the lip goes back; the skin below stays in front of the teeth
        # Subject asymmetry on everything the speech controls moved so far.
        for arr, rest in ((x, self.rest[:, 0]), (y, self.rest[:, 1]), (z, self.rest[:, 2])):
            arr -= rest
            arr *= self.side_gain
            arr += rest
        # Closure: per column, close the remaining gap exactly at closure 1.
        gap = np.clip(y[:, self.contour_up] - y[:, self.contour_low], 0, None)  # (T, N_ANGLES/2 - 1)
        gap_col = np.zeros((len(p), N_ANGLES))
        gap_col[:, self.mesh.angle[self.contour_up]] = gap
        gap_col[:, self.mesh.angle[self.contour_low]] = gap
        g = gap_col[:, np.maximum(self.column, 0)] * self.w_close
        y = y - close * g * (UPPER_SHARE * self.upper - (1 - UPPER_SHARE) * self.lower)
        z = z - 0.001 * close * self.w_close
        # Non-speech motion: eyelids and brows.
        y = y - 0.007 * blink * self.w_lid + 0.004 * brow * self.w_brow
        z = z - 0.002 * blink * self.w_lid
        return np.stack([x, y, z], -1).astype(np.float32)
