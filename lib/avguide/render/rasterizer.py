"""Batched soft rasterizer (SoftRas / DIB-R family) in plain PyTorch.

Screen space: x right, y down in pixels (pixel (i, j) has its centre at (j + .5, i + .5)), z is depth with
larger z closer. Front faces are clockwise on screen (counter-clockwise seen from +z in the world).

Two passes. Selection (no gradient): every face lists the pixels of its bounding box grown by the blur
radius as (pixel, face) candidates; the K front-most candidates per pixel that cover it or lie within the
blur radius of a silhouette edge are kept. Then barycentrics, depth and signed distances are recomputed
for the kept pairs from the vertex tensor, with gradient.

Soft coverage only happens at silhouette edges: mesh boundary edges and edges whose neighbour is culled or
faces the other way. Edges shared by two visible faces are hard, so a tessellated surface stays opaque.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

BIG = 1e4  # distance (pixels) standing for "no silhouette edge"
EPS = 1e-5  # barycentric tolerance of the inside test, so rounding opens no cracks along shared edges


@dataclass(frozen=True)
class RasterSettings:
    image_size: int | tuple[int, int]  # H or (H, W)
    faces_per_pixel: int = 4  # K
    blur_sigma: float = 0.3  # soft edge width (pixels); 0 = hard edges
    blur_eps: float = 1e-2  # candidates are kept where the edge coverage sigmoid(d / sigma) > eps
    cull_backfaces: bool = True  # frontal views: a face turned away is hidden behind the surface it belongs to
    clip_barycentrics: bool = True  # clamp to the face (so outside-edge pixels interpolate the edge's values)

    @property
    def hw(self) -> tuple[int, int]:
        s = self.image_size
        return (s, s) if isinstance(s, int) else (int(s[0]), int(s[1]))

    @property
    def blur_radius(self) -> float:
        """How far outside a silhouette edge (pixels) a face still contributes."""
        if self.blur_sigma <= 0:
            return 0.0
        return self.blur_sigma * math.log(1 / self.blur_eps - 1)


@dataclass
class Fragments:
    """The K front-most faces of every pixel, as a flat list of the filled slots (empty slots cost nothing).

    Slots of one pixel are consecutive, front to back (`rank` 0 is the front-most).
    """

    pixel: torch.Tensor  # (N,) flat index into B * H * W
    face: torch.Tensor  # (N,) face index
    rank: torch.Tensor  # (N,) position among the pixel's K slots
    bary: torch.Tensor  # (N, 3) barycentric coordinates (differentiable)
    zbuf: torch.Tensor  # (N,) depth at the pixel (differentiable)
    dist: torch.Tensor  # (N,) signed distance (pixels) to the nearest silhouette edge, > 0 inside
    shape: tuple[int, int, int]  # B, H, W
    faces_per_pixel: int

    @property
    def pix_to_face(self) -> torch.Tensor:
        """Dense (B, H, W, K) face ids, -1 in empty slots (for inspection; the shader works on the slots)."""
        b, h, w = self.shape
        out = torch.full((b * h * w, self.faces_per_pixel), -1, dtype=torch.long, device=self.face.device)
        out[self.pixel, self.rank] = self.face
        return out.view(b, h, w, self.faces_per_pixel)


def _cross(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return a[..., 0] * b[..., 1] - a[..., 1] * b[..., 0]


def _seg_dist(p: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    ab, ap = b - a, p - a
    t = ((ap * ab).sum(-1) / (ab * ab).sum(-1).clamp_min(1e-12)).clamp(0, 1)
    d = ap - t[..., None] * ab
    return ((d * d).sum(-1) + 1e-12).sqrt()


def face_geometry(tri: torch.Tensor, p: torch.Tensor, soft: torch.Tensor, clip: bool = True):
    """tri (N, 3, 3) screen triangles, p (N, 2) points, soft (N, 3) bool per edge (v0v1, v1v2, v2v0).

    Returns barycentrics (N, 3), depth (N,) and signed distance to the nearest soft edge (N,), > 0 inside.
    """
    x, y, z = tri.unbind(-1)  # (N, 3) each
    dx, dy = x - p[:, 0:1], y - p[:, 1:2]
    cross = dx * dy.roll(-1, 1) - dy * dx.roll(-1, 1)  # cross(v_i - p, v_i+1 - p): edges 01, 12, 20
    area = cross.sum(-1, keepdim=True)  # twice the signed area, whatever p
    area = torch.where(area.abs() < 1e-12, torch.full_like(area, 1e-12), area)
    bary = cross.roll(-1, 1) / area
    inside = (bary >= -EPS).all(-1)
    wc = bary.clamp_min(0)
    wc = wc / wc.sum(-1, keepdim=True).clamp_min(1e-12)
    if clip:
        bary = wc
    depth = (wc * z).sum(-1)
    # Distance to the nearest silhouette edge, computed only for the edges that are one (most are not).
    if soft.shape != bary.shape:
        raise ValueError(f"soft edge flags must be (N, 3) like the triangles; got {tuple(soft.shape)}")
    d = torch.full_like(depth, BIG)
    for k in range(3):
        rows = soft[:, k].nonzero().squeeze(1)
        if len(rows):
            dk = _seg_dist(p.index_select(0, rows), tri[rows, k, :2], tri[rows, (k + 1) % 3, :2])
            d = d.index_put((rows,), torch.minimum(d.index_select(0, rows), dk))
    return bary, depth, torch.where(inside, d, -d)


def _planes(tri: torch.Tensor) -> torch.Tensor:
    """(N, 3, 3) screen triangles -> (N, 9): x0, y0 and the slopes of w0, w1 and depth, plus z0.

    Relative to vertex 0 (where w0 = 1, w1 = 0, depth = z0), so no large constants cancel in float32.
    """
    x, y, z = tri.unbind(-1)  # (N, 3) each
    area = (x[:, 1] - x[:, 0]) * (y[:, 2] - y[:, 0]) - (y[:, 1] - y[:, 0]) * (x[:, 2] - x[:, 0])
    area = torch.where(area.abs() < 1e-12, torch.full_like(area, 1e-12), area)
    a0, b0 = (y[:, 1] - y[:, 2]) / area, (x[:, 2] - x[:, 1]) / area
    a1, b1 = (y[:, 2] - y[:, 0]) / area, (x[:, 0] - x[:, 2]) / area
    az = (z[:, 0] - z[:, 2]) * a0 + (z[:, 1] - z[:, 2]) * a1
    bz = (z[:, 0] - z[:, 2]) * b0 + (z[:, 1] - z[:, 2]) * b1
    return torch.stack([x[:, 0], y[:, 0], a0, b0, a1, b1, az, bz, z[:, 0]], 1)


def _altitudes(tri: torch.Tensor) -> torch.Tensor:
    """(N, 3, 3) screen triangles -> (N, 3) distance from each vertex to the line of the opposite edge (pixels)."""
    xy = tri[..., :2]
    edge = xy.roll(-1, -2) - xy  # edges 01, 12, 20
    twice_area = (edge[:, 0, 0] * -edge[:, 2, 1] - edge[:, 0, 1] * -edge[:, 2, 0]).abs()
    length = edge.norm(dim=-1).clamp_min(1e-12)  # |01|, |12|, |20|: opposite vertices 2, 0, 1
    return twice_area[:, None] / length[:, [1, 2, 0]]


def _edge_neighbours(faces: torch.Tensor, n_verts: int) -> torch.Tensor:
    """(F, 3) face across each edge (v0v1, v1v2, v2v0), -1 on boundary or non-manifold edges."""
    e = faces[:, [[0, 1], [1, 2], [2, 0]]].reshape(-1, 2)
    key = e.amin(1) * n_verts + e.amax(1)
    key, order = key.sort()
    n = len(key)
    same = key[1:] == key[:-1]  # position i pairs with i + 1
    prev_same = torch.cat([same.new_zeros(1), same[:-1]])
    next_same = torch.cat([same[1:], same.new_zeros(1)])
    pair = same & ~prev_same & ~next_same  # exactly two faces share the edge
    i = pair.nonzero().squeeze(1)
    nbr = torch.full((n,), -1, dtype=torch.long, device=faces.device)
    nbr[order[i]] = order[i + 1] // 3
    nbr[order[i + 1]] = order[i] // 3
    return nbr.view(-1, 3)


def _check(verts: torch.Tensor, faces: torch.Tensor, settings: RasterSettings) -> None:
    if verts.ndim != 3 or verts.shape[-1] != 3:
        raise ValueError(f"verts_screen must be (B, V, 3); got {tuple(verts.shape)}")
    if verts.shape[0] == 0:
        raise ValueError("empty batch: verts_screen has B = 0 meshes")
    if faces.ndim != 2 or faces.shape[-1] != 3:
        raise ValueError(f"faces must be (F, 3); got {tuple(faces.shape)}")
    if faces.dtype.is_floating_point or faces.dtype == torch.bool:
        raise ValueError(f"faces must be an integer tensor; got {faces.dtype}")
    if faces.numel() and (faces.min() < 0 or faces.max() >= verts.shape[1]):
        raise ValueError(
            f"faces index vertices 0..{verts.shape[1] - 1}; found indices {int(faces.min())}..{int(faces.max())}"
        )
    if not torch.isfinite(verts).all():
        raise ValueError(f"verts_screen has {int((~torch.isfinite(verts)).sum())} non-finite (NaN/inf) values")
    h, w = settings.hw
    if h <= 0 or w <= 0:
        raise ValueError(f"image_size must be > 0; got {h}x{w}")
    if settings.faces_per_pixel < 1:
        raise ValueError(f"faces_per_pixel must be >= 1; got {settings.faces_per_pixel}")
    if settings.blur_sigma < 0:
        raise ValueError(f"blur_sigma must be >= 0 pixels; got {settings.blur_sigma}")


@torch.no_grad()
def _select(verts: torch.Tensor, faces: torch.Tensor, settings: RasterSettings):
    """K front-most (pixel, face) pairs per pixel: pixel, face, rank (each (N,)), soft edge flags (B, F, 3) and
    the slots' barycentrics, depth and signed distance (what rasterize recomputes when gradients are needed)."""
    B, V, _ = verts.shape
    F = faces.shape[0]
    H, W = settings.hw
    K = settings.faces_per_pixel
    dev = verts.device
    r = settings.blur_radius

    tri = verts[:, faces]  # B, F, 3, 3
    area = _cross(tri[:, :, 1, :2] - tri[:, :, 0, :2], tri[:, :, 2, :2] - tri[:, :, 0, :2])
    visible = area < 0 if settings.cull_backfaces else area != 0
    nbr = _edge_neighbours(faces, V)  # F, 3
    nbr_vis = visible[:, nbr.clamp_min(0)] & (nbr >= 0)
    nbr_flip = (area[:, nbr.clamp_min(0)] < 0) != (area < 0)[..., None]
    soft = ~nbr_vis | nbr_flip  # B, F, 3

    # Only faces with a silhouette edge reach beyond themselves (by the blur radius).
    reach = (r * soft.any(-1)).to(tri.dtype)[..., None]
    lo = tri[..., :2].amin(2) - reach
    hi = tri[..., :2].amax(2) + reach
    j0 = (lo[..., 0] - 0.5).ceil().clamp(0, W).long()
    j1 = (hi[..., 0] - 0.5).floor().clamp(-1, W - 1).long()
    i0 = (lo[..., 1] - 0.5).ceil().clamp(0, H).long()
    i1 = (hi[..., 1] - 0.5).floor().clamp(-1, H - 1).long()
    nx = (j1 - j0 + 1).clamp_min(0)
    ny = (i1 - i0 + 1).clamp_min(0)
    n = (nx * ny * visible).flatten()  # candidates per (b, f)
    active = n.nonzero().squeeze(1)  # faces with at least one candidate pixel
    n = n[active]
    # Candidates row by row: each face's bounding-box rows, and in each row the pixels between the
    # triangle's left and right edges (scanline), or the whole box row for faces with a silhouette edge.
    dt = verts.dtype
    tri_a = tri.view(B * F, 3, 3)[active]
    soft_a = soft.view(B * F, 3).any(-1)[active]
    coef = _planes(tri_a)
    ny_a = ny.flatten()[active]
    r_face = torch.repeat_interleave(torch.arange(len(active), device=dev), ny_a)
    y = (i0.flatten()[active].index_select(0, r_face)
         + torch.arange(len(r_face), device=dev) - (torch.cumsum(ny_a, 0) - ny_a).index_select(0, r_face)).to(dt) + 0.5
    t = tri_a.index_select(0, r_face)  # rows, 3, 3
    xa, ya = t[:, :, 0], t[:, :, 1]
    xb, yb = xa.roll(-1, 1), ya.roll(-1, 1)  # edges 01, 12, 20
    crosses = (torch.minimum(ya, yb) <= y[:, None]) & (torch.maximum(ya, yb) >= y[:, None]) & (ya != yb)
    x = xa + (y[:, None] - ya) / torch.where(ya != yb, yb - ya, torch.ones_like(ya)) * (xb - xa)
    x_lo = torch.where(crosses, x, torch.full_like(x, torch.inf)).amin(1)
    x_hi = torch.where(crosses, x, torch.full_like(x, -torch.inf)).amax(1)
    j_lo = torch.where(soft_a.index_select(0, r_face), j0.flatten()[active].index_select(0, r_face).to(dt),
                       (x_lo - 0.5 - 1e-3).ceil().clamp(0, W))
    j_hi = torch.where(soft_a.index_select(0, r_face), j1.flatten()[active].index_select(0, r_face).to(dt),
                       (x_hi - 0.5 + 1e-3).floor().clamp(-1, W - 1))
    count = (j_hi - j_lo + 1).clamp_min(0).nan_to_num(0).long()
    c_row = torch.repeat_interleave(torch.arange(len(r_face), device=dev), count)
    off = (torch.arange(len(c_row), device=dev) - (torch.cumsum(count, 0) - count).index_select(0, c_row)).to(dt)
    a_idx = r_face.index_select(0, c_row)
    px = j_lo.index_select(0, c_row) + off + 0.5
    py = y.index_select(0, c_row)
    c = coef.index_select(0, a_idx)
    dx, dy = px - c[:, 0], py - c[:, 1]
    w0 = 1 + c[:, 2] * dx + c[:, 3] * dy
    w1 = c[:, 4] * dx + c[:, 5] * dy
    z = c[:, 8] + c[:, 6] * dx + c[:, 7] * dy
    keep = (w0 >= -EPS) & (w1 >= -EPS) & (w0 + w1 <= 1 + EPS)
    sd = torch.full_like(z, BIG)
    # Faces with a silhouette edge: exact distances, inside and within the blur radius outside.
    soft_flat = soft.view(B * F, 3)
    candidate_soft = soft_flat.any(-1).index_select(0, active).index_select(0, a_idx)
    if r > 0:  # cheap bound first: a point farther than r outside any edge's line is farther than r from the face
        alt = _altitudes(tri.view(B * F, 3, 3)[active]).index_select(0, a_idx)
        close = (w0 * alt[:, 0] >= -r) & (w1 * alt[:, 1] >= -r) & ((1 - w0 - w1) * alt[:, 2] >= -r)
        candidate_soft &= keep | close
    else:
        candidate_soft &= keep
    exact = candidate_soft.nonzero().squeeze(1)
    fb = active.index_select(0, a_idx.index_select(0, exact))
    p_exact = torch.stack([px.index_select(0, exact), py.index_select(0, exact)], 1)
    b_e, z_e, sd_e = face_geometry(tri.view(B * F, 3, 3).index_select(0, fb), p_exact, soft_flat.index_select(0, fb),
                                   settings.clip_barycentrics)
    keep = keep.index_put((exact,), sd_e >= -r)
    z, sd = z.index_put((exact,), z_e), sd.index_put((exact,), sd_e)
    exact_pos = torch.full_like(a_idx, -1).index_put((exact,), torch.arange(len(exact), device=dev))

    kept = keep.nonzero().squeeze(1)
    bf = active.index_select(0, a_idx.index_select(0, kept))
    z, sd = z.index_select(0, kept), sd.index_select(0, kept)
    w0, w1, exact_pos = w0.index_select(0, kept), w1.index_select(0, kept), exact_pos.index_select(0, kept)
    bary = torch.stack([w0, w1, 1 - w0 - w1], 1).clamp_min(0)
    bary = bary / bary.sum(1, keepdim=True)
    is_exact = (exact_pos >= 0).nonzero().squeeze(1)
    bary = bary.index_put((is_exact,), b_e.index_select(0, exact_pos.index_select(0, is_exact)))
    pix = (bf // F) * (H * W) + (py.index_select(0, kept) - 0.5).long() * W + (px.index_select(0, kept) - 0.5).long()

    # One sort on (pixel, quantised depth): front to back within each pixel.
    order = torch.arange(len(z), device=dev)
    if len(z):
        zq = ((z.max() - z) / (z.max() - z.min() + 1e-12) * (2**20 - 1)).long()
        order = torch.argsort(pix * 2**20 + zq)
        pix = pix.index_select(0, order)
    _, counts = torch.unique_consecutive(pix, return_counts=True)
    first = torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
    rank = torch.arange(len(pix), device=dev) - first
    sel = (rank < K).nonzero().squeeze(1)
    order = order.index_select(0, sel)
    geometry = bary.index_select(0, order), z.index_select(0, order), sd.index_select(0, order)
    return pix.index_select(0, sel), bf.index_select(0, order) % F, rank.index_select(0, sel), soft, geometry


def rasterize(verts_screen: torch.Tensor, faces: torch.Tensor, settings: RasterSettings) -> Fragments:
    """(B, V, 3) screen-space vertices, (F, 3) faces -> Fragments, differentiable w.r.t. verts_screen."""
    _check(verts_screen, faces, settings)
    faces = faces.to(device=verts_screen.device, dtype=torch.long)
    B, V, _ = verts_screen.shape
    H, W = settings.hw
    # Faces that stay well outside the image in every frame take no part (their edges cannot soften it).
    near = _near_window(verts_screen.detach(), faces, settings)
    faces, face_ids = faces[near], near
    pixel, face, rank, soft, geometry = _select(verts_screen.detach(), faces, settings)
    if not (torch.is_grad_enabled() and verts_screen.requires_grad):
        return Fragments(pixel, face_ids[face], rank, *geometry, (B, H, W), settings.faces_per_pixel)
    # Recompute the geometry of the kept slots, now with gradient.
    b = pixel // (H * W)
    yx = pixel % (H * W)
    p = torch.stack([yx % W, yx // W], -1).to(verts_screen.dtype) + 0.5
    ids = (faces[face] + (b * V)[:, None]).view(-1)
    tri = verts_screen.reshape(B * V, 3).index_select(0, ids).view(-1, 3, 3)  # index_select: its backward is index_add
    bary, z, sd = face_geometry(tri, p, soft[b, face], settings.clip_barycentrics)
    return Fragments(pixel, face_ids[face], rank, bary, z, sd, (B, H, W), settings.faces_per_pixel)


def _near_window(verts: torch.Tensor, faces: torch.Tensor, settings: RasterSettings) -> torch.Tensor:
    """Ids of the faces whose bounding box comes within the blur radius + 1 pixel of the image in some frame."""
    H, W = settings.hw
    m = settings.blur_radius + 1
    xy = verts[..., :2]
    lo = torch.stack([xy[:, faces[:, k]] for k in range(3)]).amin(0)  # B, F, 2
    hi = torch.stack([xy[:, faces[:, k]] for k in range(3)]).amax(0)
    inside = (hi[..., 0] >= -m) & (lo[..., 0] <= W + m) & (hi[..., 1] >= -m) & (lo[..., 1] <= H + m)
    return inside.any(0).nonzero().squeeze(1)
