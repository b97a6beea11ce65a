"""Quick matplotlib drawings of a mesh (painter's algorithm, Lambert shading) for notebooks and reports."""
from __future__ import annotations

import numpy as np
from matplotlib.collections import PolyCollection


def draw_mesh(ax, vertices: np.ndarray, faces: np.ndarray, albedo: np.ndarray | None = None,
              light=(0.3, 0.4, 1.0), xlim=None, ylim=None, title: str | None = None):
    """Draw a frontal orthographic view of a mesh on a matplotlib axis."""
    v = np.asarray(vertices, np.float64)
    tri = v[faces]
    n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    n /= np.linalg.norm(n, axis=1, keepdims=True) + 1e-12
    light = np.asarray(light, np.float64) / np.linalg.norm(light)
    shade = 0.25 + 0.75 * np.clip(n @ light, 0, 1)
    a = np.ones(len(v)) if albedo is None else np.asarray(albedo)
    grey = np.clip(a[faces].mean(1) * shade, 0, 1)
    front = n[:, 2] > 0  # back faces are hidden in a frontal view
    order = np.argsort(tri[front, :, 2].mean(1))
    polys = tri[front][order][:, :, :2]
    colours = np.repeat(grey[front][order, None], 3, 1)
    ax.add_collection(PolyCollection(polys, facecolors=colours, edgecolors="none", antialiased=False))
    ax.set_xlim(xlim if xlim is not None else (v[:, 0].min(), v[:, 0].max()))
    ax.set_ylim(ylim if ylim is not None else (v[:, 1].min(), v[:, 1].max()))
    ax.set_aspect("equal")
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=9)
    return ax
