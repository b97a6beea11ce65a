"""The synthetic 2D audio-visual corpus and the human-facing videos."""

import json

import numpy as np
import pytest
from corpus_hashes import SMALL_2D, committed, file_hashes

from avguide.data.avcorpus import AVCorpus
from avguide.data.synthetic2d import Synthetic2DConfig, build_av_corpus, jitter_pose
from avguide.face.template import build_face
from avguide.render import face_camera
from avguide.render.movie import render_frames, write_face_video
from avguide.render.video import read_video

SMALL = dict(identities={"train": 2, "val": 1, "test": 1}, sentences_per_identity=2)  # corpus_hashes.SMALL_2D, seed 3


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return AVCorpus(
        build_av_corpus(tmp_path_factory.mktemp("av") / "synth2d", Synthetic2DConfig(seed=3, **SMALL), progress=False)
    )


@pytest.mark.slow
def test_layout_splits_and_lengths(corpus):
    m = corpus.manifest
    assert len(m) == 8 and m.speaker.nunique() == 4
    assert sorted(m.groupby("split").speaker.nunique().items()) == [("test", 1), ("train", 2), ("val", 1)]
    for row in m.itertuples():
        video, audio = corpus.load(row.utterance)  # checks frames against the manifest and the audio
        assert video.shape == (row.n_frames, 88, 88) and video.dtype == np.uint8
        assert (corpus.root / "text" / row.speaker / f"{row.utterance}.txt").read_text().strip() == row.text


@pytest.mark.slow
def test_the_committed_bytes_on_every_processor(corpus, tmp_path, monkeypatch):
    """Byte for byte the corpus whose hashes are committed (tests/corpus_hashes.py), also where MKL would take
    another code path: MKL held to SSE4.2, as on a processor without AVX2 or AVX-512 (unpinned, that changes a
    video of this corpus)."""
    assert Synthetic2DConfig(seed=3, **SMALL) == SMALL_2D
    assert file_hashes(corpus.root) == committed("synth2d")
    monkeypatch.setenv("MKL_ENABLE_INSTRUCTIONS", "SSE4_2")  # inherited by the corpus' worker processes
    other = build_av_corpus(tmp_path / "other", SMALL_2D, progress=False)
    assert file_hashes(other) == committed("synth2d")


@pytest.mark.slow
def test_same_seed_same_bytes(corpus, tmp_path, digest):
    again = build_av_corpus(tmp_path / "again", Synthetic2DConfig(seed=3, **SMALL), progress=False, workers=2)
    assert digest(again) == digest(corpus.root)


def test_identities_look_different_and_differ_from_the_3d_subjects(corpus):
    looks = [i["look"] for i in json.loads((corpus.root / "identities.json").read_text())["identities"]]
    assert len({round(lk["skin_albedo"], 4) for lk in looks}) == len(looks)
    means = [corpus.load(u)[0].mean() for u in corpus.manifest.groupby("speaker").head(1).utterance]
    assert np.ptp(means) > 3  # grey levels differ between identities
    frames = corpus.load(corpus.manifest.utterance[0])[0].astype(float)
    assert np.abs(np.diff(frames, axis=0)).mean() > 0.5  # the mouth moves


def test_pose_jitter_is_small_and_smooth():
    v = np.repeat(build_face().vertices[None], 50, 0)
    moved = jitter_pose(v, np.random.default_rng(0), 2.5)
    step = np.linalg.norm(np.diff(moved, axis=0), axis=-1).max()
    total = np.linalg.norm(moved - v, axis=-1).max()
    assert 0 < step < 0.002 and total < 0.015  # metres: a slow sway of a few degrees


def test_face_video_has_every_frame_and_the_sound(tmp_path):
    mesh = build_face()
    motion = np.repeat(mesh.vertices[None], 10, 0)
    motion[5:, :, 1] += 0.002
    audio = np.zeros(int(10 / 25 * 16000), np.float32)
    path = write_face_video(
        tmp_path / "v.mp4",
        [motion, motion],
        mesh.vertices,
        mesh.faces,
        mesh.albedo,
        25,
        audio,
        captions=["a", "b"],
        size=64,
    )
    frames, fps = read_video(path)
    assert frames.shape[0] == 10 and frames.shape[2] == 128 and fps == 25
    still = render_frames(motion[:1], mesh.faces, mesh.albedo, face_camera(mesh, 64))
    assert still.shape == (1, 64, 64) and 0.2 < still.mean() < 0.8
    with pytest.raises(ValueError, match="one length"):
        write_face_video(tmp_path / "w.mp4", [motion, motion[:5]], mesh.vertices, mesh.faces, mesh.albedo, 25)
