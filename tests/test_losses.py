"""The animator losses: vertex terms with padding; the perceptual terms' gradients through the renderer, their
frozen readers really frozen under Lightning, the detached control, calibration of λ, the gradient projection."""

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from conftest import TINY_READER
from torch.utils.data import DataLoader

from avguide.data.text import VOCAB
from avguide.face.rig import Rig
from avguide.face.template import build_face
from avguide.losses import (
    FeatureTerm,
    LossSetting,
    MotionBasis,
    ReaderTerm,
    animator_loss,
    calibrate,
    vertex_mse,
)
from avguide.models.expert import Expert, ExpertConfig
from avguide.render.mouth import MouthView

TINY_EXPERT = {k: v for k, v in TINY_READER.items() if k not in ("crop_size", "video_pool")}


def test_vertex_mse_ignores_padding_and_selects_vertices():
    pred = torch.zeros(2, 3, 4, 3)
    true = torch.zeros(2, 3, 4, 3)
    true[0, :, 1] = 1.0  # vertex 1 off by 1 in x, y, z on every frame of item 0
    true[1, 2] = 100.0  # item 1's third frame is padding
    mask = torch.tensor([[True, True, True], [True, True, False]])
    assert vertex_mse(pred, true, mask).item() == pytest.approx(3 * 3 / (5 * 4 * 3))
    assert vertex_mse(pred, true, mask, ids=[1]).item() == pytest.approx(3 * 3 / (5 * 1 * 3))
    assert vertex_mse(pred, true, mask, ids=[0, 2]).item() == 0.0


@pytest.fixture(scope="module")
def face():
    return build_face()


def mouth_batch(face, frames=6):
    """A speaking mouth: the rig opens and closes the jaw; a one-word transcript."""
    params = np.zeros((frames, 8), np.float32)
    params[:, 0] = 0.5 + 0.5 * np.sin(np.linspace(0, 3, frames))
    vertices = torch.from_numpy(Rig(face).pose(params)).float()[None]
    tokens = torch.tensor([VOCAB.encode("bin")])
    g = torch.Generator().manual_seed(0)
    return {
        "vertices": vertices,
        "templates": torch.from_numpy(face.vertices).float()[None],
        "n_frames": torch.tensor([frames]),
        "frame_mask": torch.ones(1, frames, dtype=torch.bool),
        "audio": 0.1 * torch.randn(1, frames * 640, generator=g),
        "audio_lengths": torch.tensor([frames * 640]),
        "tokens": tokens,
        "token_lengths": torch.tensor([3]),
        "utterances": ["u0"],
        "subject_ids": torch.tensor([0]),
    }


class Fixed(torch.nn.Module):
    """An 'animator' whose prediction is a free tensor: the gradient of each loss lands on it directly."""

    def __init__(self, vertices):
        super().__init__()
        self.vertices = torch.nn.Parameter(vertices.clone())

    def training_prediction(self, batch):
        return self.vertices, self.vertices.new_zeros(())


def reader_term(face, seed=0, **setting):
    torch.manual_seed(seed)
    expert = Expert(ExpertConfig(mode="av", **{**TINY_EXPERT, "dropout": 0.3}))
    return ReaderTerm(expert, MouthView(face), LossSetting(rlv=1.0, term="reader", weight=1.0, **setting))


def test_reader_gradient_is_concentrated_on_the_lips(face):
    """Through the renderer only what the mouth camera sees gets a gradient: the lips most, then the teeth and the
    band of skin around the mouth (an untrained expert spreads its attention over the whole crop: 4.6-5.3 over
    seeds)."""
    batch = mouth_batch(face)
    term = reader_term(face)
    pred = (batch["vertices"] + 0.001).requires_grad_()
    out = term(pred, batch)
    assert torch.isfinite(out["value"]) and out["ctc"] > 0 and out["ce"] > 0
    (grad,) = torch.autograd.grad(out["value"], pred)
    norms = grad[0].norm(dim=-1)
    lips = torch.zeros(norms.shape[-1], dtype=torch.bool)
    lips[torch.as_tensor(face.lip_ids)] = True
    assert norms[:, lips].mean() > 4 * norms[:, ~lips].mean()


