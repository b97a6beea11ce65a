import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import DataLoader

from avguide.data.audio import save_wav
from avguide.data.corpus import Corpus, CorpusError, Topology, save_templates, write_manifest
from avguide.data.dataset import TalkingFaceDataset, collate
from avguide.data.text import VOCAB

V, FPS, SR = 12, 25, 16000
SPF = SR // FPS  # audio samples per motion frame
# Train subjects listed out of sorted order on purpose: style ids must follow the sorted names.
SUBJECTS = {"FaceTalk_B": "train", "FaceTalk_A": "train", "FaceTalk_C": "test"}
FRAMES = {"FaceTalk_B": (5, 9), "FaceTalk_A": (7, 4), "FaceTalk_C": (6, 8)}
TEXTS = ("Hello, world!", "Don't  STOP now")


def build_corpus(root: Path) -> Path:
    """A tiny corpus: 3 subjects x 2 utterances, V=12, 25 fps, 16 kHz mono WAVs of matching duration."""
    rng = np.random.default_rng(0)
    (root / "wav").mkdir(parents=True)
    (root / "vertices_npy").mkdir()
    rows, templates = [], {}
    for subject, split in SUBJECTS.items():
        templates[subject] = rng.normal(size=(V, 3)).astype(np.float32)
        for k, n in enumerate(FRAMES[subject]):
            utt = f"{subject}_sentence{k + 1:02d}"
            verts = templates[subject] + 0.01 * rng.normal(size=(n, V, 3))
            np.save(root / "vertices_npy" / f"{utt}.npy", verts.reshape(n, V * 3).astype(np.float32))
            save_wav(root / "wav" / f"{utt}.wav", rng.uniform(-0.5, 0.5, n * SPF))
            rows.append(
                dict(
                    utterance=utt,
                    subject=subject,
                    sentence=k + 1,
                    split=split,
                    text=TEXTS[k],
                    n_frames=n,
                    fps=FPS,
                    wav=f"wav/{utt}.wav",
                    vertices=f"vertices_npy/{utt}.npy",
                )
            )
    write_manifest(root / "manifest.csv", rows)
    save_templates(root / "templates.npz", templates)
    Topology(faces=rng.integers(0, V, size=(8, 3)), lip_ids=np.arange(4), upper_face_ids=np.arange(6, 12)).save(
        root / "topology.npz"
    )
    return root


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return build_corpus(tmp_path / "corpus")


def edit_manifest(root: Path, utterance: str, **values) -> None:
    df = pd.read_csv(root / "manifest.csv", keep_default_na=False)
    for col, value in values.items():
        df.loc[df["utterance"] == utterance, col] = value
    df.to_csv(root / "manifest.csv", index=False)


def test_item_content(root):
    ds = TalkingFaceDataset(Corpus(root), "train")
    assert len(ds) == 4
    item = ds[0]
    utt = item["utterance"]
    assert utt == "FaceTalk_A_sentence01" and item["subject"] == "FaceTalk_A"
    assert item["audio"].dtype == torch.float32 and item["audio"].shape == (7 * SPF,)
    assert item["vertices"].dtype == torch.float32 and item["vertices"].shape == (7, V, 3)
    on_disk = np.load(root / "vertices_npy" / f"{utt}.npy").reshape(7, V, 3)
    assert torch.equal(item["vertices"], torch.from_numpy(on_disk))
    assert torch.equal(item["template"], torch.from_numpy(np.load(root / "templates.npz")["FaceTalk_A"]))
    assert item["text"] == "hello world"
    assert item["tokens"].dtype == torch.long
    assert VOCAB.decode(item["tokens"]) == "hello world"
    assert ds[1]["text"] == "don't stop now"


def test_subject_ids_are_sorted_train_indices_and_minus_one_for_unseen(root):
    corpus = Corpus(root)
    train = TalkingFaceDataset(corpus, "train")
    assert train.train_subjects == ["FaceTalk_A", "FaceTalk_B"]
    assert {(it["subject"], it["subject_id"]) for it in train} == {("FaceTalk_A", 0), ("FaceTalk_B", 1)}
    test = TalkingFaceDataset(corpus, "test")
    assert [it["subject_id"] for it in test] == [-1, -1]
    only_b = TalkingFaceDataset(corpus, "train", subjects=["FaceTalk_B"])
    assert len(only_b) == 2 and {it["subject_id"] for it in only_b} == {1}


def test_unknown_subject_or_split_rejected(root):
    corpus = Corpus(root)
    with pytest.raises(ValueError, match="FaceTalk_C"):
        TalkingFaceDataset(corpus, "train", subjects=["FaceTalk_C"])
    with pytest.raises(ValueError, match="'dev'"):
        TalkingFaceDataset(corpus, "dev")
    with pytest.raises(CorpusError, match="no utterances in split 'val'"):
        TalkingFaceDataset(corpus, "val")


