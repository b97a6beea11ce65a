"""Mouth-crop renders of a 3D corpus' meshes, framed and painted as the 2D corpus frames its identities,
so the lip-reading expert sees animator output the way it saw its training data."""

from __future__ import annotations

import numpy as np
import torch

from avguide.render import MeshRenderer, RasterSettings, mouth_camera

UNIFORM_ALBEDO = 0.7  # the grey of meshes without albedo (VOCASET, BIWI), as avguide.render.stream paints them


class MouthView:
    """Renders (T, V, 3) vertex sequences of one topology: its faces and albedo (a uniform grey when the
    corpus has none, as VOCASET and BIWI), through each subject's mouth camera (fixed from the template's
    lip vertices). Differentiable with respect to the vertices; frames are rendered `chunk` at a time. The camera
    is framed from the template and the lip ids alone (no constant of the synthetic head), so any mesh in metres
    with y up and the face towards +z works (FLAME, BIWI); where the mesh has no mouth interior (FLAME, BIWI), the
    open mouth shows the background, since the back of the head faces away from the camera and is culled.

    With `render_size` (a divisor of `size`) the mesh is rasterized at that resolution and each pixel repeated
    to fill `size` x `size` frames: the expert average-pools its 80 px centre crop by 2 (video_pool), so a 44 px
    render shows it the same 40 x 40 grid as an 88 px one, at a quarter of the rasterizer's pixels (only the
    anti-aliasing of the pooling is lost).

    With `rates` = (the animation's frame rate, the reader's), the sequences are resampled in time from the first
    to the second before they are rendered (`retime`: the vertices interpolated linearly, so the gradient still
    reaches every frame), and `lengths` gives the rendered clips' frame counts: a reader trained on 25 fps video
    (auto-AVSR's, ours on LRS3) reads a 30 fps VOCASET animation at 25 fps. Equal rates, or none, change nothing."""

    def __init__(
        self,
        topology,
        size: int = 88,
        chunk: int = 64,
        render_size: int | None = None,
        rates: tuple[float, float] | None = None,
    ):
        render_size = size if render_size is None else int(render_size)
        if render_size < 1 or size % render_size:
            raise ValueError(f"MouthView: render_size must divide size {size}; got {render_size}")
        if rates is not None and (len(rates) != 2 or min(rates) <= 0):
            raise ValueError(f"MouthView: rates must be (animation fps, reader fps), both positive; got {rates}")
        self.rates = None if rates is None or float(rates[0]) == float(rates[1]) else tuple(map(float, rates))
        self.faces = torch.as_tensor(np.asarray(topology.faces), dtype=torch.long)
        albedo = getattr(topology, "albedo", None)  # None: uniform grey, sized by the vertices rendered
        self.albedo = None if albedo is None else torch.as_tensor(np.asarray(albedo), dtype=torch.float32)
        self.lip_ids = np.asarray(topology.lip_ids)
        self.size, self.chunk, self.render_size = size, chunk, render_size

    def renderer(self, template) -> MeshRenderer:
        camera = mouth_camera(np.asarray(template, np.float32), self.lip_ids, size=self.render_size)
        return MeshRenderer(camera, RasterSettings(image_size=self.render_size))

    def lengths(self, n_frames: torch.Tensor) -> torch.Tensor:
        """The frame counts of the rendered clips of sequences of `n_frames` frames (the same without `rates`)."""
        return n_frames if self.rates is None else retimed_length(n_frames, *self.rates)

    def clip(self, vertices: torch.Tensor, template) -> torch.Tensor:
        """(T, V, 3) vertices of a subject with this template -> (T', H, W) grey frames in [0, 1] (T' = T without
        `rates`)."""
        if self.rates is not None:
            vertices = retime(vertices, *self.rates)
        render = self.renderer(template)
        albedo = self.albedo if self.albedo is not None else torch.full((vertices.shape[-2],), UNIFORM_ALBEDO)
        faces, albedo = self.faces.to(vertices.device), albedo.to(vertices.device)
        frames = torch.cat(
            [render(vertices[k : k + self.chunk], faces, albedo) for k in range(0, len(vertices), self.chunk)]
        )
        r = self.size // self.render_size
        return frames if r == 1 else frames.repeat_interleave(r, 1).repeat_interleave(r, 2)

    def batch(self, vertices: torch.Tensor, templates: torch.Tensor, n_frames: torch.Tensor) -> torch.Tensor:
        """(B, T, V, 3) padded vertices, (B, V, 3) templates, (B,) lengths -> (B, T', H, W), padding zero; the clips'
        lengths are `lengths(n_frames)` (T' = T without `rates`)."""
        clips = [self.clip(vertices[b, : int(n)], templates[b].detach().cpu().numpy()) for b, n in enumerate(n_frames)]
        frames = vertices.shape[1] if self.rates is None else max(len(c) for c in clips)
        out = vertices.new_zeros(len(clips), frames, self.size, self.size)
        for b, c in enumerate(clips):
            out[b, : len(c)] = c
        return out


def retimed_length(n_frames, src_fps: float, dst_fps: float):
    """Frames at `dst_fps` spanning `n_frames` frames at `src_fps` (rounded, at least one); ints or tensors."""
    if torch.is_tensor(n_frames):
        return torch.clamp(torch.floor(n_frames.double() * dst_fps / src_fps + 0.5).long(), min=1)
    return max(1, int(np.floor(n_frames * dst_fps / src_fps + 0.5)))


def retime(x: torch.Tensor, src_fps: float, dst_fps: float) -> torch.Tensor:
    """(T, ...) frames (vertices or images) at `src_fps` -> (T', ...) at `dst_fps`, T' = retimed_length(T): frame k
    is the linear interpolation of the input at time k / dst_fps (the last input frame held past its end).
    Differentiable; `x` itself when the rates are equal."""
    if float(src_fps) == float(dst_fps):
        return x
    n = len(x)
    t = torch.arange(retimed_length(n, src_fps, dst_fps), dtype=torch.float64) * (src_fps / dst_fps)
    t = t.clamp(max=n - 1)
    lo = t.floor().long()
    hi = (lo + 1).clamp(max=n - 1)
    w = (t - lo).to(x.dtype).to(x.device).reshape(-1, *[1] * (x.dim() - 1))
    lo, hi = lo.to(x.device), hi.to(x.device)
    return x[lo] * (1 - w) + x[hi] * w
