"""Differentiable mesh rendering in plain PyTorch: camera -> rasterizer -> shader."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from avguide.render.camera import OrthoCamera, face_camera, mouth_camera
from avguide.render.rasterizer import NEGLIGIBLE, Fragments, RasterSettings, rasterize
from avguide.render.shader import ShaderSettings, shade, vertex_normals

__all__ = [
    "Fragments",
    "MeshRenderer",
    "OrthoCamera",
    "RasterSettings",
    "ShaderSettings",
    "face_camera",
    "mouth_camera",
    "rasterize",
    "render_mouth",
    "shade",
    "vertex_normals",
]


class MeshRenderer(nn.Module):
    def __init__(
        self,
        camera: OrthoCamera,
        raster_settings: RasterSettings | None = None,
        shader_settings: ShaderSettings | None = None,
    ):
        super().__init__()
        self.camera = camera
        self.raster_settings = raster_settings or RasterSettings(image_size=camera.image_size)
        if self.raster_settings.hw != camera.image_size:
            raise ValueError(
                f"raster image_size {self.raster_settings.hw} does not match the camera's {camera.image_size}"
            )
        self.shader_settings = shader_settings or ShaderSettings()

    def forward(self, vertices: torch.Tensor, faces: torch.Tensor, albedo: torch.Tensor) -> torch.Tensor:
        """(B, V, 3) world vertices, (F, 3) faces, (V,) albedo -> (B, H, W) grey images in [0, 1]."""
        if vertices.ndim == 2:
            raise ValueError(f"vertices must be batched (B, V, 3); got {tuple(vertices.shape)} (add a batch axis)")
        if albedo.shape != (vertices.shape[-2],):
            raise ValueError(f"albedo must be (V,) = ({vertices.shape[-2]},); got {tuple(albedo.shape)}")
        faces = faces.to(device=vertices.device, dtype=torch.long)
        albedo = albedo.to(device=vertices.device)
        # slots hidden so far behind an opaque one that the depth blending gives them no weight are left out
        cutoff = NEGLIGIBLE * self.shader_settings.gamma
        frags = rasterize(self.camera.transform(vertices), faces, self.raster_settings, depth_cutoff=cutoff)
        return shade(frags, vertices, faces, albedo, self.shader_settings, self.raster_settings.blur_sigma)


def render_mouth(
    vertices,
    mesh,
    camera: OrthoCamera,
    raster_settings: RasterSettings | None = None,
    shader_settings: ShaderSettings | None = None,
) -> torch.Tensor:
    """Render (B, V, 3) or (V, 3) vertices (tensor or array) with `mesh`'s faces and albedo through `camera`."""
    v = torch.as_tensor(np.asarray(vertices, np.float32) if not torch.is_tensor(vertices) else vertices)
    single = v.ndim == 2
    v = v[None] if single else v
    faces = torch.as_tensor(np.asarray(mesh.faces), device=v.device)
    albedo = torch.as_tensor(np.asarray(mesh.albedo), device=v.device, dtype=v.dtype)
    img = MeshRenderer(camera, raster_settings, shader_settings)(v, faces, albedo)
    return img[0] if single else img
