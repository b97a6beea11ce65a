"""The speech–lip sync critic: it learns timing, its loss trains through the offsets, it saves, it is seeded."""

import json

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from avguide.data.corpus import Corpus
from avguide.data.dataset import TalkingFaceDataset, collate
from avguide.models.critic import CriticConfig, SyncCritic
from avguide.training.critic import lip_offsets, load_critic, shifted_similarity, train_critic

torch.set_num_threads(1)
SMALL = {"dim": 32, "hidden": 64, "n_mels": 24}
EPOCHS = 20


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from avguide.data.synthetic import SyntheticConfig, build_corpus

    root = build_corpus(
        tmp_path_factory.mktemp("corpus"),
        SyntheticConfig(seed=2, subjects={"train": 2, "val": 1, "test": 1}, sentences_per_subject=2),
        progress=False,
    )
    return Corpus(root)


@pytest.fixture(scope="module")
def trained(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("critic")
    metrics = train_critic(corpus, out, epochs=EPOCHS, lr=3e-3, batch_size=2, cfg_overrides=SMALL, progress=False)
    return out, metrics


@pytest.fixture(scope="module")
def batch(corpus):
    """Every training clip in one batch, with its lip offsets."""
    b = next(iter(DataLoader(TalkingFaceDataset(corpus, "train"), batch_size=64, collate_fn=collate)))
    b["offsets"] = lip_offsets(b["vertices"], b["templates"], corpus.topology.lip_ids)
    return b


def untrained(corpus):
    torch.manual_seed(0)
    return SyncCritic(CriticConfig(n_lip_vertices=len(corpus.topology.lip_ids), **SMALL)).eval()


def margin(model, b, shift):
    """Mean cosine of true (lip, audio) window pairs minus that of pairs with the audio `shift` frames off (±)."""
    with torch.no_grad():
        n = b["n_frames"]
        sim = model.similarity(model.embed_lips(b["offsets"], n), model.embed_audio(b["audio"], b["audio_lengths"], n))
    true = shifted_similarity(sim, n, 0)
    off = [shifted_similarity(sim, n, s) for s in (shift, -shift)]
    return true[0] / true[1] - sum(s for s, _ in off) / sum(c for _, c in off)


def delayed(offsets, n_frames, k):
    """Lip motion k frames late: frame t shows frame t - k (the first frame held), within each item's frames."""
    t = torch.arange(offsets.shape[1])
    idx = (t[None] - k).clamp(min=0)
    idx = torch.minimum(idx, n_frames[:, None] - 1)
    return offsets[torch.arange(len(offsets))[:, None], idx]


def test_trained_critic_scores_true_timing_above_shifted(corpus, trained, batch):
    out, metrics = trained
    model = load_critic(out / "model")
    before, after = margin(untrained(corpus), batch, 4), margin(model, batch, 4)
    assert after > 0.2, after  # cosine units: true windows clearly above windows 4 frames (0.16 s) off
    assert after > before + 0.2, (before, after)
    assert margin(model, batch, 6) > 0.2
    # the metrics, on the unseen val subject: well above chance
    assert json.loads((out / "metrics.json").read_text()) == metrics
    assert set(metrics) == {
        "loss",
        "accuracy",
        "accuracy_chance",
        "shift_margin_3",
        "shift_margin_5",
        "train_loss",
        "train_s",
    }
    assert 0 < 3 * metrics["accuracy_chance"] < metrics["accuracy"] <= 1


def test_loss_is_differentiable_and_prefers_true_timing(trained, batch):
    model = load_critic(trained[0] / "model")
    assert not any(p.requires_grad for p in model.parameters()) and not model.training
    offsets = batch["offsets"].clone().requires_grad_(True)
    args = batch["audio"], batch["audio_lengths"], batch["n_frames"]
    loss = model.loss(offsets, *args)
    loss.backward()
    grad = offsets.grad
    assert torch.isfinite(loss) and torch.isfinite(grad).all()
    real = torch.arange(grad.shape[1])[None] < batch["n_frames"][:, None]
    assert grad[real].abs().sum() > 0 and grad[~real].abs().sum() == 0  # padding gets no gradient
    with torch.no_grad():
        for k in (4, 6):
            assert model.loss(delayed(batch["offsets"], batch["n_frames"], k), *args) > loss + 0.5, k
        # a still face (no lip motion) is not a way out
        assert model.loss(torch.zeros_like(batch["offsets"]), *args) > loss + 0.5
        assert model.accuracy(batch["offsets"], *args) > 0.5


def test_save_load_and_seeded_training(corpus, trained, batch, tmp_path):
    out, _ = trained
    model = load_critic(out / "model")
    again = load_critic(out / "model")
    args = batch["offsets"], batch["audio"], batch["audio_lengths"], batch["n_frames"]
    assert torch.equal(model.scores(*args), again.scores(*args))

    def run(name, seed):
        train_critic(corpus, tmp_path / name, epochs=1, batch_size=4, seed=seed, cfg_overrides=SMALL, progress=False)
        return (tmp_path / name / "model" / "model.safetensors").read_bytes()

    first = run("a", 0)
    assert run("b", 0) == first
    assert run("c", 1) != first
    assert json.loads((tmp_path / "a" / "model" / "config.json").read_text())["dim"] == SMALL["dim"]


def test_padding_and_candidates(corpus, batch):
    """An item's scores do not depend on how much it is padded; padding and near neighbours are not candidates."""
    model = untrained(corpus)
    b = batch
    n = b["n_frames"]
    i = int(n.argmin())
    with torch.no_grad():
        full = model.scores(b["offsets"], b["audio"], b["audio_lengths"], n)[i, : n[i], : n[i]]
        alone = model.scores(
            b["offsets"][i : i + 1, : n[i]],
            b["audio"][i : i + 1, : b["audio_lengths"][i]],
            b["audio_lengths"][i : i + 1],
            n[i : i + 1],
        )[0]
    torch.testing.assert_close(full, alone, rtol=1e-4, atol=1e-4)
    model.cfg.exclude = 3
    logits = model.logits(torch.randn(1, 6, 4), torch.randn(1, 6, 4), torch.tensor([5]))[0]
    finite = torch.isfinite(logits)
    assert finite.diagonal()[:5].all() and not finite[5].any() and not finite[:, 5].any()
    assert not finite[0, 1:3].any() and finite[0, 3:5].all() and not finite[4, 2:4].any()


def test_bad_inputs_name_the_sizes(corpus, batch):
    model = untrained(corpus)
    n_lips = len(corpus.topology.lip_ids)
    with pytest.raises(ValueError, match=rf"{n_lips}.*{n_lips - 1}"):
        model.embed_lips(batch["offsets"][:, :, 1:], batch["n_frames"])
    with pytest.raises(ValueError, match="audio"):
        model.embed_audio(batch["audio"][:1], batch["audio_lengths"], batch["n_frames"])
    with pytest.raises(ValueError, match="temperature"):
        CriticConfig(n_lip_vertices=4, temperature=0.0)


def test_the_frozen_critic_term_tells_true_lips_from_still_and_late_ones(corpus, trained):
    """avguide.training.guide.informativeness with the critic term: the ground truth scores best, a still face and
    lips 4 frames late worse, by more than the spread of the term's draws (none: the critic has no randomness)."""
    from avguide.losses import CriticTerm
    from avguide.training.guide import informativeness

    term = CriticTerm(load_critic(trained[0] / "model"), corpus.topology.lip_ids)
    rows = corpus.split("train")
    truth = [corpus.vertices(u) for u in rows["utterance"]]
    still = [np.broadcast_to(corpus.templates[s], v.shape) for s, v in zip(rows["subject"], truth)]
    late = [np.concatenate([v[:1].repeat(4, 0), v[:-4]]) for v in truth]
    values = informativeness(term, corpus, {"truth": truth, "still": still, "late": late}, split="train", draws=2)
    mean = values.groupby("variant")["value"].mean()
    assert values.groupby("variant")["value"].std().max() == 0.0
    assert mean["truth"] + 0.5 < min(mean["still"], mean["late"]), mean.to_dict()
