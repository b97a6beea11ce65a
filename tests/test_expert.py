"""The lip-reading expert: padded losses, gradients into the video, decoding, checkpoints and reader folders (with
their decoding settings), resume, augmentation, and (on a toy audio-visual task) that the AV model reads the video
when the audio is masked."""

import json

import numpy as np
import pytest
import torch
from conftest import TINY_READER
from torch.utils.data import DataLoader

from avguide.data.avdataset import collate_av
from avguide.data.text import VOCAB
from avguide.metrics import cer, wer
from avguide.models.augment import AugmentConfig, add_noise, augment_av, center_crop, random_crop, time_mask
from avguide.models.checkpoint import load_checkpoint, save_checkpoint
from avguide.models.expert import DECODING_FILE, Decoding, Expert, ExpertConfig, load_expert, save_reader
from avguide.training.animator import make_trainer
from avguide.training.expert import ExpertModule, mask_audio, shuffle_video, transcribe_dataset


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: with other processes on the cores, more threads spin against them."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def small(mode="av", **kw):
    torch.manual_seed(0)
    return Expert(ExpertConfig(mode=mode, **{**TINY_READER, **kw}))


def padded(texts, frames, size=24, seed=0):
    """A collate_av batch of random clips (frames[k] frames, 640 samples per frame) for `texts`."""
    g = torch.Generator().manual_seed(seed)
    items = [
        dict(
            utterance=f"u{k}",
            speaker="s",
            video=torch.rand(n, size, size, generator=g),
            audio=0.1 * torch.randn(n * 640, generator=g),
            text=t,
            tokens=torch.tensor(VOCAB.encode(t)),
        )
        for k, (t, n) in enumerate(zip(texts, frames))
    ]
    return items, collate_av(items)


def inputs(batch):
    return batch["video"], batch["video_lengths"], batch["audio"], batch["audio_lengths"]


@pytest.mark.parametrize("mode", ["av", "video", "audio"])
def test_padding_does_not_change_item_losses(mode):
    model = small(mode).eval()
    items, batch = padded(["bin blue", "a", "place red now"], [14, 9, 20])
    full = model.loss(*inputs(batch), batch["tokens"], batch["token_lengths"], reduction="none")
    for k, item in enumerate(items):
        one = collate_av([item])
        alone = model.loss(*inputs(one), one["tokens"], one["token_lengths"], reduction="none")
        for part in ("loss", "ctc", "ce"):
            assert torch.allclose(getattr(full, part)[k], getattr(alone, part)[0], atol=1e-5), (mode, part, k)
    mean = model.loss(*inputs(batch), batch["tokens"], batch["token_lengths"])
    assert torch.allclose(mean.loss, full.loss.mean()) and torch.allclose(mean.loss, 0.1 * mean.ctc + 0.9 * mean.ce)


def test_gradient_reaches_the_video_and_not_its_padding():
    model = small("av").eval()
    _, batch = padded(["bin blue", "set"], [14, 9])
    video = batch["video"].clone().requires_grad_(True)
    out = model.loss(
        video, batch["video_lengths"], batch["audio"], batch["audio_lengths"], batch["tokens"], batch["token_lengths"]
    )
    (0.1 * out.ctc + 0.9 * out.ce).backward()
    g = video.grad
    assert torch.isfinite(g).all() and g[0].abs().sum() > 0 and g[1, :9].abs().sum() > 0
    assert g[1, 9:].abs().sum() == 0


def test_the_stem_is_the_3d_convolution_at_the_valid_frames():
    front = small("video").video_front
    x = torch.randn(3, 11, 24, 24, requires_grad=True)
    lengths = torch.tensor([11, 6, 1])
    valid = torch.arange(11)[None] < lengths[:, None]
    masked = x * valid[:, :, None, None]
    want = front.stem(masked[:, None]).transpose(1, 2)[valid]
    got = front._stem(masked, valid)
    assert got.shape == want.shape == (18, 8, 12, 12)
    assert torch.allclose(got, want, atol=1e-5)
    g = torch.randn_like(got)
    gx, gw = torch.autograd.grad((got * g).sum(), (x, front.stem.weight), retain_graph=True)
    want_gx, want_gw = torch.autograd.grad((want * g).sum(), (x, front.stem.weight))
    assert torch.allclose(gx, want_gx, atol=1e-4) and torch.allclose(gw, want_gw, atol=1e-4)
    assert gx[1, 6:].abs().sum() == 0 and gx[2, 1:].abs().sum() == 0 and gx[0].abs().sum() > 0


