"""Batched soft rasterizer (SoftRas / DIB-R family) in plain PyTorch.

Screen space: x right, y down in pixels (pixel (i, j) has its centre at (j + .5, i + .5)), z is depth with
larger z closer. Front faces are clockwise on screen (counter-clockwise seen from +z in the world).

Every face is first reduced to a column of plane coefficients (its vertices, and the slopes of two
barycentric coordinates across the screen), so a (pixel, face) pair costs a few multiply-adds. Two passes.
Selection (no gradient): every visible face lists the pixels of its bounding box (grown by the blur radius
when it has a silhouette edge) as candidates; the K front-most candidates per pixel that cover it or lie
within the blur radius of a silhouette edge are kept, optionally without those hidden so far behind an
opaque slot that the shader's depth blending gives them no weight (`depth_cutoff`). Then barycentrics,
depth and signed distances of the kept slots are computed from the coefficients, with gradient.

Soft coverage only happens at silhouette edges: mesh boundary edges and edges whose neighbour is culled or
faces the other way. Edges shared by two visible faces are hard, so a tessellated surface stays opaque.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

BIG = 1e4  # distance (pixels) standing for "no silhouette edge"
EPS = 1e-5  # barycentric tolerance of the inside test, so rounding opens no cracks along shared edges
NEGLIGIBLE = 30.0  # exp(-30) ~ 1e-13: a blending weight this much below another changes no pixel
GROUP = 8  # frames selected at a time, so the candidates' arrays stay in the CPU's caches
TILE = 3  # candidate pixels are tested TILE x TILE at a time (one tile covers most faces' pixel boxes)


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

    `rank` orders the slots of a pixel front to back (0 is the front-most); the list itself is in no order.
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


# Rows of the per-face table: vertex 0, the screen slopes of barycentrics w0 and w1 (d/dx, d/dy), the three
# depths; and of the second one, vertices 1 and 2 (only faces with a silhouette edge need those).
X0, Y0, A0, B0, A1, B1, Z0, Z1, Z2 = range(9)
X1, Y1, X2, Y2 = range(4)


def _face_table(verts: torch.Tensor, faces: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(B, V, 3) screen vertices, (F, 3) faces -> the (9, B * F) and (4, B * F) tables above and the (B * F,)
    doubled signed areas (< 0 for front faces). Differentiable."""
    xs, ys, zs = verts.permute(2, 0, 1).contiguous()  # (B, V) each
    x0, y0, z0, x1, y1, z1, x2, y2, z2 = (
        c.index_select(1, faces[:, k]).reshape(-1) for k in range(3) for c in (xs, ys, zs)
    )
    area = (x1 - x0) * (y2 - y0) - (y1 - y0) * (x2 - x0)
    safe = torch.where(area.abs() < 1e-12, torch.full_like(area, 1e-12), area)
    a0, b0, a1, b1 = (y1 - y2) / safe, (x2 - x1) / safe, (y2 - y0) / safe, (x0 - x2) / safe
    return torch.stack([x0, y0, a0, b0, a1, b1, z0, z1, z2]), torch.stack([x1, y1, x2, y2]), area


def _nonzero(x: torch.Tensor) -> torch.Tensor:
    """Positions of the non-zero entries of 1-D x, increasing (numpy finds them several times faster on the CPU)."""
    if x.device.type == "cpu":
        return torch.from_numpy(np.flatnonzero(x.numpy()))
    return x.nonzero().squeeze(1)


def _barycentrics(x0, y0, a0, b0, a1, b1, px, py) -> tuple[torch.Tensor, torch.Tensor]:
    """Table rows X0..B1 of faces, points (px, py) -> their w0, w1 (w2 = 1 - w0 - w1)."""
    dx, dy = px - x0, py - y0
    return 1 + a0 * dx + b0 * dy, a1 * dx + b1 * dy


def _seg_dist(px, py, ax, ay, bx, by) -> torch.Tensor:
    ex, ey, qx, qy = bx - ax, by - ay, px - ax, py - ay
    t = ((qx * ex + qy * ey) / (ex * ex + ey * ey).clamp_min(1e-12)).clamp(0, 1)
    dx, dy = qx - t * ex, qy - t * ey
    return (dx * dx + dy * dy + 1e-12).sqrt()