def test_collate_shapes_masks_and_padding(root):
    ds = TalkingFaceDataset(Corpus(root), "train")
    items = [ds[i] for i in range(len(ds))]
    frames = [len(it["vertices"]) for it in items]
    assert len(set(frames)) == len(frames)  # the fixture has different lengths
    b = collate(items)
    B, T, S = len(items), max(frames), max(frames) * SPF
    L = max(len(it["tokens"]) for it in items)
    assert b["audio"].shape == (B, S) and b["audio_mask"].shape == (B, S) and b["audio_mask"].dtype == torch.bool
    assert (
        b["vertices"].shape == (B, T, V, 3) and b["frame_mask"].shape == (B, T) and b["frame_mask"].dtype == torch.bool
    )
    assert b["templates"].shape == (B, V, 3)
    assert b["subject_ids"].tolist() == [it["subject_id"] for it in items]
    assert b["tokens"].shape == (B, L) and b["tokens"].dtype == torch.long
    assert b["n_frames"].tolist() == frames
    assert b["audio_lengths"].tolist() == [n * SPF for n in frames]
    assert b["token_lengths"].tolist() == [len(it["tokens"]) for it in items]
    assert b["frame_mask"].sum(1).tolist() == frames
    assert b["audio_mask"].sum(1).tolist() == b["audio_lengths"].tolist()
    for k, n in enumerate(frames):
        assert b["frame_mask"][k, :n].all() and not b["frame_mask"][k, n:].any()
    # padding does not leak: everything outside the masks is exactly zero / the pad id
    assert (b["vertices"][~b["frame_mask"]] == 0).all()
    assert (b["audio"][~b["audio_mask"]] == 0).all()
    token_mask = torch.arange(L)[None] < b["token_lengths"][:, None]
    assert (b["tokens"][~token_mask] == VOCAB.pad).all()
    assert (b["tokens"][token_mask] != VOCAB.pad).all()
    assert b["utterances"] == [it["utterance"] for it in items]
    assert b["texts"] == [it["text"] for it in items]
    assert b["subjects"] == [it["subject"] for it in items]


def test_batching_does_not_change_data(root):
    ds = TalkingFaceDataset(Corpus(root), "train")
    (b,) = list(DataLoader(ds, batch_size=len(ds), collate_fn=collate))
    for k in range(len(ds)):
        item = ds[k]
        n, s, n_tokens = b["n_frames"][k], b["audio_lengths"][k], b["token_lengths"][k]
        assert torch.equal(b["vertices"][k, :n], item["vertices"])
        assert torch.equal(b["audio"][k, :s], item["audio"])
        assert torch.equal(b["tokens"][k, :n_tokens], item["tokens"])
        assert torch.equal(b["templates"][k], item["template"])
        assert b["subject_ids"][k] == item["subject_id"] and b["texts"][k] == item["text"]


def test_collate_empty_batch_rejected():
    with pytest.raises(ValueError, match="empty batch"):
        collate([])


@pytest.mark.parametrize("extra_frames, ok", [(1, True), (-1, True), (3, False), (-2, False)])
def test_audio_motion_length_mismatch(root, extra_frames, ok):
    utt = "FaceTalk_B_sentence02"  # 9 frames
    save_wav(root / "wav" / f"{utt}.wav", np.zeros((9 + extra_frames) * SPF))
    ds = TalkingFaceDataset(Corpus(root), "train", subjects=["FaceTalk_B"])
    if ok:
        assert ds[1]["audio"].shape == ((9 + extra_frames) * SPF,)
    else:
        with pytest.raises(CorpusError, match=f"{utt}.wav.*more than one frame apart"):
            ds[1]


def test_manifest_frame_count_checked(root):
    edit_manifest(root, "FaceTalk_A_sentence02", n_frames=5)
    ds = TalkingFaceDataset(Corpus(root), "train")
    with pytest.raises(CorpusError, match="FaceTalk_A_sentence02.npy: 4 frames.*n_frames=5"):
        ds[1]


def test_stereo_44k_wav_is_downmixed_and_resampled(root, caplog):
    utt, n = "FaceTalk_C_sentence01", 6
    t = np.arange(n * 1764) / 44100  # 1764 = 44100 / 25 samples per frame
    left = 0.8 * np.sin(2 * np.pi * 220 * t)
    save_wav(root / "wav" / f"{utt}.wav", np.stack([left, np.zeros_like(left)], axis=1), sample_rate=44100)
    ds = TalkingFaceDataset(Corpus(root), "test")
    with caplog.at_level(logging.WARNING, logger="avguide.data.audio"):
        audio = ds[0]["audio"]
    assert ds[0]["utterance"] == utt
    assert "2 channels, downmixed to mono" in caplog.text
    assert "sample rate 44100 Hz, resampled to 16000 Hz" in caplog.text
    assert audio.shape == (n * SPF,)
    t16 = np.arange(n * SPF) / SR
    expected = 0.4 * np.sin(2 * np.pi * 220 * t16)
    inner = slice(200, -200)  # away from the resampling filter's edge effects
    assert np.abs(audio.numpy()[inner] - expected[inner]).max() < 0.01


def test_empty_transcript_rejected(root):
    edit_manifest(root, "FaceTalk_B_sentence01", text="?! 42")
    with pytest.raises(
        CorpusError, match=r"manifest\.csv: empty transcript for utterance\(s\) \['FaceTalk_B_sentence01'\]"
    ):
        Corpus(root)


def test_cache_keeps_arrays_and_items_are_independent(root):
    ds = TalkingFaceDataset(Corpus(root), "train", cache=True)
    first = ds[2]
    for f in (root / "wav").iterdir():
        f.unlink()
    second = ds[2]  # served from memory
    assert torch.equal(first["audio"], second["audio"]) and torch.equal(first["vertices"], second["vertices"])
    first["vertices"].zero_()  # mutating a returned item must not corrupt the cache
    assert torch.equal(ds[2]["vertices"], second["vertices"]) and second["vertices"].abs().sum() > 0
    with pytest.raises(Exception, match="audio file not found"):
        ds[3]  # never loaded, so not cached
