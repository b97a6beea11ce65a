"""The fast renderer against a slow one written from the definition: every (pixel, face) pair tested, the K
front-most kept per pixel, shaded and blended by the same formulas. Images and gradients must agree."""

import math

import numpy as np
import pytest
import torch

from avguide.face.rig import Rig
from avguide.face.template import build_face
from avguide.render import MeshRenderer, OrthoCamera, RasterSettings, ShaderSettings, mouth_camera, rasterize, shade

EPS = 1e-5  # the rasterizer's barycentric tolerance
BIG = 1e4  # its distance for "no silhouette edge"


def _soft_edges(screen: torch.Tensor, faces: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(F, 3) per edge (v0v1, v1v2, v2v0): no single neighbour across it, or the neighbour is culled / turned;
    and (F,) front-facing (clockwise on screen)."""
    p = screen[:, :2]
    e1, e2 = p[faces[:, 1]] - p[faces[:, 0]], p[faces[:, 2]] - p[faces[:, 0]]
    front = ((e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]) < 0).tolist()
    owners = {}
    for f, face in enumerate(faces.tolist()):
        for k in range(3):
            owners.setdefault(frozenset((face[k], face[(k + 1) % 3])), []).append(f)
    soft = [[True] * 3 for _ in range(len(faces))]
    for f, face in enumerate(faces.tolist()):
        for k in range(3):
            others = [g for g in owners[frozenset((face[k], face[(k + 1) % 3]))] if g != f]
            soft[f][k] = len(others) != 1 or not (front[others[0]] and front[f])
    return torch.tensor(soft), torch.tensor(front)


def _pairs(tri: torch.Tensor, p: torch.Tensor, soft: torch.Tensor):
    """(pixel, face) pairs, broadcast: triangles (..., 3, 3), points (..., 2), soft edges (..., 3) -> barycentrics
    clamped to the face (..., 3), depth there, signed distance to the nearest soft edge (> 0 inside), inside."""
    v = tri[..., :2] - p[..., None, :]  # vertices relative to the point
    cross = v[..., 0] * v.roll(-1, -2)[..., 1] - v[..., 1] * v.roll(-1, -2)[..., 0]  # edges 01, 12, 20
    area = cross.sum(-1, keepdim=True)
    bary = cross.roll(-1, -1) / torch.where(area.abs() < 1e-12, torch.full_like(area, 1e-12), area)
    inside = (bary >= -EPS).all(-1)
    clamped = bary.clamp_min(0)
    clamped = clamped / clamped.sum(-1, keepdim=True)
    depth = (clamped * tri[..., 2]).sum(-1)
    a, b = tri[..., :2], tri[..., :2].roll(-1, -2)
    ab, ap = b - a, p[..., None, :] - a
    t = ((ap * ab).sum(-1) / (ab * ab).sum(-1)).clamp(0, 1)
    dist = ((ap - t[..., None] * ab).square().sum(-1) + 1e-12).sqrt()
    d = torch.where(soft, dist, torch.full_like(dist, BIG)).amin(-1)
    return clamped, depth, torch.where(inside, d, -d), inside


def reference_render(verts, faces, albedo, camera, raster: RasterSettings, shader: ShaderSettings) -> torch.Tensor:
    """(B, V, 3) world vertices -> (B, H, W) images, the slow way (differentiable)."""
    H, W = raster.hw
    r = raster.blur_sigma * math.log(1 / raster.blur_eps - 1)
    # vertex normals: area-weighted face normals
    tri_w = verts[:, faces]
    fn = torch.cross(tri_w[:, :, 1] - tri_w[:, :, 0], tri_w[:, :, 2] - tri_w[:, :, 0], dim=-1)
    vn = torch.zeros_like(verts).index_add(1, faces.flatten(), fn.repeat_interleave(3, 1))
    vn = vn / vn.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    light = torch.tensor(shader.light_direction, dtype=verts.dtype)
    # faces more than r + 1 pixels outside the image in every frame take no part (as in the rasterizer)
    screen = camera.transform(verts)
    xy = screen[:, faces, :2]
    lo, hi = xy.amin(2), xy.amax(2)
    m = r + 1
    faces = faces[((hi[..., 0] >= -m) & (lo[..., 0] <= W + m) & (hi[..., 1] >= -m) & (lo[..., 1] <= H + m)).any(0)]
    jj, ii = torch.meshgrid(torch.arange(W), torch.arange(H), indexing="xy")
    p = torch.stack([jj.flatten(), ii.flatten()], 1).to(verts.dtype) + 0.5
    images = []
    for b in range(len(verts)):
        soft, front = _soft_edges(screen[b].detach(), faces)
        tri = screen[b, faces]
        with torch.no_grad():  # every pair, a few hundred faces at a time; the K front-most of each pixel
            depth = []
            for f in range(0, len(faces), 256):
                _, z, sd, inside = _pairs(tri[None, f : f + 256], p[:, None], soft[None, f : f + 256])
                s = slice(f, f + 256)
                ok = front[None, s] & (inside | (soft[None, s].any(-1) & (sd >= -r)))
                depth.append(torch.where(ok, z, torch.full_like(z, -torch.inf)))
            z, order = torch.cat(depth, 1).sort(dim=1, descending=True, stable=True)
            pix, slot = (z[:, : raster.faces_per_pixel] > -torch.inf).nonzero(as_tuple=True)
            face = order[pix, slot]
        w, z, sd, _ = _pairs(tri[face], p[pix], soft[face])  # the kept pairs again, with gradient
        vid = faces[face]
        n = (w[:, :, None] * vn[b, vid]).sum(1)
        lambert = (n / n.norm(dim=-1, keepdim=True) @ (light / light.norm())).clamp_min(0)
        colour = (w * albedo[vid]).sum(-1) * (shader.ambient + shader.diffuse * lambert)
        alpha = torch.sigmoid(sd / raster.blur_sigma)
        log_clear = torch.nn.functional.logsigmoid(-sd / raster.blur_sigma)
        zmax = torch.full((H * W,), -torch.inf, dtype=z.dtype).scatter_reduce(0, pix, z.detach(), "amax")
        wz = alpha * torch.exp((z - zmax[pix]) / shader.gamma)
        zero = z.new_zeros(H * W)
        fg = zero.index_add(0, pix, wz * colour) / zero.index_add(0, pix, wz).clamp_min(1e-10)
        cover = 1 - torch.exp(zero.index_add(0, pix, log_clear))
        images.append((cover * fg + (1 - cover) * shader.background).clamp(0, 1).view(H, W))
    return torch.stack(images)


@pytest.fixture(scope="module")
def face():
    mesh = build_face()
    params = np.zeros((2, 8))
    params[:, 0] = [0.0, 0.8]  # closed and open jaw: lips over teeth, then the mouth's inside
    params[:, 1] = [0.3, 0.0]
    verts = torch.as_tensor(Rig(mesh).pose(params), dtype=torch.float64)
    verts = verts + 2e-4 * torch.randn(verts.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return mesh, verts, torch.as_tensor(mesh.faces, dtype=torch.long), torch.as_tensor(mesh.albedo, dtype=torch.float64)


def _layers():
    """Four large triangles at close depths, each pixel under up to four of them, every edge a silhouette."""
    corners = torch.tensor(
        [
            [[-1.1, -0.9], [0.9, -1.0], [0.2, 1.1]],
            [[-0.9, 0.8], [-0.3, -1.2], [1.0, 0.5]],
            [[-1.2, -0.2], [1.1, -0.6], [0.6, 0.9]],
            [[-0.5, 1.2], [-0.8, -1.1], [0.9, 0.1]],
        ],
        dtype=torch.float64,
    )
    depth = torch.tensor(
        [[0.00, 0.02, -0.01], [-0.03, 0.01, -0.02], [-0.05, -0.04, 0.0], [-0.06, -0.02, -0.04]], dtype=torch.float64
    )
    corners = corners + 0.013 * torch.sin(torch.arange(24, dtype=torch.float64)).view(4, 3, 2)  # no pixel on a kink
    verts = torch.cat([corners, depth[..., None]], -1)
    faces = torch.arange(12).view(4, 3)
    e1, e2 = verts[:, 1, :2] - verts[:, 0, :2], verts[:, 2, :2] - verts[:, 0, :2]
    flip = (e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]) < 0  # clockwise on screen (y down) = front-facing
    faces[flip] = faces[flip][:, [0, 2, 1]]
    return verts.view(-1, 3), faces, torch.linspace(0.2, 0.9, 12, dtype=torch.float64)


def test_face_matches_reference(face):
    mesh, verts, faces, albedo = face
    cam = mouth_camera(mesh.vertices, mesh.lip_ids, size=24)
    raster, shader = RasterSettings(24), ShaderSettings()
    weights = torch.rand(2, 24, 24, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    x, y = verts.clone().requires_grad_(True), verts.clone().requires_grad_(True)
    fast = MeshRenderer(cam, raster, shader)(x, faces, albedo)
    slow = reference_render(y, faces, albedo, cam, raster, shader)
    assert (fast - slow).abs().max() < 1e-9, (fast - slow).abs().max()
    assert slow.std() > 0.1  # a real picture
    (fast * weights).sum().backward()
    (slow * weights).sum().backward()
    assert y.grad.abs().max() > 0
    assert torch.allclose(x.grad, y.grad, rtol=1e-6, atol=1e-9 * y.grad.abs().max())


@pytest.mark.parametrize("k", [1, 2, 4])
def test_front_most_slots_and_soft_edges_match_reference(k):
    """Few slots per pixel for many layers (the K-th front-most decides), with wide blur and a depth
    temperature under which every layer shows through."""
    verts, faces, albedo = _layers()
    cam = OrthoCamera((0.0, 0.0), 1.0, 1.0, 20, 20)
    raster, shader = RasterSettings(20, faces_per_pixel=k, blur_sigma=0.8), ShaderSettings(gamma=0.05, background=0.1)
    x, y = verts[None].clone().requires_grad_(True), verts[None].clone().requires_grad_(True)
    fast = MeshRenderer(cam, raster, shader)(x, faces, albedo)
    slow = reference_render(y, faces, albedo, cam, raster, shader)
    assert (fast - slow).abs().max() < 1e-9, (fast - slow).abs().max()
    fast.square().sum().backward()
    slow.square().sum().backward()
    assert torch.allclose(x.grad, y.grad, rtol=1e-6, atol=1e-9 * y.grad.abs().max())


def test_slots_hidden_behind_opaque_ones_change_nothing(face):
    """MeshRenderer leaves out slots far behind an opaque one (depth_cutoff): same pixels and gradients as with
    all K, in float32 as the training renders."""
    mesh, verts, faces, albedo = face
    cam = mouth_camera(mesh.vertices, mesh.lip_ids, size=64)
    raster, shader = RasterSettings(64), ShaderSettings()
    v = verts.float()
    x, y = v.clone().requires_grad_(True), v.clone().requires_grad_(True)
    pruned = MeshRenderer(cam, raster, shader)(x, faces, albedo.float())
    frags = rasterize(cam.transform(y), faces, raster)
    full = shade(frags, y, faces, albedo.float(), shader, raster.blur_sigma)
    kept = rasterize(cam.transform(v), faces, raster, depth_cutoff=30 * shader.gamma)
    assert len(kept.pixel) < 0.8 * len(frags.pixel)  # the cutoff does leave slots out
    assert (pruned - full).abs().max() < 1e-6
    weights = torch.rand(pruned.shape, generator=torch.Generator().manual_seed(2))
    (pruned * weights).sum().backward()
    (full * weights).sum().backward()
    assert (x.grad - y.grad).norm() < 1e-5 * y.grad.norm()


def test_no_grad_and_grad_paths_agree(face):
    mesh, verts, faces, albedo = face
    renderer = MeshRenderer(mouth_camera(mesh.vertices, mesh.lip_ids, size=48), RasterSettings(48))
    v = verts.float()
    with torch.no_grad():
        plain = renderer(v, faces, albedo.float())
    assert torch.equal(plain, renderer(v.clone().requires_grad_(True), faces, albedo.float()).detach())


def test_rank_orders_each_pixels_slots_front_to_back(face):
    mesh, verts, faces, _ = face
    cam = mouth_camera(mesh.vertices, mesh.lip_ids, size=32)
    frags = rasterize(cam.transform(verts), faces, RasterSettings(32))
    key = frags.pixel * 8 + frags.rank
    assert len(key.unique()) == len(key) and frags.rank.max() < 4  # one slot per rank, at most K
    order = key.argsort()
    pixel, z = frags.pixel[order], frags.zbuf[order]
    same = pixel[1:] == pixel[:-1]
    assert (z[1:][same] <= z[:-1][same]).all()
    assert (frags.pix_to_face[..., 0] >= 0).float().mean() > 0.99  # the crop is covered