def test_audio_only_mode_infers_the_frame_count():
    model = small("audio").eval()
    enc, n = model.encode(audio=torch.zeros(2, 16000), audio_lengths=torch.tensor([16000, 8000]))
    assert n.tolist() == [25, 13] and enc.shape[1] == 25
    with pytest.raises(ValueError, match="needs video and audio"):
        small("av").encode(audio=torch.zeros(1, 800))


def overfit(model, batch, steps=150, lr=3e-3):
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        out = model.loss(*inputs(batch), batch["tokens"], batch["token_lengths"])
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    return model.eval()


def test_overfitted_minibatch_is_decoded_exactly_greedy_and_beam():
    texts = ["bin blue", "set red at", "pin"]
    _, batch = padded(texts, [16, 18, 10])
    model = overfit(small("audio", ctc_weight=0.3), batch)
    assert model.transcribe(*inputs(batch), beam_size=1) == texts
    assert model.transcribe(*inputs(batch), beam_size=4) == texts
    assert model.transcribe(*inputs(batch), beam_size=4, ctc_weight=0.0) == texts  # attention decoder alone


def test_checkpoint_round_trip(tmp_path):
    model = small("av", ctc_weight=0.2).eval()
    _, batch = padded(["bin blue"], [12])
    save_checkpoint(model, tmp_path / "m")
    again = load_checkpoint(Expert, ExpertConfig, tmp_path / "m").eval()
    assert again.cfg == model.cfg and again.cfg.resnet_channels == (8, 16)
    a = model.loss(*inputs(batch), batch["tokens"], batch["token_lengths"])
    b = again.loss(*inputs(batch), batch["tokens"], batch["token_lengths"])
    assert torch.equal(a.loss, b.loss)


def test_a_reader_folder_keeps_its_decoding_settings(tmp_path, monkeypatch, caplog):
    """save_reader writes decoding.json beside the weights; load_expert reads it back and every decoder call
    without explicit settings uses it. A folder saved without one decodes with Decoding's defaults."""
    import avguide.models.expert

    model = small("video").eval()
    items, batch = padded(["bin blue", "set"], [14, 9])
    save_reader(model, tmp_path / "judge", Decoding(beam_size=3, ctc_weight=0.6))
    assert json.loads((tmp_path / "judge" / DECODING_FILE).read_text()) == {"beam_size": 3, "ctc_weight": 0.6}
    judge = load_expert(tmp_path / "judge", map_location="cpu")
    assert judge.decoding == Decoding(3, 0.6) and not judge.training
    used, search = [], avguide.models.expert.joint_beam_search
    monkeypatch.setattr(
        avguide.models.expert, "joint_beam_search", lambda m, e, n, k, w: used.append((k, w)) or search(m, e, n, k, w)
    )
    video, lengths = batch["video"], batch["video_lengths"]
    assert judge.transcribe(video, lengths) == judge.transcribe(video, lengths, beam_size=3, ctc_weight=0.6)
    assert transcribe_dataset(judge, items)[1] == judge.transcribe(video, lengths)  # the evaluation's decoding
    assert used == [(3, 0.6)] * 4

    save_checkpoint(model, tmp_path / "old")  # a reader written before decoding settings were saved
    with caplog.at_level("INFO", logger="avguide.models.expert"):
        old = load_expert(tmp_path / "old", map_location="cpu")
    assert old.decoding == Decoding() == Decoding(beam_size=5, ctc_weight=0.3)
    assert f"{tmp_path / 'old' / DECODING_FILE}: not found" in caplog.text
    (tmp_path / "judge" / DECODING_FILE).write_text('{"beam": 3}')
    with pytest.raises(ValueError, match=f"{tmp_path / 'judge' / DECODING_FILE}: expected"):
        load_expert(tmp_path / "judge", map_location="cpu")


