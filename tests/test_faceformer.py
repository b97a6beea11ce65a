"""FaceFormer: shapes, padding, the key/value cache, checkpoints, the pretrained-encoder error path."""

import pytest
import torch

from avguide.models.checkpoint import load_checkpoint, save_checkpoint
from avguide.models.faceformer import (
    FaceFormer,
    FaceFormerConfig,
    biased_causal_mask,
    load_wav2vec2,
    periodic_positional_encoding,
)

V = 40


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = FaceFormer(FaceFormerConfig(n_vertices=V, n_subjects=3, period=5, max_frames=200)).eval()
    torch.nn.init.normal_(m.motion_out.weight, std=0.05)  # a trained-looking output layer, not all zeros
    return m


def batch(lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    n = torch.tensor(lengths)
    samples = (n * 16000 / 25).long()
    audio = torch.zeros(len(n), int(samples.max()))
    for b, s in enumerate(samples):
        audio[b, :s] = 0.1 * torch.randn(int(s), generator=g)
    vertices = torch.zeros(len(n), int(n.max()), V, 3)
    for b, t in enumerate(n):
        vertices[b, :t] = 0.01 * torch.randn(int(t), V, 3, generator=g)
    return audio, samples, n, torch.zeros(len(n), V, 3), torch.arange(len(n)) % 3, vertices


def test_shapes_in_both_modes(model):
    audio, samples, n, templates, ids, vertices = batch([20, 14])
    with torch.no_grad():
        assert model(audio, samples, n, templates, ids, vertices).shape == (2, 20, V, 3)
    assert model.predict(audio, samples, n, templates, ids).shape == (2, 20, V, 3)


def test_padding_does_not_change_unpadded_items(model):
    audio, samples, n, templates, ids, vertices = batch([20, 14])
    with torch.no_grad():
        together = model(audio, samples, n, templates, ids, vertices)
        alone = model(audio[1:, : samples[1]], samples[1:], n[1:], templates[1:], ids[1:], vertices[1:, :14])
    assert torch.allclose(together[1, :14], alone[0], atol=1e-5)
    together = model.predict(audio, samples, n, templates, ids)
    alone = model.predict(audio[1:, : samples[1]], samples[1:], n[1:], templates[1:], ids[1:])
    assert torch.allclose(together[1, :14], alone[0], atol=1e-5)


@pytest.mark.slow
def test_cached_inference_equals_the_uncached_loop(model):
    audio, samples, n, templates, ids, _ = batch([60, 45], seed=1)
    cached = model.predict(audio, samples, n, templates, ids, use_cache=True)
    uncached = model.predict(audio, samples, n, templates, ids, use_cache=False)
    assert (cached - uncached).abs().max() < 1e-5
    assert cached.abs().max() > 1e-3  # it does animate


def test_teacher_forcing_matches_inference_on_its_own_output(model):
    """Fed its own predictions as the shifted targets, one teacher-forced pass reproduces them."""
    audio, samples, n, templates, ids, _ = batch([30], seed=2)
    predicted = model.predict(audio, samples, n, templates, ids)
    with torch.no_grad():
        forced = model(audio, samples, n, templates, ids, predicted)
    assert torch.allclose(forced, predicted, atol=1e-5)


def test_masks_and_positional_encoding():
    bias = biased_causal_mask(n_heads=2, n=7, period=3)
    slope0 = bias[0, 3, 0].abs()  # distance 3 -> one period back
    assert bias[0, 3, 0] == -slope0 and bias[0, 2, 0] == 0 and bias[0, 6, 0] == -2 * slope0
    assert torch.isinf(bias[:, 0, 1:]).all() and (bias[1, 5, 0] > bias[0, 5, 0])  # heads have their own slopes
    pe = periodic_positional_encoding(10, 8, period=4)
    assert torch.equal(pe[1], pe[5]) and not torch.equal(pe[1], pe[2])


@pytest.mark.slow
def test_training_lowers_the_loss():
    torch.manual_seed(1)
    m = FaceFormer(FaceFormerConfig(n_vertices=V, n_subjects=3, period=5, max_frames=200, dropout=0.0))
    audio, samples, n, templates, ids, vertices = batch([16, 12])
    b = dict(
        audio=audio,
        audio_lengths=samples,
        n_frames=n,
        templates=templates,
        subject_ids=ids,
        vertices=vertices,
        frame_mask=torch.arange(16)[None] < n[:, None],
    )
    opt = torch.optim.Adam([p for p in m.parameters() if p.requires_grad], lr=3e-3)
    first = m.loss(b).item()
    for _ in range(60):
        loss = m.loss(b)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first


def test_checkpoint_round_trip(model, tmp_path):
    audio, samples, n, templates, ids, _ = batch([12])
    save_checkpoint(model, tmp_path / "ff")
    again = load_checkpoint(FaceFormer, FaceFormerConfig, tmp_path / "ff").eval()
    assert torch.equal(
        model.predict(audio, samples, n, templates, ids), again.predict(audio, samples, n, templates, ids)
    )
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_checkpoint(FaceFormer, FaceFormerConfig, tmp_path / "nothing")


def test_pretrained_encoder_needs_a_complete_local_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such folder"):
        load_wav2vec2(tmp_path / "wav2vec2-base-960h")
    (tmp_path / "w2v").mkdir()
    (tmp_path / "w2v" / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="missing model.safetensors or pytorch_model.bin"):
        FaceFormer(FaceFormerConfig(n_vertices=V, n_subjects=1, pretrained_audio=str(tmp_path / "w2v")))


def test_unseen_subjects_must_borrow_a_training_style(model):
    audio, samples, n, templates, _, _ = batch([10])
    with pytest.raises(ValueError, match="training styles 0..2"):
        model.predict(audio, samples, n, templates, torch.tensor([-1]))


def test_pretrained_encoder_loads_from_a_ctc_folder_and_the_animator_rebuilds_without_it(tmp_path):
    """A Wav2Vec2ForCTC folder (wav2vec2-base-960h's format, and pretrain_audio's) gives FaceFormer its encoder
    weights with the CNN fixed; the saved animator records the shape and reloads after the folder is gone."""
    import shutil

    from avguide.training.audio import speech_model

    torch.manual_seed(1)
    ctc = speech_model({"hidden_size": 32, "intermediate_size": 64})
    ctc.save_pretrained(tmp_path / "w2v", safe_serialization=True)
    m = FaceFormer(FaceFormerConfig(n_vertices=V, n_subjects=1, pretrained_audio=str(tmp_path / "w2v")))
    assert all(module.training for module in m.modules())  # as any new module: training mode until .eval()
    m.eval()
    w2v = m.audio_encoder.wav2vec2
    assert torch.equal(
        w2v.encoder.layers[0].attention.q_proj.weight, ctc.wav2vec2.encoder.layers[0].attention.q_proj.weight
    )
    assert m.cfg.audio["hidden_size"] == 32
    assert not any(p.requires_grad for p in w2v.feature_extractor.parameters())
    assert all(p.requires_grad for p in w2v.encoder.parameters())
    torch.nn.init.normal_(m.motion_out.weight, std=0.05)  # so the prediction depends on the audio
    save_checkpoint(m, tmp_path / "ff")
    shutil.rmtree(tmp_path / "w2v")
    again = load_checkpoint(FaceFormer, FaceFormerConfig, tmp_path / "ff").eval()
    assert not any(p.requires_grad for p in again.audio_encoder.wav2vec2.feature_extractor.parameters())
    audio, samples, n, templates, _, _ = batch([12])
    ids = torch.zeros(1, dtype=torch.long)
    assert torch.equal(m.predict(audio, samples, n, templates, ids), again.predict(audio, samples, n, templates, ids))
