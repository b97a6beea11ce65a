"""The face template mesh, built procedurally (no third-party model files).

Coordinates are metres (as VOCASET/FLAME), x to the subject's left as seen by the camera (right of
the image), y up, z towards the camera; the mouth centre is the origin.

The face is an annulus around the mouth: rings of `n_angles` vertices from the mouth opening out to
the face outline. Angle 0 is the right mouth corner, angles increase counter-clockwise, so the upper
lip is the first half of the angles and the lower lip the second. From the inside out the rings are:
the rolled inner lip (mucosa, going back into the mouth), the vermilion (red lip) rings from the
inner-lip contour to the vermilion border, and the skin rings out to the face outline. Behind the
opening sit upper and lower teeth and a dark mouth interior, so an open mouth shows teeth and
darkness. The surface has a nose, eye sockets, brows, cheeks and chin, so full-face renders read as
a face and blinks and brow motion have somewhere to happen.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

PARTS = {"skin": 0, "lip": 1, "mouth": 2, "teeth": 3, "eye": 4, "brow": 5}
ALBEDO = {"skin": 0.78, "lip": 0.52, "mouth": 0.07, "teeth": 0.93, "eye": 0.42, "brow": 0.40, "roll": 0.32}

N_ANGLES = 96
N_ROLL = 2  # rolled inner-lip rings
N_LIP = 9  # vermilion rings, inner contour (u=0) .. border (u=1)
N_SKIN = 24  # skin rings, border .. face outline
N_LIP_SKIN = 5  # skin rings next to the border that belong to the lip region (as FLAME's lip list)
HINGE = np.array([0.03, -0.09])  # jaw hinge (y, z)
EYE = np.array([0.032, 0.058])  # eye centre (|x|, y)
BROW_Y = 0.074


@dataclass(frozen=True)
class FaceShape:
    """Identity parameters, 1.0 = the average face."""

    face_width: float = 1.0
    mouth_width: float = 1.0
    lip_thickness: float = 1.0

    @property
    def half_mouth(self) -> float:
        return 0.025 * self.mouth_width

    @property
    def upper_lip_height(self) -> float:
        return 0.0075 * self.lip_thickness

    @property
    def lower_lip_height(self) -> float:
        return 0.0095 * self.lip_thickness


@dataclass
class FaceMesh:
    vertices: np.ndarray  # (V, 3) float32
    faces: np.ndarray  # (F, 3) int64, counter-clockwise seen from +z
    part: np.ndarray  # (V,) int8, PARTS
    albedo: np.ndarray  # (V,) float32 grey level
    ring: np.ndarray  # (V,) ring index in the face annulus (0 = innermost roll ring), -1 off the annulus
    angle: np.ndarray  # (V,) angle index in the face annulus, -1 off the annulus
    lip_ids: np.ndarray  # lip region (LVE, lip-vertex loss)
    upper_face_ids: np.ndarray  # upper face (FDD)
    teeth_lower: np.ndarray  # (V,) bool, the lower teeth (move with the jaw)
    shape: FaceShape

    @property
    def inner_ring(self) -> int:
        """Ring index of the inner-lip contour (where the lips touch)."""
        return N_ROLL

    def contour_ids(self) -> tuple[np.ndarray, np.ndarray]:
        """Vertex ids of the inner-lip contour: upper lip and the lower-lip partner below each,
        from the right corner to the left."""
        j_up = np.arange(1, N_ANGLES // 2)
        j_low = N_ANGLES - j_up
        return self.inner_ring * N_ANGLES + j_up, self.inner_ring * N_ANGLES + j_low


def face_depth(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Depth of the face surface (without lips) at (x, y)."""
    ax = np.abs(x)
    g = lambda cx, cy, sx, sy: np.exp(-((((ax if cx else x) - cx) / sx) ** 2) - ((y - cy) / sy) ** 2)  # noqa: E731
    head = 0.09 * np.sqrt(np.clip(1 - (x / 0.085) ** 2 - ((y - 0.02) / 0.13) ** 2, 0, None)) - 0.09
    return (
        head
        + 0.009 * g(0, 0.0, 0.03, 0.03)  # muzzle
        + 0.020 * g(0, 0.042, 0.011, 0.022)  # nose ridge
        + 0.006 * g(0, 0.028, 0.014, 0.007)  # nose tip and alae
        - 0.010 * g(EYE[0], EYE[1], 0.013, 0.008)  # eye sockets
        + 0.004 * g(0.030, BROW_Y, 0.020, 0.006)  # brow ridge
        + 0.006 * g(0.042, 0.020, 0.020, 0.020)  # cheeks
        + 0.006 * g(0, -0.045, 0.020, 0.012)  # chin
    )