def test_weighted_sum_and_diagnostics(face):
    batch = mouth_batch(face, frames=4)
    setting = LossSetting(mse=2.0, rlv=3.0, term="reader", weight=0.5, ctc=0.2, ce=0.8)
    term = ReaderTerm(Expert(ExpertConfig(mode="av", **TINY_EXPERT)), MouthView(face), setting)
    model = Fixed(batch["vertices"] + 0.002)
    t = animator_loss(model, batch, setting, face.lip_ids, term, diagnose=True)
    expected = 2.0 * t["mse"] + 3.0 * t["rlv"] + 0.5 * (0.2 * t["ctc"] + 0.8 * t["ce"])
    assert torch.allclose(t["loss"], expected) and torch.allclose(t["term"], 0.2 * t["ctc"] + 0.8 * t["ce"])
    # the vertex terms pull every lip vertex straight back to the truth: cosine 1
    assert t["cos_vertex"].item() == pytest.approx(1.0, abs=1e-4)
    assert t["ratio_term"] == pytest.approx((t["grad_lip_term"] / t["grad_lip_vertex"]).item())
    t["loss"].backward()
    assert model.vertices.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="term module"):
        animator_loss(model, batch, setting, face.lip_ids, None)


class Frames(torch.utils.data.Dataset):
    def __init__(self, batch, n):
        self.batch, self.n = batch, n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return i


def test_a_frozen_reader_stays_frozen_under_a_lightning_fit(face):
    """update off: evaluation mode on every call (no dropout, no BatchNorm statistics change), no update, though
    Lightning never calls the term's train(); a joint reader trains in training mode at its own learning rate."""
    from avguide.training.animator import AnimatorModule

    batch = mouth_batch(face, frames=4)
    loader = DataLoader(Frames(batch, 3), batch_size=1, collate_fn=lambda _: batch)
    for joint in (False, True):
        term = reader_term(face, seed=2, joint=joint)
        modes = []
        term.model.video_front.register_forward_hook(lambda m, i, o, modes=modes: modes.append(m.training))
        before = {k: v.clone() for k, v in term.model.state_dict().items()}
        setting = term.setting
        module = AnimatorModule(
            Fixed(batch["vertices"] + 0.002), lr=1e-3, setting=setting, term=term, lip_ids=face.lip_ids, term_lr=0.1
        )
        pl.Trainer(
            max_epochs=1,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
        ).fit(module, loader)
        after = term.model.state_dict()
        changed = [k for k in before if not torch.equal(before[k], after[k])]
        bn = [k for k in before if "running_mean" in k]
        assert bn, "the tiny expert has BatchNorm layers"
        if joint:
            assert all(modes) and len(modes) == 3
            assert any("running_mean" in k for k in changed) and any("weight" in k for k in changed)
            groups = module.optimizers().optimizer.param_groups
            assert [g["initial_lr"] for g in groups] == [1e-3, 0.1]
        else:
            assert modes == [False] * 3, "the frozen reader ran in training mode"
            assert changed == [], f"the frozen reader changed: {changed[:3]}"


def test_detached_gives_the_vertices_no_gradient_and_trains_the_reader(face):
    batch = mouth_batch(face, frames=4)
    term = reader_term(face, joint=True, detach=True)
    model = Fixed(batch["vertices"] + 0.002)
    setting = LossSetting(mse=0.0, term="reader", weight=1.0, joint=True, detach=True)
    t = animator_loss(model, batch, setting, face.lip_ids, term)
    t["loss"].backward()
    assert model.vertices.grad is None or torch.count_nonzero(model.vertices.grad) == 0
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in term.model.parameters())


def test_calibration_sets_the_gradient_ratio_of_a_placebo(face):
    """A random frozen reader (the placebo) gets λ such that its lip gradient is grad_ratio times the vertex
    terms' on the calibration batch: the same norm a real reader would get."""
    batch = mouth_batch(face, frames=4)
    model = Fixed(batch["vertices"] + 0.002)
    setting = LossSetting(rlv=1.0, term="reader", reader="random", audio_mask=1.0, grad_ratio=0.3)
    term = reader_term(face, seed=5, reader="random", audio_mask=1.0)
    term.model.eval()  # dropout off: the same draw in calibration and check
    found = calibrate(model, [batch], setting, face.lip_ids, term)
    assert setting.weight == found["weight"] > 0
    t = animator_loss(model, batch, setting, face.lip_ids, term, diagnose=True)
    assert t["ratio_term"].item() == pytest.approx(0.3, rel=1e-4)


def test_feature_matching_is_zero_at_the_truth_and_points_to_it(face):
    batch = mouth_batch(face, frames=4)
    torch.manual_seed(0)
    term = FeatureTerm(
        Expert(ExpertConfig(mode="av", **TINY_EXPERT)), MouthView(face), LossSetting(term="feature", weight=1.0)
    )
    assert term(batch["vertices"], batch)["value"].item() == pytest.approx(0.0, abs=1e-10)
    assert "u0" in term.reference
    pred = (batch["vertices"] + 0.002 * torch.randn_like(batch["vertices"])).requires_grad_()
    value = term(pred, batch)["value"]
    assert value > 0
    value.backward()
    assert pred.grad.abs().sum() > 0


