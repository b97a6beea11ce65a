"""Orthographic cameras: world metres -> pixel coordinates (x right, y down), depth kept (larger z = closer)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class OrthoCamera:
    """A window of the world plane z = const, centred at `center` (metres), mapped onto a height x width image."""

    center: tuple[float, float]
    half_width: float  # metres
    half_height: float  # metres
    width: int
    height: int

    def __post_init__(self):
        if self.half_width <= 0 or self.half_height <= 0:
            raise ValueError(f"camera half-width/height must be > 0 metres; got {self.half_width}, {self.half_height}")
        if self.width <= 0 or self.height <= 0:
            raise ValueError(f"camera image size must be > 0 pixels; got {self.height}x{self.width}")

    @property
    def image_size(self) -> tuple[int, int]:
        return self.height, self.width

    @property
    def pixels_per_metre(self) -> float:
        return self.width / (2 * self.half_width)

    def transform(self, verts: torch.Tensor) -> torch.Tensor:
        """(..., 3) world vertices -> (..., 3) screen: pixel x, pixel y, world z.

        Pixel (i, j) has its centre at (j + .5, i + .5)."""
        x = (verts[..., 0] - self.center[0]) * (self.width / (2 * self.half_width)) + self.width / 2
        y = (self.center[1] - verts[..., 1]) * (self.height / (2 * self.half_height)) + self.height / 2
        return torch.stack([x, y, verts[..., 2]], -1)


def _square(lo: np.ndarray, hi: np.ndarray, margin: float, size: int) -> OrthoCamera:
    centre = (lo + hi) / 2
    half = float((hi - lo).max() / 2 * (1 + margin))
    return OrthoCamera((float(centre[0]), float(centre[1])), half, half, size, size)


def mouth_camera(template_vertices, lip_ids, size: int = 88, margin: float = 0.1) -> OrthoCamera:
    """Square region-of-interest camera around the template's lip vertices (bounding box grown by `margin`)."""
    v = np.asarray(template_vertices, np.float64)
    ids = np.asarray(lip_ids)
    if v.ndim != 2 or v.shape[1] != 3:
        raise ValueError(f"template vertices must be (V, 3); got {v.shape}")
    if ids.size == 0:
        raise ValueError("lip_ids is empty; expected the template's lip vertex ids")
    xy = v[ids, :2]
    return _square(xy.min(0), xy.max(0), margin, size)


def face_camera(template, size: int = 256, margin: float = 0.05) -> OrthoCamera:
    """Square camera framing the whole template (a FaceMesh or (V, 3) vertices)."""
    v = np.asarray(getattr(template, "vertices", template), np.float64)
    if v.ndim != 2 or v.shape[1] != 3:
        raise ValueError(f"template vertices must be (V, 3); got {v.shape}")
    return _square(v[:, :2].min(0), v[:, :2].max(0), margin, size)


def facing_share(template, faces, ids=None) -> float:
    """Share of the area (seen by the cameras here, looking along -z with y up) of the triangles touching vertex
    `ids` (all triangles when None) that faces the camera: counter-clockwise seen from +z, so not culled. Near 1 for
    a face mesh in FLAME's frame; near 0 when the mesh is turned away or its triangles wind the other way (the
    renders then show the background where the face should be). NaN when no triangle is involved."""
    v = np.asarray(getattr(template, "vertices", template), np.float64)
    f = np.asarray(faces, np.int64)
    if ids is not None:
        touched = np.zeros(len(v), bool)
        touched[np.asarray(ids)] = True
        f = f[touched[f].any(1)]
    a, b, c = v[f[:, 0], :2], v[f[:, 1], :2], v[f[:, 2], :2]
    area = ((b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0])) / 2
    total = np.abs(area).sum()
    return float(area.clip(min=0).sum() / total) if total > 0 else float("nan")
