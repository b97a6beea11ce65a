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


def vertex_normals(verts: torch.Tensor, faces: torch.Tensor, only: torch.Tensor | None = None) -> torch.Tensor:
    """(B, V, 3) world vertices -> (B, V, 3) unit normals (area-weighted face normals, differentiable). With
    `only` (face ids, repeats allowed), just the normals of those faces' vertices are computed (from the faces
    around them); the rest are 0."""
    return _normals(verts, faces, only).permute(1, 2, 0)


def _normals(verts: torch.Tensor, faces: torch.Tensor, only: torch.Tensor | None = None) -> torch.Tensor:
    """vertex_normals as (3, B, V): one row per component (what the shader gathers from)."""
    if only is not None:
        used = torch.zeros(len(faces), dtype=torch.bool, device=verts.device).index_fill_(0, only, True)
        wanted = torch.zeros(verts.shape[1], dtype=torch.bool, device=verts.device)
        wanted[faces[used].view(-1)] = True
        faces = faces[wanted[faces].any(1)]
    xyz = verts.permute(2, 0, 1).contiguous()
    v0, v1, v2 = (xyz.index_select(2, faces[:, k]) for k in range(3))  # (3, B, F) each
    (ax, ay, az), (bx, by, bz) = v1 - v0, v2 - v0
    fn = torch.stack([ay * bz - az * by, az * bx - ax * bz, ax * by - ay * bx])
    vn = verts.new_zeros(3, *verts.shape[:2])
    for k in range(3):
        vn = vn.index_add(2, faces[:, k], fn)
    return vn / (vn * vn).sum(0).sqrt().clamp_min(1e-12)


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
    pixel = frags.pixel
    w = frags.bary.T  # (3, N): per-slot quantities are kept one row per component
    vid = faces.T.index_select(1, frags.face)  # (3, N)
    vn = _normals(verts, faces, only=frags.face).reshape(3, B * V)
    first = pixel // (H * W) * V
    n = sum(w[k] * vn.index_select(1, vid[k] + first) for k in range(3))
    light = torch.tensor(settings.light_direction, dtype=verts.dtype, device=verts.device)
    lambert = ((light[:, None] / light.norm() * n).sum(0) / (n * n).sum(0).sqrt().clamp_min(1e-12)).clamp_min(0)
    colour = (w * albedo.to(verts.dtype).index_select(0, vid.reshape(-1)).view(3, -1)).sum(0)
    colour = colour * (settings.ambient + settings.diffuse * lambert)

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
    wz = alpha * torch.exp((z - zmax.index_select(0, pixel)) / settings.gamma)
    zeros = z.new_zeros(n_pix)
    fg = zeros.index_add(0, pixel, wz * colour) / zeros.index_add(0, pixel, wz).clamp_min(1e-10)
    cover = 1 - torch.exp(zeros.index_add(0, pixel, log_clear))
    return (cover * fg + (1 - cover) * settings.background).clamp(0, 1).view(B, H, W)
