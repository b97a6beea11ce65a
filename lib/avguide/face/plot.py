"""Quick matplotlib drawings of a mesh (painter's algorithm, Lambert shading) for notebooks and reports."""

from __future__ import annotations

import numpy as np
from matplotlib.collections import PolyCollection


def draw_mesh(
    ax,
    vertices: np.ndarray,
    faces: np.ndarray,
    albedo: np.ndarray | None = None,
    light=(0.3, 0.4, 1.0),
    xlim=None,
    ylim=None,
    title: str | None = None,
):
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


def plot_utterance(
    audio: np.ndarray, phonemes, opening: np.ndarray, fps: float, sample_rate: int = 16000, title: str = ""
):
    """Waveform, phoneme timeline and lip opening on one time axis.

    `phonemes`: rows with phoneme, viseme, start_s, end_s."""
    import matplotlib.pyplot as plt

    fig, (ax_w, ax_p, ax_o) = plt.subplots(
        3, 1, figsize=(11, 5.5), sharex=True, gridspec_kw={"height_ratios": [2, 1, 2]}
    )
    t_audio = np.arange(len(audio)) / sample_rate
    ax_w.plot(t_audio, audio, lw=0.4, color="0.3")
    ax_w.set_ylabel("audio")
    ax_w.set_title(title)
    for k, row in enumerate(phonemes.itertuples()):
        colour = (
            "tab:red" if row.viseme == "PP" else ("tab:blue" if row.viseme.startswith(("aa", "oh", "E")) else "0.7")
        )
        ax_p.axvspan(row.start_s, row.end_s, color=colour, alpha=0.25 + 0.15 * (k % 2))
        ax_p.text((row.start_s + row.end_s) / 2, 0.5, row.phoneme, ha="center", va="center", fontsize=7)
    ax_p.set_yticks([])
    ax_p.set_ylabel("phonemes")
    ax_o.plot(np.arange(len(opening)) / fps, 1000 * opening, marker=".", color="tab:red")
    ax_o.set_ylabel("lip opening (mm)")
    ax_o.set_xlabel("time (s)")
    fig.tight_layout()
    return fig


def plot_visemes(mesh, window=((-0.035, 0.035), (-0.03, 0.02))):
    """The rig's viseme targets drawn on the template's mouth."""
    import matplotlib.pyplot as plt

    from avguide.face.rig import PARAMETERS, Rig
    from avguide.face.visemes import load_table

    table = load_table()
    rig = Rig(mesh)
    names = table.visemes
    params = np.zeros((len(names), len(PARAMETERS)))
    params[:, : len(table.parameters)] = np.stack([table.targets[v] for v in names])
    poses = rig.pose(params)
    cols = 5
    fig, axes = plt.subplots(-(-len(names) // cols), cols, figsize=(2.6 * cols, 2.0 * -(-len(names) // cols)))
    for ax in axes.flat[len(names) :]:
        ax.set_axis_off()
    for ax, name, verts in zip(axes.flat, names, poses):
        draw_mesh(ax, verts, mesh.faces, mesh.albedo, xlim=window[0], ylim=window[1], title=name)
    fig.tight_layout()
    return fig


def plot_viseme_crops(mesh, size: int = 88):
    """The rig's viseme targets as the lip reader sees them: 88x88 mouth crops from the differentiable renderer."""
    import matplotlib.pyplot as plt
    import torch

    from avguide.face.rig import PARAMETERS, Rig
    from avguide.face.visemes import load_table
    from avguide.render import mouth_camera, render_mouth

    table = load_table()
    names = table.visemes
    params = np.zeros((len(names), len(PARAMETERS)))
    params[:, : len(table.parameters)] = np.stack([table.targets[v] for v in names])
    with torch.no_grad():
        crops = render_mouth(Rig(mesh).pose(params), mesh, mouth_camera(mesh.vertices, mesh.lip_ids, size)).numpy()
    fig, axes = plt.subplots(1, len(names), figsize=(1.1 * len(names), 1.5))
    for ax, name, crop in zip(axes, names, crops):
        ax.imshow(crop, cmap="gray", vmin=0, vmax=1)
        ax.set_title(name, fontsize=8)
        ax.set_axis_off()
    return fig


def plot_av_variations(corpus, n: int = 24, cols: int = 8):
    """One mid-utterance frame from each of n identities (spread over the splits) of a 2D audio-visual corpus."""
    import matplotlib.pyplot as plt

    first = corpus.manifest.groupby("speaker", sort=True).head(1)
    first = first.iloc[np.unique(np.linspace(0, len(first) - 1, min(n, len(first))).round().astype(int))]
    rows = -(-len(first) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.3 * cols, 1.5 * rows), squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for ax, row in zip(axes.flat, first.itertuples()):
        video, _ = corpus.load(row.utterance)
        ax.imshow(video[len(video) // 2], cmap="gray", vmin=0, vmax=255)
        ax.set_title(f"{row.speaker} ({row.split})", fontsize=7)
    fig.tight_layout()
    return fig