def _outline(theta: np.ndarray, shape: FaceShape) -> np.ndarray:
    """Where the ray from the mouth at angle theta meets the face outline (an ellipse)."""
    a, b, c = 0.075 * shape.face_width, 0.105, 0.025
    cs, sn = np.cos(theta), np.sin(theta)
    qa = cs**2 / a**2 + sn**2 / b**2
    qb = -2 * sn * c / b**2
    qc = c**2 / b**2 - 1
    t = (-qb + np.sqrt(qb**2 - 4 * qa * qc)) / (2 * qa)
    return np.stack([t * cs, t * sn], -1)


def _grid_faces(rows: int, cols: int, offset: int, wrap: bool) -> np.ndarray:
    """Two triangles per quad of a rows x cols vertex grid (row-major), counter-clockwise."""
    r, c = np.meshgrid(np.arange(rows - 1), np.arange(cols if wrap else cols - 1), indexing="ij")
    v00 = offset + r * cols + c
    v01 = offset + r * cols + (c + 1) % cols
    v10 = v00 + cols
    v11 = v01 + cols
    tri = np.concatenate([np.stack([v00, v10, v11], -1), np.stack([v00, v11, v01], -1)], 0)
    return tri.reshape(-1, 3)


def build_face(shape: FaceShape = FaceShape()) -> FaceMesh:
    theta = 2 * np.pi * np.arange(N_ANGLES) / N_ANGLES
    cs, sn = np.cos(theta), np.sin(theta)
    a = shape.half_mouth
    inner = np.stack([a * cs, 0.0004 * sn], -1)
    lip_h = np.where(sn >= 0, shape.upper_lip_height, shape.lower_lip_height)
    border = np.stack([(a + 0.003) * cs, lip_h * sn], -1)
    outer = _outline(theta, shape)

    rings_xy, rings_dz, ring_part = [], [], []
    for k in range(N_ROLL, 0, -1):  # rolled inner lip: slightly inside the contour, going back
        rings_xy.append(inner * (1 - 0.05 * k))
        rings_dz.append(np.full(N_ANGLES, -0.0035 * k))
        ring_part.append("roll")
    t_lip = 0.006 * shape.lip_thickness * (0.6 + 0.4 * np.abs(sn))
    for u in np.linspace(0, 1, N_LIP):
        rings_xy.append(inner + u * (border - inner))
        rings_dz.append(t_lip * (1 - u) ** 2 * (0.6 + 2.2 * u))  # bulge, flat where it meets the skin
        ring_part.append("lip")
    for v in np.linspace(0, 1, N_SKIN + 1)[1:] ** 1.6:
        rings_xy.append(border + v * (outer - border))
        rings_dz.append(np.zeros(N_ANGLES))
        ring_part.append("skin")
    xy = np.concatenate(rings_xy)
    z = face_depth(xy[:, 0], xy[:, 1]) + np.concatenate(rings_dz)
    face = np.concatenate([xy, z[:, None]], 1)
    n_rings = len(rings_xy)
    ring = np.repeat(np.arange(n_rings), N_ANGLES)
    angle = np.tile(np.arange(N_ANGLES), n_rings)
    names = np.repeat(np.array(ring_part), N_ANGLES)
    part = np.array([PARTS["mouth"] if p == "roll" else PARTS[p] for p in names], np.int8)
    albedo = np.array([ALBEDO[p] for p in names], np.float32)
    skin = part == PARTS["skin"]
    # Eyes and brows: darker patches that fade smoothly into the skin (the mesh is coarse up there).
    eye_d = ((np.abs(face[:, 0]) - EYE[0]) / 0.011) ** 2 + ((face[:, 1] - EYE[1]) / 0.005) ** 2
    brow_d = ((np.abs(face[:, 0]) - 0.030) / 0.016) ** 4 + ((face[:, 1] - BROW_Y) / 0.0035) ** 2
    albedo[skin] -= 0.6 * (ALBEDO["skin"] - ALBEDO["eye"]) * np.exp(-0.5 * eye_d[skin])
    albedo[skin] -= 0.6 * (ALBEDO["skin"] - ALBEDO["brow"]) * np.exp(-0.5 * brow_d[skin])
    part[skin & (eye_d < 1)] = PARTS["eye"]
    part[skin & (brow_d < 1)] = PARTS["brow"]
    faces = [_grid_faces(n_rings, N_ANGLES, 0, wrap=True)]
    blocks = [face]

    # Teeth: two curved strips behind the lips, facing the camera; the lower one rides on the jaw.
    z_front = face_depth(np.zeros(1), np.zeros(1))[0] - 0.0045
    tx = np.linspace(-0.8 * a, 0.8 * a, 16)
    for y0, y1 in ((0.0045, -0.0028), (-0.0022, -0.0095)):
        ty = np.linspace(y0, y1, 4)
        gx, gy = np.meshgrid(tx, ty)
        gz = z_front - 40.0 * gx**2 - (0.0025 if y0 < 0 else 0.0)  # lower incisors sit behind the upper
        faces.append(_grid_faces(4, 16, sum(len(b) for b in blocks), wrap=False))
        blocks.append(np.stack([gx, gy, gz], -1).reshape(-1, 3))
    # Mouth interior: a dark concave wall further back.
    ix, iy = np.meshgrid(np.linspace(-1.2 * a, 1.2 * a, 14), np.linspace(0.008, -0.022, 12))
    iz = z_front - 0.018 - 12.0 * ix**2
    faces.append(_grid_faces(12, 14, sum(len(b) for b in blocks), wrap=False))
    blocks.append(np.stack([ix, iy, iz], -1).reshape(-1, 3))

    n_face, n_tooth, n_mouth = len(face), 64, 14 * 12
    vertices = np.concatenate(blocks).astype(np.float32)
    part = np.concatenate(
        [part, np.full(2 * n_tooth, PARTS["teeth"], np.int8), np.full(n_mouth, PARTS["mouth"], np.int8)]
    )
    albedo = np.concatenate([albedo, np.full(2 * n_tooth, ALBEDO["teeth"]), np.full(n_mouth, ALBEDO["mouth"])])
    pad = np.full(2 * n_tooth + n_mouth, -1)
    teeth_lower = np.zeros(len(vertices), bool)
    teeth_lower[n_face + n_tooth : n_face + 2 * n_tooth] = True
    ring_all = np.concatenate([ring, pad])
    lip_ids = np.flatnonzero((ring_all >= 0) & (ring_all < N_ROLL + N_LIP + N_LIP_SKIN))
    upper_face_ids = np.flatnonzero((ring_all >= 0) & (vertices[:, 1] > 0.035))
    return FaceMesh(
        vertices=vertices,
        faces=np.concatenate(faces).astype(np.int64),
        part=part,
        albedo=albedo.astype(np.float32),
        ring=ring_all,
        angle=np.concatenate([angle, pad]),
        lip_ids=lip_ids,
        upper_face_ids=upper_face_ids,
        teeth_lower=teeth_lower,
        shape=shape,
    )


