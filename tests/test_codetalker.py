"""CodeTalker: shapes, padding, the causal VQ decoder's cache, the two training stages, checkpoints."""

import pytest
import torch
from test_faceformer import V, batch

from avguide.models.checkpoint import load_checkpoint, save_checkpoint
from avguide.models.codetalker import CodeTalker, CodeTalkerConfig, Quantizer


def as_dict(audio, samples, n, templates, ids, vertices):
    return dict(
        audio=audio,
        audio_lengths=samples,
        n_frames=n,
        templates=templates,
        subject_ids=ids,
        vertices=vertices,
        frame_mask=torch.arange(vertices.shape[1])[None] < n[:, None],
    )


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = CodeTalker(CodeTalkerConfig(n_vertices=V, n_subjects=3, period=5, max_frames=200, n_codes=32)).eval()
    with torch.no_grad():  # a trained-looking model: codes spread out, an output layer that moves vertices
        m.quantizer.codebook.weight.normal_()
        m.vq_out.weight.normal_(std=0.05)
    return m


def test_shapes(model):
    audio, samples, n, templates, ids, _ = batch([20, 14])
    assert model.predict(audio, samples, n, templates, ids).shape == (2, 20, V, 3)


def test_padding_does_not_change_unpadded_items(model):
    args = batch([20, 14])
    audio, samples, n, templates, ids, vertices = args
    together = model.predict(audio, samples, n, templates, ids)
    alone = model.predict(audio[1:, : samples[1]], samples[1:], n[1:], templates[1:], ids[1:])
    assert torch.allclose(together[1, :14], alone[0], atol=1e-5)
    with torch.no_grad():  # the VQ encoder is not causal: padded frames must be masked out of its attention
        b = as_dict(*args)
        z_together = model.encode_motion(model.scaled_offsets(b), b["frame_mask"])
        one = as_dict(audio[1:, : samples[1]], samples[1:], n[1:], templates[1:], ids[1:], vertices[1:, :14])
        z_alone = model.encode_motion(model.scaled_offsets(one), one["frame_mask"])
    assert torch.allclose(z_together[1, :14], z_alone[0], atol=1e-5)


def test_cached_inference_equals_the_uncached_loop(model):
    audio, samples, n, templates, ids, _ = batch([50, 35], seed=1)
    cached = model.predict(audio, samples, n, templates, ids, use_cache=True)
    uncached = model.predict(audio, samples, n, templates, ids, use_cache=False)
    assert (cached - uncached).abs().max() < 1e-5
    assert cached.abs().max() > 1e-3  # it does animate


def test_quantizer_picks_the_nearest_code_and_passes_gradients_straight_through():
    q = Quantizer(3, 2)
    with torch.no_grad():
        q.codebook.weight.copy_(torch.tensor([[0.0, 0.0], [1.0, 1.0], [-1.0, 2.0]]))
    z = torch.tensor([[0.9, 1.2], [-0.8, 1.7], [0.1, -0.1]], requires_grad=True)
    st, codes, idx = q(z)
    assert idx.tolist() == [1, 2, 0] and torch.equal(codes, q.codebook.weight[[1, 2, 0]])
    st.sum().backward()
    assert torch.equal(z.grad, torch.ones_like(z))


@pytest.mark.slow
def test_stages_train_their_own_parameters():
    torch.manual_seed(1)
    m = CodeTalker(CodeTalkerConfig(n_vertices=V, n_subjects=3, period=5, max_frames=200, dropout=0.0))
    audio, samples, n, templates, ids, _ = batch([16, 12])
    t = torch.arange(16.0)[None, :, None, None]
    basis = 0.01 * torch.randn(2, 1, 1, V, 3)  # low-rank smooth motion, as faces move: a VQ-VAE can learn it
    vertices = basis[0] * torch.sin(0.4 * t) + basis[1] * torch.cos(
        0.7 * t + torch.tensor([0.0, 1.0])[:, None, None, None]
    )
    b = as_dict(audio, samples, n, templates, ids, vertices)
    for stage, trained, fixed in (
        (1, m.quantizer.codebook.weight, m.style.weight),
        (2, m.style.weight, m.vq_out.weight),
    ):
        m.set_stage(stage)
        assert trained.requires_grad and not fixed.requires_grad
        before = fixed.detach().clone()
        opt = torch.optim.Adam([p for p in m.parameters() if p.requires_grad], lr=3e-3)
        first = m.loss(b).item()
        for _ in range(60):
            loss = m.loss(b)
            opt.zero_grad()
            loss.backward()
            opt.step()
        assert loss.item() < 0.5 * first, f"stage {stage}: {first} -> {loss.item()}"
        assert torch.equal(fixed, before)
        if stage == 1:  # the codes reconstruct the motion
            with torch.no_grad():
                motion = m.scaled_offsets(b)
                recon = m.decode_codes(m.quantizer(m.encode_motion(motion, b["frame_mask"]))[0])
            assert ((recon - motion)[:, :12] ** 2).mean() < 0.1 * (motion**2).mean()
    assert m.audio_encoder.wav2vec2.feature_extractor.conv_layers[0].conv.weight.requires_grad  # a random CNN learns
    with pytest.raises(ValueError, match="stages"):
        m.set_stage(3)


def test_autoregressive_training_mode_is_differentiable():
    torch.manual_seed(2)
    m = CodeTalker(CodeTalkerConfig(n_vertices=V, n_subjects=3, period=5, max_frames=200, teacher_forcing=False))
    m.loss(as_dict(*batch([10, 8]))).backward()
    assert m.style.weight.grad.abs().sum() > 0 and m.motion_map.weight.grad.abs().sum() > 0


def test_checkpoint_round_trip(model, tmp_path):
    audio, samples, n, templates, ids, _ = batch([12])
    save_checkpoint(model, tmp_path / "ct")
    again = load_checkpoint(CodeTalker, CodeTalkerConfig, tmp_path / "ct").eval()
    assert torch.equal(
        model.predict(audio, samples, n, templates, ids), again.predict(audio, samples, n, templates, ids)
    )


def test_the_same_weights_are_the_same_bytes(model, tmp_path):
    """Same seed, same bytes: the safetensors header (with its metadata) must not vary between saves."""
    files = [save_checkpoint(model, tmp_path / f"ct{i}") / "model.safetensors" for i in range(8)]
    assert len({f.read_bytes() for f in files}) == 1


def test_unseen_subjects_must_borrow_a_training_style(model):
    audio, samples, n, templates, _, _ = batch([10])
    with pytest.raises(ValueError, match="training styles 0..2"):
        model.predict(audio, samples, n, templates, torch.tensor([-1]))
