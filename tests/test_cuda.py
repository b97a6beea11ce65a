"""On a CUDA device the renderer and an animator give what they give on the CPU (skipped without one)."""

import numpy as np
import pytest
import torch

from avguide.face.rig import PARAMETERS, Rig
from avguide.face.template import build_face
from avguide.models.faceformer import FaceFormer, FaceFormerConfig
from avguide.render import MeshRenderer, RasterSettings, mouth_camera

pytestmark = pytest.mark.cuda


def test_the_mouth_render_and_its_gradient_match_the_cpu():
    mesh = build_face()
    params = np.zeros((4, len(PARAMETERS)))
    params[:, :6] = np.random.default_rng(0).random((4, 6)) * [1, 1, 1, 0.3, 0.3, 1]
    verts = torch.from_numpy(Rig(mesh).pose(params)).float()
    faces, albedo = torch.from_numpy(mesh.faces), torch.from_numpy(mesh.albedo).float()
    renderer = MeshRenderer(mouth_camera(mesh.vertices, mesh.lip_ids, 44), RasterSettings(44))

    def run(device):
        v = verts.to(device).requires_grad_(True)
        image = renderer(v, faces.to(device), albedo.to(device))
        image.square().mean().backward()
        return image.detach().cpu(), v.grad.cpu()

    (cpu_image, cpu_grad), (gpu_image, gpu_grad) = run("cpu"), run("cuda")
    assert torch.allclose(cpu_image, gpu_image, atol=1e-4)
    assert torch.allclose(cpu_grad, gpu_grad, atol=1e-4 * cpu_grad.abs().max().item())


def test_faceformer_predicts_on_the_device_of_its_inputs():
    torch.manual_seed(0)
    model = FaceFormer(FaceFormerConfig(n_vertices=40, n_subjects=3, period=5, max_frames=200)).eval()
    n = torch.tensor([20, 14])
    samples = (n * 16000 / 25).long()
    audio = 0.1 * torch.randn(2, int(samples.max()))
    templates, ids = torch.zeros(2, 40, 3), torch.tensor([0, 1])
    cpu = model.predict(audio, samples, n, templates, ids)
    gpu = model.cuda().predict(audio.cuda(), samples.cuda(), n.cuda(), templates.cuda(), ids.cuda())
    assert gpu.device.type == "cuda"
    assert torch.allclose(cpu, gpu.cpu(), atol=1e-4)