def test_motion_basis_projects_the_gradient_only():
    rng = np.random.default_rng(0)
    motions = rng.normal(size=(2, 12))
    offsets = rng.normal(size=(50, 2)) @ motions
    basis = MotionBasis.of_offsets(offsets, 2)
    x = torch.randn(1, 3, 4, 3, requires_grad=True)
    y = basis.project(x)
    assert torch.equal(y, x)
    g = torch.randn_like(x)
    y.backward(g)
    u = basis.basis.double()
    flat = g.reshape(1, 3, 12).double()
    assert torch.allclose(x.grad.reshape(1, 3, 12).double(), flat @ u @ u.T, atol=1e-5)
    # the projected gradient lies in the span of the motions
    residual = x.grad.reshape(3, 12).double() - (x.grad.reshape(3, 12).double() @ u) @ u.T
    assert residual.abs().max() < 1e-5
    with pytest.raises(ValueError, match="principal motions"):
        MotionBasis.of_offsets(offsets, 0)


@pytest.mark.parametrize(
    "bad, match",
    [
        (dict(term="reader"), "weight > 0 or grad_ratio"),
        (dict(term="vision", weight=1.0), "term must be one of"),
        (dict(term="feature", weight=1.0, joint=True), "only the expert reader"),
        (dict(term="reader", weight=1.0, detach=True), "set joint: true"),
        (dict(term="reader", weight=1.0, audio_mask=1.5), "audio_mask"),
    ],
)
def test_bad_settings_are_refused(bad, match):
    with pytest.raises(ValueError, match=match):
        LossSetting(**bad)


def test_retime_interpolates_linearly_and_passes_the_gradient():
    """retime: 30 fps -> 25 fps keeps the duration (60 frames -> 50), frame k is the input at time k/25 s
    (linearly interpolated), every input frame gets a gradient; equal rates give the input itself."""
    from avguide.render.mouth import retime, retimed_length

    x = torch.arange(60, dtype=torch.float64)[:, None].repeat(1, 3).requires_grad_()
    y = retime(x, 30, 25)
    assert y.shape == (50, 3) and retimed_length(60, 30, 25) == 50
    assert torch.allclose(y[:, 0], torch.arange(50, dtype=torch.float64) * 1.2)
    (grad,) = torch.autograd.grad(y.sum(), x)
    assert (grad[:59] > 0).all() and torch.isclose(grad.sum(), torch.tensor(150.0, dtype=torch.float64))
    assert retime(x, 25, 25) is x
    assert retimed_length(torch.tensor([60, 3]), 30, 25).tolist() == [50, 3]
    assert retime(x, 25, 30).shape[0] == 72


def test_the_reader_term_reads_at_the_readers_frame_rate(face, monkeypatch):
    """A 30 fps animation read by a 25 fps reader (auto-AVSR's rate): the mouth view renders it retimed to 25 fps
    and the reader is told the retimed lengths; the loss is finite and its gradient reaches the vertices. At equal
    rates the view renders exactly what a view without rates renders."""
    batch = mouth_batch(face, frames=12)
    torch.manual_seed(0)
    expert = Expert(ExpertConfig(mode="av", fps=25.0, **TINY_EXPERT))
    seen = {}
    loss = expert.loss

    def spy(video, n_frames, *args, **kwargs):
        seen.update(frames=video.shape[1], n=n_frames.tolist())
        return loss(video, n_frames, *args, **kwargs)

    monkeypatch.setattr(expert, "loss", spy)
    term = ReaderTerm(expert, MouthView(face, rates=(30.0, 25.0)), LossSetting(term="reader", weight=1.0))
    pred = batch["vertices"].clone().requires_grad_()
    out = term(pred, batch)
    assert seen == {"frames": 10, "n": [10]}
    (grad,) = torch.autograd.grad(out["value"], pred)
    assert torch.isfinite(out["value"]) and grad[0][:, face.lip_ids].abs().sum((-1, -2)).gt(0).all()  # every frame
    same = MouthView(face, rates=(25.0, 25.0)).batch(batch["vertices"], batch["templates"], batch["n_frames"])
    assert torch.equal(same, MouthView(face).batch(batch["vertices"], batch["templates"], batch["n_frames"]))