MIDLINE_UPPER = N_ROLL * N_ANGLES + N_ANGLES // 4  # inner-lip contour, top of the mouth opening
MIDLINE_LOWER = N_ROLL * N_ANGLES + 3 * N_ANGLES // 4  # inner-lip contour, bottom


def lip_opening(vertices: np.ndarray) -> np.ndarray:
    """Inner-lip distance at the mouth's midline (metres), for (..., V, 3) vertices of this template."""
    return vertices[..., MIDLINE_UPPER, 1] - vertices[..., MIDLINE_LOWER, 1]


@lru_cache(maxsize=1)
def _template_faces() -> np.ndarray:
    return build_face().faces  # the same for every FaceShape: the shape moves vertices, never connects them


def midline_ids(faces: np.ndarray | None) -> tuple[int, int] | None:
    """(upper, lower) ids of the inner-lip midline vertices that `lip_opening` reads when `faces` is this
    template's connectivity (the synthetic corpus' topology.npz), else None: the ids of other meshes (VOCASET's
    FLAME, BIWI) are not known here, so what needs the opening must be skipped for them."""
    if faces is None:
        return None
    faces, ours = np.asarray(faces), _template_faces()
    if faces.shape != ours.shape or not np.array_equal(faces, ours):
        return None
    return MIDLINE_UPPER, MIDLINE_LOWER
