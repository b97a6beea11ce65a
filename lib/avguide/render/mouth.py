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
    anti-aliasing of the pooling is lost)."""

    def __init__(self, topology, size: int = 88, chunk: int = 64, render_size: int | None = None):
        render_size = size if render_size is None else int(render_size)
        if render_size < 1 or size % render_size:
            raise ValueError(f"MouthView: render_size must divide size {size}; got {render_size}")
        self.faces = torch.as_tensor(np.asarray(topology.faces), dtype=torch.long)
        albedo = getattr(topology, "albedo", None)  # None: uniform grey, sized by the vertices rendered
        self.albedo = None if albedo is None else torch.as_tensor(np.asarray(albedo), dtype=torch.float32)
        self.lip_ids = np.asarray(topology.lip_ids)
        self.size, self.chunk, self.render_size = size, chunk, render_size

    def renderer(self, template) -> MeshRenderer:
        camera = mouth_camera(np.asarray(template, np.float32), self.lip_ids, size=self.render_size)
        return MeshRenderer(camera, RasterSettings(image_size=self.render_size))

    def clip(self, vertices: torch.Tensor, template) -> torch.Tensor:
        """(T, V, 3) vertices of a subject with this template -> (T, H, W) grey frames in [0, 1]."""
        render = self.renderer(template)
        albedo = self.albedo if self.albedo is not None else torch.full((vertices.shape[-2],), UNIFORM_ALBEDO)
        faces, albedo = self.faces.to(vertices.device), albedo.to(vertices.device)
        frames = torch.cat(
            [render(vertices[k : k + self.chunk], faces, albedo) for k in range(0, len(vertices), self.chunk)]
        )
        r = self.size // self.render_size
        return frames if r == 1 else frames.repeat_interleave(r, 1).repeat_interleave(r, 2)

    def batch(self, vertices: torch.Tensor, templates: torch.Tensor, n_frames: torch.Tensor) -> torch.Tensor:
        """(B, T, V, 3) padded vertices, (B, V, 3) templates, (B,) lengths -> (B, T, H, W), padding zero."""
        clips = [self.clip(vertices[b, : int(n)], templates[b].detach().cpu().numpy()) for b, n in enumerate(n_frames)]
        out = vertices.new_zeros(len(clips), vertices.shape[1], self.size, self.size)
        for b, c in enumerate(clips):
            out[b, : len(c)] = c
        return out
