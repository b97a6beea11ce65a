"""Grey-level shading: interpolated vertex normals, Lambert + ambient, times albedo; soft silhouettes
(sigmoid of signed distance, SoftRas) and soft depth blending over the K faces (softmax over depth)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from avguide.render.rasterizer import Fragments


@dataclass(frozen=True)
class ShaderSettings:
    ambient: float = 0.35
    diffuse: float = 0.65
    light_direction: tuple[float, float, float] = (0.0, 0.3, 1.0)  # towards the light, world frame
    background: float = 0.0
    gamma: float = 1e-4  # depth softmax temperature (depth units, metres for the cameras here)


def vertex_normals(verts: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """(B, V, 3) world vertices -> (B, V, 3) unit normals (area-weighted face normals, differentiable)."""
    tri = verts[:, faces]  # B, F, 3, 3
    fn = torch.cross(tri[:, :, 1] - tri[:, :, 0], tri[:, :, 2] - tri[:, :, 0], dim=-1)
    vn = torch.zeros_like(verts)
    for k in range(3):
        vn = vn.index_add(1, faces[:, k], fn)
    return vn / vn.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def shade(
    frags: Fragments,
    verts: torch.Tensor,
    faces: torch.Tensor,
    albedo: torch.Tensor,
    settings: ShaderSettings,
    blur_sigma: float,
) -> torch.Tensor:
    """Fragments + world vertices (B, V, 3) + albedo (V,) -> grey images (B, H, W) in [0, 1]."""
    B, V, _ = verts.shape
    _, H, W = frags.shape
    n_pix = B * H * W
    pixel, w = frags.pixel, frags.bary
    vid = faces[frags.face]  # N, 3
    vn = vertex_normals(verts, faces).reshape(B * V, 3)
    n = (w[:, :, None] * vn.index_select(0, (vid + (pixel // (H * W) * V)[:, None]).view(-1)).view(-1, 3, 3)).sum(1)
    n = n / n.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    light = torch.tensor(settings.light_direction, dtype=verts.dtype, device=verts.device)
    lambert = (n @ (light / light.norm())).clamp_min(0)
    colour = (w * albedo.to(verts.dtype)[vid]).sum(-1) * (settings.ambient + settings.diffuse * lambert)

    if blur_sigma > 0:  # soft silhouette coverage; log(1 - alpha) computed stably
        alpha = torch.sigmoid(frags.dist / blur_sigma)
        log_clear = torch.nn.functional.logsigmoid(-frags.dist / blur_sigma)
    else:
        alpha = (frags.dist >= 0).to(verts.dtype)
        log_clear = torch.where(frags.dist >= 0, -torch.inf, 0.0).to(verts.dtype)
    # Soft depth blending: softmax over the slots' depths within each pixel.
    z = frags.zbuf
    zmax = torch.full((n_pix,), -torch.inf, dtype=z.dtype, device=z.device)
    zmax = zmax.scatter_reduce(0, pixel, z.detach(), reduce="amax")
    wz = alpha * torch.exp((z - zmax[pixel]) / settings.gamma)
    zeros = z.new_zeros(n_pix)
    fg = zeros.index_add(0, pixel, wz * colour) / zeros.index_add(0, pixel, wz).clamp_min(1e-10)
    cover = 1 - torch.exp(zeros.index_add(0, pixel, log_clear))
    return (cover * fg + (1 - cover) * settings.background).clamp(0, 1).view(B, H, W)