def _slot_geometry(
    table: torch.Tensor,
    far: torch.Tensor,
    bf: torch.Tensor,
    px: torch.Tensor,
    py: torch.Tensor,
    soft: torch.Tensor,
    clip: bool = True,
):
    """Face columns `bf` (N,) of the tables at points (px, py), soft (N, 3) bool per edge (v0v1, v1v2, v2v0).

    Returns barycentrics (N, 3) (a view of a (3, N) tensor), depth (N,) and signed distance to the nearest
    soft edge (N,), > 0 inside (BIG when the face has no soft edge).
    """
    x0, y0, a0, b0, a1, b1, z0, z1, z2 = table.index_select(1, bf)
    w0, w1 = _barycentrics(x0, y0, a0, b0, a1, b1, px, py)
    raw = torch.stack([w0, w1, 1 - w0 - w1])
    wc = raw.clamp_min(0)
    wc = wc / wc.sum(0).clamp_min(1e-12)
    depth = (wc * torch.stack([z0, z1, z2])).sum(0)
    d = torch.full_like(depth, BIG)
    s = _nonzero(soft.any(1))  # distances only for the faces with a silhouette edge (few)
    if len(s):
        x0, y0 = x0.index_select(0, s), y0.index_select(0, s)
        x1, y1, x2, y2 = far.index_select(1, bf.index_select(0, s))
        p = px.index_select(0, s), py.index_select(0, s)
        edges = (_seg_dist(*p, x0, y0, x1, y1), _seg_dist(*p, x1, y1, x2, y2), _seg_dist(*p, x2, y2, x0, y0))
        soft_s = soft.index_select(0, s)
        ds = torch.stack([torch.where(soft_s[:, k], e, torch.full_like(e, BIG)) for k, e in enumerate(edges)]).amin(0)
        d = d.index_put((s,), ds)
    inside = (raw >= -EPS).all(0)
    return (wc if clip else raw).T, depth, torch.where(inside, d, -d)


