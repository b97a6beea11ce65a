"""MP4 writing/reading with sound, caption grids, and the 2D audio-visual corpus reader (LRS3 convention)."""

import hashlib
import subprocess

import imageio_ffmpeg
import numpy as np
import pandas as pd
import pytest

from avguide.data.audio import save_wav
from avguide.data.avcorpus import AVCorpus, index_lrs3
from avguide.data.corpus import CorpusError
from avguide.render.video import VideoError, caption_grid, read_video, write_video, write_videos


def moving_square(t=20, size=32):
    frames = np.full((t, size, size), 0.2, np.float32)
    for k in range(t):
        frames[k, 8:16, k % (size - 8) : k % (size - 8) + 8] = 1.0
    return frames


def streams(path):
    info = subprocess.run(
        [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-i", str(path)], capture_output=True, text=True
    ).stderr
    return [line.strip() for line in info.splitlines() if "Stream #" in line]


def test_round_trip_keeps_frames_rate_and_content(tmp_path):
    frames = moving_square()
    path = write_video(tmp_path / "a.mp4", frames, fps=25)
    back, fps = read_video(path)
    assert back.shape == frames.shape and fps == 25.0
    assert np.abs(back / 255.0 - frames).mean() < 0.02  # H.264 at crf 18 on a simple picture
    assert back[5, 8:16, 5:13].mean() > 230 and back[5, 20:, :].mean() < 70


def test_sound_is_muxed_and_files_are_reproducible(tmp_path):
    audio = 0.3 * np.sin(2 * np.pi * 220 * np.arange(16000) / 16000).astype(np.float32)
    a = write_video(tmp_path / "a.mp4", moving_square(25), 25, audio)
    b = write_video(tmp_path / "b.mp4", moving_square(25), 25, audio)
    kinds = " ".join(streams(a))
    assert "Video: h264" in kinds and "Audio: aac" in kinds and "16000 Hz" in kinds
    assert hashlib.sha256(a.read_bytes()).digest() == hashlib.sha256(b.read_bytes()).digest()
    assert "Audio" not in " ".join(streams(write_video(tmp_path / "silent.mp4", moving_square(), 25)))


def test_bad_frames_and_files(tmp_path):
    with pytest.raises(VideoError, match="even"):
        write_video(tmp_path / "odd.mp4", np.zeros((3, 31, 32)), 25)
    with pytest.raises(VideoError, match="NaN"):
        write_video(tmp_path / "nan.mp4", np.full((3, 32, 32), np.nan), 25)
    with pytest.raises(VideoError, match="T > 0"):
        write_video(tmp_path / "empty.mp4", np.zeros((0, 32, 32)), 25)
    with pytest.raises(VideoError, match="not found"):
        read_video(tmp_path / "missing.mp4")
    (tmp_path / "junk.mp4").write_bytes(b"not a video at all")
    with pytest.raises(VideoError, match="junk.mp4"):
        read_video(tmp_path / "junk.mp4")


def test_caption_grid_places_videos_side_by_side_under_captions():
    a, b = moving_square(4), 1.0 - moving_square(4)
    grid = caption_grid([a, b], ["ground truth", "model"], caption_height=20)
    assert grid.shape == (4, 32 + 20, 64)
    assert grid[:, :20].max() > 200 and (grid[:, :20] > 128).mean() > 0.02  # the caption text is drawn
    assert np.array_equal(grid[:, 20:, :32], (a * 255 + 0.5).astype(np.uint8))
    with pytest.raises(VideoError, match="one shape"):
        caption_grid([a, a[:, :16]], ["x", "y"])


def write_lrs3_item(root, subset, speaker, uid, text, n_frames=10, audio_frames=None):
    folder = root / subset / speaker
    folder.mkdir(parents=True, exist_ok=True)
    write_video(folder / f"{uid}.mp4", moving_square(n_frames), 25)
    save_wav(folder / f"{uid}.wav", np.zeros(int((audio_frames or n_frames) / 25 * 16000), np.float32))
    (folder / f"{uid}.txt").write_text(f"Text:  {text}\nConf:  4\n")


def test_lrs3_index_and_reader(tmp_path, caplog):
    root = tmp_path / "lrs3"
    for k in range(4):
        write_lrs3_item(root, "trainval", f"spk{k}", "00001", "HELLO WORLD")
    write_lrs3_item(root, "test", "spkT", "00001", "GOOD MORNING")
    (root / "trainval" / "spk0" / "00002.mp4").write_bytes((root / "trainval" / "spk0" / "00001.mp4").read_bytes())
    index_lrs3(root, tmp_path / "indexed", val_fraction=0.25)
    assert "skipped" in caplog.text
    corpus = AVCorpus(tmp_path / "indexed")
    m = corpus.manifest
    assert (
        len(m) == 5 and (m["split"] == "val").sum() == 1 and set(m.loc[m.split == "test", "text"]) == {"good morning"}
    )
    video, audio = corpus.load("test/spkT/00001")
    assert video.shape == (10, 32, 32) and len(audio) == 6400


def test_av_reader_errors(tmp_path):
    root = tmp_path / "c"
    write_lrs3_item(root, "trainval", "s", "1", "hi there", n_frames=10, audio_frames=20)
    index_lrs3(root, root, val_fraction=0.0)
    with pytest.raises(CorpusError, match=r"1\.wav.*more than one frame"):
        AVCorpus(root).load("trainval/s/1")
    m = pd.read_csv(root / "manifest.csv")
    m.loc[0, "text"] = "?!"
    m.to_csv(root / "manifest.csv", index=False)
    with pytest.raises(CorpusError, match="empty transcript"):
        AVCorpus(root)
    with pytest.raises(CorpusError, match="not found"):
        AVCorpus(tmp_path / "nowhere")


def test_many_videos_from_one_ffmpeg_keep_their_own_frames(tmp_path):
    clips = [moving_square(n) for n in (7, 12, 9)]
    clips[1] = 1.0 - clips[1]
    paths = write_videos([tmp_path / "a" / f"{k}.mp4" for k in range(3)], clips, fps=25)
    for path, clip in zip(paths, clips):
        back, fps = read_video(path)
        assert back.shape == clip.shape and fps == 25.0
        assert np.abs(back / 255.0 - clip).mean() < 0.02
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["0.mp4", "1.mp4", "2.mp4"]  # no leftovers
    with pytest.raises(VideoError, match="one path per video"):
        write_videos([tmp_path / "x.mp4"], clips, fps=25)