def test_read_lips_is_the_one_entry_and_decodes_with_the_saved_settings(tmp_path):
    """avguide.reading.read_lips: the judge without audio, the AV expert with it, each as it transcribes itself
    with its saved settings; the package imports nothing, the model module no longer reads files."""
    import subprocess
    import sys

    import avguide.models.expert
    from avguide.reading import read_lips

    _, batch = padded(["bin blue"], [12], size=32)
    video = (batch["video"][0] * 255).round().to(torch.uint8).numpy()  # frames as a video file holds them
    audio = batch["audio"][0].numpy()
    saved = Decoding(beam_size=2, ctc_weight=0.5)
    judge, expert = small("video"), small("av")
    save_reader(judge, tmp_path / "judge", saved)
    save_reader(expert, tmp_path / "model", saved)
    v = torch.from_numpy(video).float()[None] / 255
    assert read_lips(video, model_dir=tmp_path) == judge.transcribe(v, None)[0]
    assert read_lips(video, audio, model_dir=tmp_path) == expert.transcribe(v, None, torch.from_numpy(audio)[None])[0]
    slow = v[:, torch.arange(24) // 2]  # the clip at twice the reader's frame rate, each frame twice
    assert read_lips(slow[0], model_dir=tmp_path, fps=2 * judge.cfg.fps) == judge.transcribe(v, None)[0]
    with pytest.raises(FileNotFoundError, match="no trained judge here"):
        read_lips(video, model_dir=tmp_path / "nothing")
    assert not any(hasattr(avguide.models.expert, name) for name in ("read_lips", "transcribe", "read_clip"))
    code = "import sys, avguide; print(sorted(m for m in sys.modules if m.startswith('avguide.')))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "[]"


def test_the_pretrain_stage_saves_each_reader_with_its_decoding(tmp_path, monkeypatch):
    """fit_reader (the pretrain_expert stage, for the expert and the judge) writes pretrain_expert.beam_size and
    decode_ctc_weight beside the weights."""
    import avguide.training.expert as training

    monkeypatch.setattr(training, "data_stamp", lambda dataset: "items")  # a list of items, not an AVDataset
    items, _ = padded(["bin", "set red"], [8, 12])
    settings = {
        "lr": 1e-3,
        "batch_size": 2,
        "beam_size": 4,
        "decode_ctc_weight": 0.5,
        "augment": {"crop_size": 24, "noise_prob": 0.0},
    }
    trainer = {"accelerator": "cpu", "devices": 1, "max_epochs": 1}
    cfg = ExpertConfig(mode="video", **TINY_READER)
    model = training.fit_reader("judge", cfg, settings, items, None, tmp_path, 0, trainer, progress=False)
    assert model.decoding == Decoding(4, 0.5)
    assert load_expert(tmp_path / "judge", map_location="cpu").decoding == Decoding(4, 0.5)


def test_resume_continues_step_count_optimizer_and_schedule(tmp_path):
    items, _ = padded(["bin", "set red", "a b", "pin"] * 2, [8, 12, 10, 9] * 2)
    loader = DataLoader(items, batch_size=2, collate_fn=collate_av)
    augment = AugmentConfig(crop_size=24)
    common = dict(logger=False, enable_progress_bar=False)
    first = make_trainer({"accelerator": "cpu", "devices": 1, "max_steps": 3}, tmp_path, **common)
    first.fit(ExpertModule(small("av"), lr=1e-3, warmup_steps=2, augment=augment), loader)
    ckpt = next((tmp_path / "checkpoints").glob("*.ckpt"))
    second = make_trainer({"accelerator": "cpu", "devices": 1, "max_steps": 5}, tmp_path / "again", **common)
    second.fit(ExpertModule(small("av"), lr=1e-3, warmup_steps=2, augment=augment), loader, ckpt_path=ckpt)
    assert first.global_step == 3 and second.global_step == 5
    assert int(next(iter(second.optimizers[0].state.values()))["step"]) == 5
    assert second.lr_scheduler_configs[0].scheduler.last_epoch == 5


def test_augmentation_leaves_padding_alone():
    g = torch.Generator().manual_seed(0)
    lengths = torch.tensor([20, 12])
    video = torch.rand(2, 20, 30, 30, generator=g)
    video[1, 12:] = 0
    audio = torch.randn(2, 32000, generator=g)
    audio[1, 16000:] = 0
    alen = torch.tensor([32000, 16000])
    assert random_crop(video, 24, g).shape == (2, 20, 24, 24) and center_crop(video, 24).shape == (2, 20, 24, 24)
    masked = time_mask(audio, alen, max_width=8000, every=4000, generator=g)
    assert (masked == 0).sum() > (audio == 0).sum() and (masked[1, 16000:] == 0).all()
    noisy = add_noise(audio, alen, (0.0, 0.0), generator=g)
    assert (noisy[1, 16000:] == 0).all() and not torch.equal(noisy[0], audio[0])
    cfg = AugmentConfig(crop_size=24, fps=25, drop_audio_prob=0.0, drop_video_prob=0.0)
    v, a = augment_av(video, lengths, audio, alen, cfg, g)
    assert v.shape == (2, 20, 24, 24) and a.shape == audio.shape and (a[1, 16000:] == 0).all()


def test_cer_and_wer_are_corpus_level():
    refs, hyps = ["bin blue", "set red"], ["bin blu", "set red now"]
    assert cer(refs, hyps) == pytest.approx((1 + 4) / 15)
    assert wer(refs, hyps) == pytest.approx((1 + 1) / 4)
    assert cer(refs, refs) == 0 and wer(["a b"], [""]) == 1


# ---------------------------------------------------------------- the video matters

LETTERS = "abcdef"


def toy_av(n, seed, size=16, hold=3):
    """Clips whose transcript (3-5 letters from LETTERS) is shown in the video (a bright square at a place
    per letter) and said in the audio (a tone per letter), both `hold` frames per letter."""
    rng = np.random.default_rng(seed)
    items = []
    for k in range(n):
        n_letters, text = rng.integers(3, 6), str(rng.choice(list(LETTERS)))
        while len(text) < n_letters:  # no letter twice in a row (CTC could not tell "bb" from "b")
            text += rng.choice([c for c in LETTERS if c != text[-1]])
        frames = len(text) * hold + 2
        video = np.full((frames, size, size), 0.2, np.float32)
        audio = np.zeros(frames * 640, np.float32)
        t = np.arange(640 * hold) / 16000
        for j, ch in enumerate(text):
            c = LETTERS.index(ch)
            y, x = 2 + 6 * (c // 3), 2 + 5 * (c % 3)
            video[1 + j * hold : 1 + (j + 1) * hold, y : y + 4, x : x + 4] = 0.9
            audio[(1 + j * hold) * 640 : (1 + (j + 1) * hold) * 640] = 0.3 * np.sin(2 * np.pi * (300 + 150 * c) * t)
        video += rng.normal(0, 0.03, video.shape).astype(np.float32)
        items.append(
            dict(
                utterance=f"t{k}",
                speaker="s",
                video=torch.from_numpy(video),
                audio=torch.from_numpy(audio),
                text=text,
                tokens=torch.tensor(VOCAB.encode(text)),
            )
        )
    return items


@pytest.mark.slow
def test_with_masked_audio_the_true_video_beats_the_shuffled_video(tmp_path):
    torch.manual_seed(0)
    train, test = toy_av(256, 0), toy_av(32, 1)
    model = small("av", crop_size=16, conv_kernel=3, ctc_weight=0.3)
    module = ExpertModule(
        model,
        lr=5e-3,
        warmup_steps=10,
        augment=AugmentConfig(crop_size=16, flip_prob=0.0, noise_prob=0.5, drop_audio_prob=0.3, drop_video_prob=0.2),
    )
    trainer = make_trainer(
        {"accelerator": "cpu", "devices": 1, "max_epochs": 9},
        tmp_path,
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
    )
    trainer.fit(module, DataLoader(train, batch_size=16, shuffle=True, collate_fn=collate_av))
    masked = mask_audio(0.8, chunk_s=0.04, seed=0)
    kw = dict(beam_size=1, batch_size=32)
    true = cer(*transcribe_dataset(model, test, audio_fn=masked, **kw))
    shuffled = cer(*transcribe_dataset(model, test, audio_fn=masked, video_fn=shuffle_video(0), **kw))
    clean = cer(*transcribe_dataset(model, test, **kw))
    assert clean < 0.35 and true < 0.6 * shuffled, (clean, true, shuffled)  # measured: 0.20, 0.27, 0.63


def test_a_checkpoint_resumes_only_on_the_same_files(tmp_path):
    """The resume stamp covers the training files: a rebuilt corpus (same manifest, new files) starts afresh."""
    import os

    from avguide.data.avcorpus import AV_COLUMNS, AVCorpus
    from avguide.data.avdataset import AVDataset
    from avguide.training.expert import data_stamp, resume_stamp

    rows = []
    for k in range(2):
        for kind, ext in (("video", "mp4"), ("wav", "wav")):
            (tmp_path / kind).mkdir(exist_ok=True)
            (tmp_path / kind / f"u{k}.{ext}").write_bytes(b"x" * (10 + k))
        rows.append(f"u{k},s0,train,bin blue,5,25.0,video/u{k}.mp4,wav/u{k}.wav")
    (tmp_path / "manifest.csv").write_text(",".join(AV_COLUMNS) + "\n" + "\n".join(rows) + "\n")
    stamp = data_stamp(AVDataset(AVCorpus(tmp_path), "train"))
    assert data_stamp(AVDataset(AVCorpus(tmp_path), "train")) == stamp
    # evaluation settings do not touch the stamp (a new beam re-decodes the finished run); training settings do
    data = AVDataset(AVCorpus(tmp_path), "train")
    settings = {"lr": 1e-3, "batch_size": 2, "beam_size": 5, "decode_ctc_weight": 0.3, "eval": {"seed": 0}}
    run = resume_stamp(ExpertConfig(), settings, {"max_epochs": 2}, 0, data)
    decode = {**settings, "beam_size": 10, "decode_ctc_weight": 0.5, "eval": {"seed": 1}}
    assert resume_stamp(ExpertConfig(), decode, {"max_epochs": 2}, 0, data) == run
    assert resume_stamp(ExpertConfig(), {**settings, "lr": 2e-3}, {"max_epochs": 2}, 0, data) != run
    assert resume_stamp(ExpertConfig(), settings, {"max_epochs": 3}, 0, data) != run
    os.utime(tmp_path / "video" / "u1.mp4", ns=(1, 1))  # the file was rewritten
    assert data_stamp(AVDataset(AVCorpus(tmp_path), "train")) != stamp
    assert resume_stamp(ExpertConfig(), settings, {"max_epochs": 2}, 0, AVDataset(AVCorpus(tmp_path), "train")) != run


def test_a_checkpoint_resumes_only_under_the_code_that_wrote_it(tmp_path, monkeypatch):
    """A change to the training code (DVC re-runs the stage) must not resume the old code's finished checkpoint."""
    import sys

    import avguide.training.expert as training

    (tmp_path / "trainer_code_probe.py").write_text("STEP = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(training, "TRAINING_CODE", ("trainer_code_probe",))
    before = training.code_stamp()
    assert training.code_stamp() == before
    (tmp_path / "trainer_code_probe.py").write_text("STEP = 2\n")
    assert training.code_stamp() != before
    sys.modules.pop("trainer_code_probe", None)