def _edge_neighbours(faces: torch.Tensor, n_verts: int) -> tuple[torch.Tensor, bool]:
    """(F, 3) face across each edge (v0v1, v1v2, v2v0), -1 on boundary or non-manifold edges; and whether the
    mesh is free of non-manifold edges (edges of more than two faces)."""
    e = faces[:, [[0, 1], [1, 2], [2, 0]]].reshape(-1, 2)
    key = e.amin(1) * n_verts + e.amax(1)
    key, order = key.sort()
    n = len(key)
    same = key[1:] == key[:-1]  # position i pairs with i + 1
    prev_same = torch.cat([same.new_zeros(1), same[:-1]])
    next_same = torch.cat([same[1:], same.new_zeros(1)])
    pair = same & ~prev_same & ~next_same  # exactly two faces share the edge
    i = _nonzero(pair)
    nbr = torch.full((n,), -1, dtype=torch.long, device=faces.device)
    nbr[order[i]] = order[i + 1] // 3
    nbr[order[i + 1]] = order[i] // 3
    return nbr.view(-1, 3), not bool((same[1:] & same[:-1]).any())


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
def _select(
    table: torch.Tensor,
    far: torch.Tensor,
    visible: torch.Tensor,
    soft: torch.Tensor,
    B: int,
    settings: RasterSettings,
    depth_cutoff: float | None,
):
    """The K front-most (pixel, face) pairs per pixel, as pixel (flat into B * H * W), face column of the table
    and rank (0 the front-most), each (N,). visible (B * F,) and soft (B * F, 3) flag faces and their
    silhouette edges."""
    H, W = settings.hw
    K, r, dev, dt = settings.faces_per_pixel, settings.blur_radius, table.device, table.dtype
    F = table.shape[1] // B
    x = torch.stack([table[X0], far[X1], far[X2]])
    y = torch.stack([table[Y0], far[Y1], far[Y2]])
    soft_any = soft.any(1)
    reach = r * soft_any.to(dt)  # only faces with a silhouette edge reach beyond themselves
    j0 = (x.amin(0) - reach - 0.5).ceil().clamp(0, W).long()
    j1 = (x.amax(0) + reach - 0.5).floor().clamp(-1, W - 1).long()
    i0 = (y.amin(0) - reach - 0.5).ceil().clamp(0, H).long()
    i1 = (y.amax(0) + reach - 0.5).floor().clamp(-1, H - 1).long()
    # Each visible face's pixel box, cut into tiles of TILE x TILE pixels (one tile for most faces).
    tx = (j1 - j0 + TILE).clamp_min(0) // TILE
    n = tx * ((i1 - i0 + TILE).clamp_min(0) // TILE) * visible
    active = _nonzero(n)
    n, tx = n.index_select(0, active), tx.index_select(0, active)
    f = torch.repeat_interleave(n)
    q = torch.arange(len(f), device=dev) - (torch.cumsum(n, 0) - n).index_select(0, f)
    txf = tx.index_select(0, f)
    qy = torch.div(q, txf, rounding_mode="floor")
    bf = active.index_select(0, f)  # the face of each tile
    tj = j0.index_select(0, bf) + TILE * (q - qy * txf)  # the tile's first pixel
    ti = i0.index_select(0, bf) + TILE * qy
    width, height = j1.index_select(0, bf) - tj + 1, i1.index_select(0, bf) - ti + 1

    # Every pixel of every tile at once, as (TILE², tiles) grids (barycentrics computed as _slot_geometry does,
    # to the bit).
    x0, y0, a0, b0, a1, b1, z0, z1, z2 = table.index_select(1, bf)[:, None, :]
    ox = torch.arange(TILE * TILE, device=dev)[:, None] % TILE
    oy = torch.div(torch.arange(TILE * TILE, device=dev)[:, None], TILE, rounding_mode="floor")
    w0, w1 = _barycentrics(x0, y0, a0, b0, a1, b1, tj.to(dt) + (ox.to(dt) + 0.5), ti.to(dt) + (oy.to(dt) + 0.5))
    z = z2 + (z0 - z2) * w0 + (z1 - z2) * w1  # the plane's depth
    inside = (w0 >= -EPS) & (w1 >= -EPS) & (w0 + w1 <= 1 + EPS) & (ox < width) & (oy < height)
    soft_t = soft_any.index_select(0, bf)
    candidate = inside & ~soft_t
    # Faces with a silhouette edge: also the pixels outside within r of such an edge, hence within r of the
    # face's three edge lines and of that edge's line (signed distances to the lines: w times the altitude).
    st = _nonzero(soft_t)
    if r > 0 and len(st):
        bs = bf.index_select(0, st)
        x0, y0, x1, y1, x2, y2 = torch.cat([table[:2], far]).index_select(1, bs)
        twice_area = ((x1 - x0) * (y2 - y0) - (y1 - y0) * (x2 - x0)).abs()
        ws0, ws1 = w0.index_select(1, st), w1.index_select(1, st)
        close = (ox < width.index_select(0, st)) & (oy < height.index_select(0, st))
        near = torch.zeros_like(close)
        # lines 12, 20, 01, opposite vertices 0, 1, 2 (soft flags are for edges 01, 12, 20)
        lines = ((x1, y1, x2, y2), (x2, y2, x0, y0), (x0, y0, x1, y1))
        for w, (xa, ya, xb, yb), edge in zip(
            (ws0, ws1, 1 - ws0 - ws1), lines, soft.index_select(0, bs)[:, [1, 2, 0]].T
        ):
            d = w * (twice_area / ((xb - xa) ** 2 + (yb - ya) ** 2).sqrt().clamp_min(1e-12))
            close &= d >= -r
            near |= (d <= r) & edge
        candidate[:, st] = inside.index_select(1, st) | (close & near)
    else:
        candidate[:, st] = inside.index_select(1, st)

    c = _nonzero(candidate.T.contiguous().view(-1))  # in face order
    tile = torch.div(c, TILE * TILE, rounding_mode="floor")
    cell = c - tile * (TILE * TILE)
    pix = ((bf // F) * (H * W) + ti * W + tj).index_select(0, tile) + (oy * W + ox).view(-1).index_select(0, cell)
    c = cell * len(bf) + tile  # position in the (TILE², tiles) grids
    bf, hard = bf.index_select(0, tile), ~soft_t.index_select(0, tile)
    z = z.view(-1).index_select(0, c)
    keep = inside.view(-1).index_select(0, c)  # inside (any face), or near a silhouette edge outside (below)
    floor = None
    if depth_cutoff is not None and len(z):
        # Hidden: more than depth_cutoff behind a slot of a face without silhouette edges (opaque) in its
        # pixel. That is all that lies behind some depth, so the rest are still the front-most.
        opaque = _nonzero(keep & hard)
        front = z.new_full((B * H * W,), -torch.inf)
        front.scatter_reduce_(0, pix.index_select(0, opaque), z.index_select(0, opaque), "amax")
        floor = front.index_select(0, pix) - depth_cutoff
    # Outside a face near its silhouette edges: exact distances, and depths clamped to the face.
    s = _nonzero(~keep)
    if floor is not None:  # (a depth within the face cannot exceed its vertices')
        zf = table[Z0:].index_select(1, bf.index_select(0, s)).amax(0)
        s = s[zf >= floor.index_select(0, s)]
    bs, ps = bf.index_select(0, s), pix.index_select(0, s) % (H * W)
    px, py = (ps % W).to(dt) + 0.5, (ps // W).to(dt) + 0.5
    _, z_s, sd_s = _slot_geometry(table, far, bs, px, py, soft.index_select(0, bs))
    keep = keep.index_put((s,), sd_s >= -r)
    z = z.index_put((s,), z_s)
    if floor is not None:
        keep &= z >= floor
    kept = _nonzero(keep)
    pix, bf, z = pix.index_select(0, kept), bf.index_select(0, kept), z.index_select(0, kept)

    # Pixels with more than one slot: one sort on (pixel, depth) ranks them front to back (the bits of a
    # float32 as an integer that keeps the order; equal depths in face order); the first K stay.
    count = torch.zeros(B * H * W, dtype=torch.int32, device=dev)
    count.index_add_(0, pix, torch.ones_like(pix, dtype=torch.int32))
    shared = _nonzero(count.index_select(0, pix) > 1)
    zbits = (-z.index_select(0, shared)).to(torch.float32).view(torch.int32).long()
    zbits = torch.where(zbits < 0, zbits ^ 0x7FFFFFFF, zbits) + 2**31
    shared = shared.index_select(0, torch.argsort(pix.index_select(0, shared) * 2**32 + zbits, stable=True))
    p = pix.index_select(0, shared)
    pos = torch.arange(len(p), device=dev)
    first = torch.ones_like(p, dtype=torch.bool)
    first[1:] = p[1:] != p[:-1]
    rank = torch.zeros_like(pix).index_put_((shared,), pos - torch.where(first, pos, 0).cummax(0).values)
    sel = _nonzero(rank < K)
    return pix.index_select(0, sel), bf.index_select(0, sel), rank.index_select(0, sel)


def _soft_edges(area: torch.Tensor, visible: torch.Tensor, nbr: torch.Tensor) -> torch.Tensor:
    """(B, F) doubled signed areas and visibility, (F, 3) edge neighbours -> (B * F, 3) silhouette-edge flags
    (v0v1, v1v2, v2v0): the edge is on the mesh boundary, or its neighbour is culled or faces the other way."""
    across = nbr.clamp_min(0).view(-1)
    nbr_vis = visible.index_select(1, across).view(*area.shape, 3) & (nbr >= 0)
    nbr_flip = (area < 0).index_select(1, across).view(*area.shape, 3) != (area < 0)[..., None]
    return (~nbr_vis | nbr_flip).view(-1, 3)


_MESHES: dict[tuple[int, bytes], tuple[torch.Tensor, bool]] = {}  # a few meshes' edge neighbours, by their faces
_MESHES_KEPT = 4


def _mesh_neighbours(faces: torch.Tensor, n_verts: int) -> tuple[torch.Tensor, bool]:
    """_edge_neighbours(faces, n_verts) of a whole mesh, remembered for the last few meshes on the CPU (a corpus
    renders the same faces thousands of times, a few frames a call)."""
    key = (n_verts, faces.numpy().tobytes()) if faces.device.type == "cpu" else None
    if key in _MESHES:
        return _MESHES[key]
    out = _edge_neighbours(faces, n_verts)
    if key is not None:
        if len(_MESHES) >= _MESHES_KEPT:
            del _MESHES[next(iter(_MESHES))]
        _MESHES[key] = out
    return out


def _subset_neighbours(faces: torch.Tensor, subset: torch.Tensor, n_verts: int) -> torch.Tensor:
    """_edge_neighbours(faces[subset]) (subset: increasing face ids), from the whole mesh's when every edge has
    at most two faces (then an edge pairs two faces of the subset exactly when it pairs them in the mesh)."""
    nbr, manifold = _mesh_neighbours(faces, n_verts)
    if not manifold:
        return _edge_neighbours(faces.index_select(0, subset), n_verts)[0]
    position = torch.full((len(faces) + 1,), -1, dtype=torch.long, device=faces.device)  # last: no neighbour
    position[subset] = torch.arange(len(subset), device=faces.device)
    across = nbr.index_select(0, subset).view(-1)
    return position.index_select(0, across.masked_fill(across < 0, len(faces))).view(-1, 3)


def rasterize(
    verts_screen: torch.Tensor, faces: torch.Tensor, settings: RasterSettings, depth_cutoff: float | None = None
) -> Fragments:
    """(B, V, 3) screen-space vertices, (F, 3) faces -> Fragments, differentiable w.r.t. verts_screen.

    With `depth_cutoff`, slots lying more than that depth behind an opaque slot of their pixel are left out:
    under the shader's soft depth blending at temperature gamma, a cutoff of NEGLIGIBLE * gamma leaves out only
    slots whose weight and transparency are below exp(-30) of the front slot's, which change no pixel.
    """
    _check(verts_screen, faces, settings)
    faces = faces.to(device=verts_screen.device, dtype=torch.long)
    B, V, _ = verts_screen.shape
    H, W = settings.hw
    # Faces that stay well outside the image in every frame take no part (their edges cannot soften it).
    near = _near_window(verts_screen.detach(), faces, settings)
    nbr = _subset_neighbours(faces, near, V)
    faces = faces[near]
    grad = torch.is_grad_enabled() and verts_screen.requires_grad
    table, far, area = _face_table(verts_screen if grad else verts_screen.detach(), faces)
    with torch.no_grad():
        visible = area < 0 if settings.cull_backfaces else area != 0
        soft = _soft_edges(area.view(B, -1), visible.view(B, -1), nbr)
        # a few frames at a time: the candidates' arrays then stay in the CPU's caches
        parts = []
        for b in range(0, B, GROUP):
            n = min(GROUP, B - b)
            cols = slice(b * len(faces), (b + n) * len(faces))
            pixel, bf, rank = _select(
                table.detach()[:, cols], far.detach()[:, cols], visible[cols], soft[cols], n, settings, depth_cutoff
            )
            parts.append((pixel + b * H * W, bf + b * len(faces), rank))
        pixel, bf, rank = (torch.cat(p) for p in zip(*parts))
    yx = pixel % (H * W)
    px, py = (yx % W).to(table.dtype) + 0.5, (yx // W).to(table.dtype) + 0.5
    bary, z, sd = _slot_geometry(table, far, bf, px, py, soft.index_select(0, bf), settings.clip_barycentrics)
    face = near.index_select(0, bf % len(faces))
    return Fragments(pixel, face, rank, bary, z, sd, (B, H, W), settings.faces_per_pixel)


def _near_window(verts: torch.Tensor, faces: torch.Tensor, settings: RasterSettings) -> torch.Tensor:
    """Ids of the faces whose bounding box comes within the blur radius + 1 pixel of the image in some frame."""
    H, W = settings.hw
    m = settings.blur_radius + 1
    inside = torch.ones(verts.shape[0], len(faces), dtype=torch.bool, device=verts.device)
    for c, size in zip(verts[..., :2].permute(2, 0, 1).contiguous(), (W, H)):
        corners = [c.index_select(1, faces[:, k]) for k in range(3)]
        lo = torch.minimum(torch.minimum(corners[0], corners[1]), corners[2])
        hi = torch.maximum(torch.maximum(corners[0], corners[1]), corners[2])
        inside &= (hi >= -m) & (lo <= size + m)
    return _nonzero(inside.any(0))
