"""Differentiable renderer: gradients against finite differences, mouth crops, fitting, input checks."""

import numpy as np
import pytest
import torch

from avguide.face.rig import Rig
from avguide.face.template import build_face, lip_opening
from avguide.render import (
    MeshRenderer,
    OrthoCamera,
    RasterSettings,
    ShaderSettings,
    mouth_camera,
    rasterize,
    render_mouth,
)
from avguide.render.filters import gaussian_blur


@pytest.fixture(scope="module")
def face():
    mesh = build_face()
    rig = Rig(mesh)
    return mesh, rig, torch.as_tensor(mesh.faces), torch.as_tensor(mesh.albedo)


def _pose(rig, jaw):
    p = np.zeros((len(jaw), 8))
    p[:, 0] = jaw
    return torch.as_tensor(rig.pose(p))


def _grid(n=3):
    """A bumpy n x n grid in [-0.6, 0.6]^2 over one larger triangle further back (two layers)."""
    g = torch.linspace(-0.6, 0.6, n, dtype=torch.float64)
    y, x = torch.meshgrid(g, g, indexing="ij")
    z = 0.1 * torch.cos(2 * x) * torch.cos(1.5 * y)
    v = torch.stack([x, y, z], -1).reshape(-1, 3)
    r, c = torch.meshgrid(torch.arange(n - 1), torch.arange(n - 1), indexing="ij")
    v00 = (r * n + c).flatten()
    quads = torch.stack([v00, v00 + 1, v00 + n + 1, v00 + n], -1)
    f = torch.cat([quads[:, [0, 1, 2]], quads[:, [0, 2, 3]]])
    back = torch.tensor([[-0.9, -0.8, -0.3], [0.8, -0.5, -0.3], [0.1, 0.9, -0.3]], dtype=torch.float64)
    f = torch.cat([f, torch.tensor([[n * n, n * n + 1, n * n + 2]])])
    v = torch.cat([v, back])
    v[:, :2] += 0.03 * torch.randn(len(v), 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    albedo = torch.linspace(0.3, 0.9, len(v), dtype=torch.float64)
    return v, f, albedo


def test_gradients_match_finite_differences():
    v, f, albedo = _grid()
    cam = OrthoCamera((0.0, 0.0), 1.0, 1.0, 16, 16)
    renderer = MeshRenderer(
        cam,
        RasterSettings(16, faces_per_pixel=16, blur_sigma=1.0, blur_eps=1e-5),
        ShaderSettings(background=0.2, gamma=0.1),
    )
    weights = torch.rand(1, 16, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    loss = lambda x: (renderer(x[None], f, albedo) * weights).sum()  # noqa: E731
    x = v.clone().requires_grad_(True)
    loss(x).backward()
    eps = 1e-4  # world units = 8e-4 pixels
    fd = torch.zeros_like(v)
    for i in range(v.shape[0]):
        for k in range(3):
            d = torch.zeros_like(v)
            d[i, k] = eps
            fd[i, k] = (loss(v + d) - loss(v - d)) / (2 * eps)
    err = (x.grad - fd).norm() / fd.norm()
    assert fd.abs().max() > 0.1
    assert err < 1e-2, f"autograd vs finite differences: relative error {err:.3g}\n{x.grad}\n{fd}"
    # every vertex that moves the image gets the right gradient, not only the overall direction
    big = fd.abs() > 0.05 * fd.abs().max()
    rel = ((x.grad - fd).abs() / fd.abs())[big]
    assert rel.max() < 1e-2, rel


def test_mouth_gradient_is_on_the_lips(face):
    mesh, rig, faces, albedo = face
    cam = mouth_camera(mesh.vertices, mesh.lip_ids, size=64)
    v = _pose(rig, [0.3]).requires_grad_(True)
    img = render_mouth(v, mesh, cam)
    w = torch.rand(img.shape, generator=torch.Generator().manual_seed(0))
    (img * w).sum().backward()
    g = v.grad[0].norm(dim=-1)
    assert torch.isfinite(g).all()
    assert (g[mesh.lip_ids] > 0).float().mean() > 0.5
    share = g[mesh.lip_ids].sum() / g.sum()
    assert share > 0.5, f"only {share:.2f} of |grad| on the lip vertices"


def test_jaw_opening_changes_the_mouth_crop(face):
    mesh, rig, faces, albedo = face
    cam = mouth_camera(mesh.vertices, mesh.lip_ids, size=88)
    img = render_mouth(_pose(rig, [0.0, 1.0]), mesh, cam)
    assert img.shape == (2, 88, 88) and img.min() >= 0 and img.max() <= 1
    # The opening (mouth interior, albedo 0.07) replaces lips (0.52) over a good part of the crop:
    # about 15% of the pixels changing by ~0.3 gives ~0.05; 0.03 is well above rendering noise.
    diff = (img[1] - img[0]).abs().mean()
    assert diff > 0.03, diff
    dark = lambda im: (im < 0.1).float().mean()  # noqa: E731
    assert dark(img[1]) > dark(img[0]) + 0.05


@pytest.mark.parametrize(
    "verts, faces, size, match",
    [
        (torch.zeros(1, 3, 3), torch.tensor([[0, 1, 3]]), 8, "index vertices 0..2"),
        (torch.full((1, 3, 3), float("nan")), torch.tensor([[0, 1, 2]]), 8, "non-finite"),
        (torch.zeros(0, 3, 3), torch.tensor([[0, 1, 2]]), 8, "empty batch"),
        (torch.zeros(1, 3, 3), torch.tensor([[0, 1, 2]]), 0, "image_size must be > 0"),
        (torch.zeros(3, 3), torch.tensor([[0, 1, 2]]), 8, r"\(B, V, 3\)"),
        (torch.zeros(1, 3, 3), torch.tensor([[0.0, 1, 2]]), 8, "integer"),
    ],
)
def test_bad_inputs_raise(verts, faces, size, match):
    with pytest.raises(ValueError, match=match):
        rasterize(verts, faces, RasterSettings(size))


def test_bad_camera_and_renderer_inputs():
    with pytest.raises(ValueError, match="> 0"):
        OrthoCamera((0.0, 0.0), 1.0, 1.0, 0, 8)
    with pytest.raises(ValueError, match="lip_ids is empty"):
        mouth_camera(np.zeros((4, 3)), [])
    r = MeshRenderer(OrthoCamera((0.0, 0.0), 1.0, 1.0, 8, 8))
    with pytest.raises(ValueError, match="albedo"):
        r(torch.zeros(1, 3, 3), torch.tensor([[0, 1, 2]]), torch.zeros(4))


def test_image_loss_alone_opens_a_closed_mouth(face):
    """Gradient descent on the vertices, with nothing but an image loss against an open-mouth render.

    The update is preconditioned by (I + 20 L)^-1 (L: the mesh's graph Laplacian; "large steps",
    Nicolet et al. 2021), so neighbouring vertices move together, and the loss compares blurred images
    (sigma 3 px), so a 14 mm target is within reach of the edges' gradients.
    """
    mesh, rig, faces, _ = face
    closed, target = _pose(rig, [0.0, 0.8]).double()
    albedo = torch.as_tensor(mesh.albedo, dtype=torch.float64)
    n = len(closed)
    edges = faces[:, [[0, 1], [1, 2], [2, 0]]].reshape(-1, 2)
    adjacency = torch.zeros(n, n, dtype=torch.float64)
    adjacency[edges[:, 0], edges[:, 1]] = adjacency[edges[:, 1], edges[:, 0]] = 1
    precondition = torch.linalg.inv(torch.eye(n, dtype=torch.float64) + 20 * (torch.diag(adjacency.sum(1)) - adjacency))
    renderer = MeshRenderer(mouth_camera(mesh.vertices, mesh.lip_ids, 64), RasterSettings(64))
    with torch.no_grad():
        goal = gaussian_blur(renderer(target[None], faces, albedo), 3.0)
    u = torch.zeros(n, 3, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adam([u], lr=1e-3)
    for _ in range(50):
        loss = (gaussian_blur(renderer((closed + precondition @ u)[None], faces, albedo), 3.0) - goal).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    fitted = (closed + precondition @ u).detach().numpy()
    start, goal_opening = lip_opening(closed.numpy()), lip_opening(target.numpy())
    assert lip_opening(fitted) - start >= 0.5 * (goal_opening - start), (start, lip_opening(fitted), goal_opening)
