"""L_av's mouth render at a lower rasterizer resolution (MouthView.render_size): pixels repeated to the full
size, what the expert sees after its 2x pooling nearly unchanged, gradients intact."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from avguide.face.rig import Rig
from avguide.face.template import build_face
from avguide.render.mouth import MouthView


def _clip(mesh, n=5):
    params = np.zeros((n, 8), np.float32)
    params[:, 0] = np.linspace(0, 1, n)  # the jaw opens
    return torch.as_tensor(Rig(mesh).pose(params), dtype=torch.float32)


def test_render_size_repeats_a_lower_resolution_render():
    mesh = build_face()
    clip = _clip(mesh)
    full = MouthView(mesh, size=88).clip(clip, mesh.vertices)
    low = MouthView(mesh, size=44).clip(clip, mesh.vertices)
    half = MouthView(mesh, size=88, render_size=44).clip(clip, mesh.vertices)
    assert half.shape == full.shape == (5, 88, 88)
    assert torch.equal(half[:, ::2, ::2], low) and torch.equal(half[:, 1::2, 1::2], low)
    # the expert's 2x average pooling of the full render differs from the half-size render by the
    # anti-aliasing of edges only (measured: mean 0.017), well below what the jaw's motion changes (0.057)
    pooled = F.avg_pool2d(full[:, None], 2)[:, 0]
    assert (pooled - low).abs().mean() < 0.4 * (low - low[:1]).abs().mean()
    shifted = F.avg_pool2d(full[:, None, 1:-1, 1:-1], 2)[:, 0]  # the grid off by one pixel of 88: far worse
    assert (shifted - low[:, :-1, :-1]).abs().mean() > 1.5 * (pooled - low).abs().mean()


def test_render_size_passes_gradients_and_checks_its_value():
    mesh = build_face()
    clip = _clip(mesh, 3).requires_grad_(True)
    MouthView(mesh, size=32, render_size=16).clip(clip, mesh.vertices).square().sum().backward()
    assert clip.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="render_size"):
        MouthView(mesh, size=32, render_size=12)
