"""L_av's render with a frame stride: every k-th frame rendered exactly, held in between, padding zero."""
import numpy as np
import pytest
import torch

from avguide.face.rig import Rig
from avguide.face.template import build_face
from avguide.losses import AVGuidance
from avguide.render.mouth import MouthView


def test_frame_stride_holds_the_rendered_frames():
    mesh = build_face()
    params = np.zeros((7, 8), np.float32)
    params[:, 0] = np.linspace(0, 1, 7)
    clip = torch.as_tensor(Rig(mesh).pose(params), dtype=torch.float32)
    vertices = torch.stack([clip, clip.flip(0)])  # (2, 7, V, 3); the second clip is 5 frames long
    templates = torch.as_tensor(np.stack([mesh.vertices] * 2), dtype=torch.float32)
    n_frames = torch.tensor([7, 5])
    view = MouthView(mesh, size=32)
    every = AVGuidance(torch.nn.Linear(1, 1), view).render(vertices, templates, n_frames)
    held = AVGuidance(torch.nn.Linear(1, 1), view, frame_stride=3).render(vertices, templates, n_frames)
    assert held.shape == every.shape == (2, 7, 32, 32)
    for b, n in enumerate(n_frames.tolist()):
        for t in range(n):
            assert torch.allclose(held[b, t], every[b, t - t % 3])
        assert (held[b, n:] == 0).all()
    with pytest.raises(ValueError, match="frame_stride"):
        AVGuidance(torch.nn.Linear(1, 1), view, frame_stride=0)
