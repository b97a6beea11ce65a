"""The `avguide` command line: animate, evaluate, render, transcribe, and every bad input the issue lists.

Fixtures are written here, in a temporary folder: a small dome mesh (80 vertices) as a 3-subject corpus
(two training subjects, one test subject) and a freshly initialised FaceFormer whose output layer is
random, so the motion depends on the audio. Commands run in-process through `main(argv)` (one process
start costs seconds of imports); one test runs the real entry point in a subprocess.
"""

import json
import subprocess
import sys

import imageio_ffmpeg
import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch
from conftest import TINY_READER

from avguide.cli import main
from avguide.data.audio import SAMPLE_RATE, save_wav
from avguide.data.corpus import Topology, save_templates, write_manifest

ROWS, COLS, FPS = 8, 10, 25.0
V = ROWS * COLS
SUBJECTS = {"alice": "train", "bob": "train", "carol": "test"}


def dome():
    """(V, 3) vertices of a shallow dome facing the camera and its (F, 3) triangles."""
    ys, xs = np.mgrid[0:ROWS, 0:COLS]
    x, y = (xs - (COLS - 1) / 2) * 0.01, ((ROWS - 1) / 2 - ys) * 0.012
    vertices = np.stack([x, y, 0.03 - 0.3 * (x**2 + y**2)], -1).reshape(-1, 3).astype(np.float32)
    faces = []
    for r in range(ROWS - 1):
        for c in range(COLS - 1):
            a = r * COLS + c
            faces += [(a, a + COLS, a + 1), (a + 1, a + COLS, a + COLS + 1)]
    return vertices, np.array(faces)


def noise_speech(seconds, seed=0, level=0.1):
    """Amplitude-modulated noise: loud enough to count as speech, cheap to make at any length."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    return (level * rng.standard_normal(len(t)) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t))).astype(np.float32)


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread: the step-by-step decoder is much faster so when other processes share the cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    (root / "wav").mkdir()
    (root / "vertices_npy").mkdir()
    base, faces = dome()
    lip_ids = np.array([r * COLS + c for r in (5, 6) for c in range(3, 7)])
    upper_ids = np.arange(2 * COLS)
    templates = {s: base * np.float32(1 + 0.05 * k) for k, s in enumerate(SUBJECTS)}
    rows = []
    for k, (subject, split) in enumerate(SUBJECTS.items()):
        for i in range(2):
            utt = f"{subject}_sentence0{i + 1}"
            audio = noise_speech(0.8 + 0.2 * i, seed=10 * k + i)
            n = int(round(len(audio) / SAMPLE_RATE * FPS))
            motion = np.zeros((n, V, 3), np.float32)
            motion[:, lip_ids, 1] = 0.002 * np.sin(np.arange(n) / 3)[:, None]
            save_wav(root / "wav" / f"{utt}.wav", audio)
            np.save(root / "vertices_npy" / f"{utt}.npy", (templates[subject] + motion).reshape(n, -1))
            rows.append(
                dict(
                    utterance=utt,
                    subject=subject,
                    sentence=f"sentence0{i + 1}",
                    split=split,
                    text="bin blue at f two now",
                    n_frames=n,
                    fps=FPS,
                    wav=f"wav/{utt}.wav",
                    vertices=f"vertices_npy/{utt}.npy",
                )
            )
    write_manifest(root / "manifest.csv", rows)
    save_templates(root / "templates.npz", templates)
    Topology(faces=faces, lip_ids=lip_ids, upper_face_ids=upper_ids).save(root / "topology.npz")
    return root


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, one_thread):
    from avguide.models.checkpoint import save_checkpoint
    from avguide.models.faceformer import FaceFormer, FaceFormerConfig

    torch.manual_seed(0)
    model = FaceFormer(
        FaceFormerConfig(n_vertices=V, n_subjects=2, fps=FPS, feature_dim=16, n_heads=2, max_frames=600, dropout=0.0)
    )
    torch.nn.init.normal_(model.motion_out.weight, std=0.05)  # a random face motion, driven by the audio
    return save_checkpoint(model, tmp_path_factory.mktemp("model") / "faceformer")


def run(capsys, *argv):
    """(exit code, stdout, stderr) of `avguide argv...` run in this process."""
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def animate(capsys, corpus, model_dir, wav, out, *extra):
    return run(capsys, "animate", wav, "--model", model_dir, "--corpus", corpus, "--out", out, "-q", *extra)


def has_audio_stream(path) -> bool:
    probe = subprocess.run(
        [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-i", str(path)], capture_output=True, text=True
    )
    return "Audio:" in probe.stderr


# --- animate ------------------------------------------------------------------------------------------


def test_animate_a_new_espeak_voice(tmp_path, capsys, corpus, model_dir):
    """A WAV the corpus never produced (another espeak-ng voice): vertices, OBJ sequence, MP4 with sound."""
    from avguide.data.speech import Voice, synthesize
    from avguide.render.video import read_video

    speech = synthesize("place green by k nine again", Voice("en-us+klatt3", rate=150, pitch=40))
    wav = tmp_path / "new voice.wav"
    save_wav(wav, speech.audio)
    code, out, err = animate(capsys, corpus, model_dir, wav, tmp_path / "out", "--obj", "--size", "64")
    assert code == 0, err
    n = int(round(len(speech.audio) / SAMPLE_RATE * FPS))
    vertices = np.load(tmp_path / "out" / "new voice.npy")
    assert vertices.shape == (n, V * 3) and vertices.dtype == np.float32  # FaceFormer's format
    assert np.abs(np.diff(vertices, axis=0)).max() > 1e-5  # the face moves with the speech
    objs = sorted((tmp_path / "out" / "new voice_obj").glob("*.obj"))
    assert len(objs) == n
    lines = objs[0].read_text().splitlines()
    assert sum(line.startswith("v ") for line in lines) == V and lines[-1].startswith("f ")
    frames, fps = read_video(tmp_path / "out" / "new voice.mp4")
    assert frames.shape == (n, 64, 64) and fps == FPS and frames.max() > 0
    assert has_audio_stream(tmp_path / "out" / "new voice.mp4")
    assert not list((tmp_path / "out").glob("*.partial.npy"))
    assert out.splitlines() == [str(tmp_path / "out" / f) for f in ("new voice.npy", "new voice_obj", "new voice.mp4")]


def test_subject_picks_style_and_template(tmp_path, capsys, corpus, model_dir):
    wav = tmp_path / "speech.wav"
    save_wav(wav, noise_speech(1.0))
    templates = np.load(corpus / "templates.npz")
    results = {}
    for subject in ("alice", "bob"):
        code, _, err = animate(capsys, corpus, model_dir, wav, tmp_path / subject, "--subject", subject, "--no-video")
        assert code == 0, err
        results[subject] = np.load(tmp_path / subject / "speech.npy").reshape(-1, V, 3)
    # each animation sits on its own subject's template ...
    for subject, other in (("alice", "bob"), ("bob", "alice")):
        mean = results[subject].mean(0)
        assert np.abs(mean - templates[subject]).mean() < np.abs(mean - templates[other]).mean()
    # ... and moves in its own style (same audio, same template offsets would be equal otherwise)
    motion = {s: results[s] - templates[s] for s in results}
    assert not np.allclose(motion["alice"], motion["bob"], atol=1e-6)


def test_long_recording_is_animated_in_chunks(tmp_path, capsys, corpus, model_dir, monkeypatch):
    """Two minutes (the 10-minute case, shortened): more frames than the model takes in one pass
    (max_frames 600), animated in 20 s windows; the frame count is duration x fps."""
    from avguide.inference import chunk_bounds
    from avguide.models.faceformer import FaceFormer

    calls = []
    original = FaceFormer.predict

    def counting(self, audio, audio_lengths, n_frames, *rest, **kw):
        calls.append((int(n_frames.max()), int(audio_lengths.max())))
        return original(self, audio, audio_lengths, n_frames, *rest, **kw)

    monkeypatch.setattr(FaceFormer, "predict", counting)
    wav = tmp_path / "long.wav"
    seconds = 120
    save_wav(wav, noise_speech(seconds))
    code, _, err = animate(capsys, corpus, model_dir, wav, tmp_path, "--no-video", "--chunk-seconds", "20")
    assert code == 0, err
    n = int(seconds * FPS)
    vertices = np.load(tmp_path / "long.npy", mmap_mode="r")
    assert vertices.shape == (n, V * 3) and n > 600
    assert len(calls) == len(chunk_bounds(n, 500, 25)) == 7
    assert max(frames for frames, _ in calls) == 500  # never more than one window in memory
    assert max(samples for _, samples in calls) <= 20 * SAMPLE_RATE
    assert np.isfinite(vertices).all() and np.abs(vertices).max() > 0


def test_chunk_windows_cover_every_frame_with_overlap():
    from avguide.inference import chunk_bounds

    assert chunk_bounds(10, 20, 5) == [(0, 10)]
    bounds = chunk_bounds(1000, 300, 20)
    assert bounds[0][0] == 0 and bounds[-1] == (700, 1000)
    assert all(e - s == 300 for s, e in bounds)
    assert all(b[0] < a[1] - 19 for a, b in zip(bounds, bounds[1:]))  # each overlaps the previous by >= 20


def test_stereo_44k_is_downmixed_and_resampled_with_a_warning(tmp_path, capsys, corpus, model_dir):
    mono = noise_speech(1.2)
    from avguide.data.audio import resample

    stereo = np.stack([resample(mono, SAMPLE_RATE, 44100)] * 2, 1)
    sf.write(tmp_path / "stereo.wav", stereo, 44100, subtype="PCM_16")
    code, _, err = animate(capsys, corpus, model_dir, tmp_path / "stereo.wav", tmp_path, "--no-video")
    assert code == 0, err
    assert "2 channels, downmixed to mono" in err and "44100 Hz, resampled to 16000 Hz" in err
    assert np.load(tmp_path / "stereo.npy").shape == (int(round(1.2 * FPS)), V * 3)


# --- bad input ----------------------------------------------------------------------------------------


def test_not_audio_is_refused_by_the_installed_command(tmp_path):
    """The real entry point, in its own process: clear message, exit code 1, no traceback."""
    fake = tmp_path / "speech.wav"
    fake.write_text("these are not samples\n")
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from avguide.cli import main; sys.exit(main())",
            "animate",
            str(fake),
            "--model",
            str(tmp_path / "none"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1
    assert f"{fake}: not a readable audio file" in proc.stderr and "Traceback" not in proc.stderr


def test_checking_an_input_file_loads_neither_torch_nor_the_models():
    """`avguide animate` refuses a bad file before loading torch and the animators (avguide.models.registry)."""
    heavy = "('torch', 'transformers', 'avguide.models.registry')"
    code = f"import sys, avguide.inference; print(sorted(m for m in {heavy} if m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "[]"


def test_entry_point_and_usage_errors(capsys):
    from importlib.metadata import entry_points

    scripts = {e.name: e.value for e in entry_points(group="console_scripts")}
    assert scripts.get("avguide") == "avguide.cli:main"
    assert run(capsys, "--help")[0] == 0
    code, _, err = run(capsys, "animate")  # no audio file given
    assert code == 2 and "required: audio" in err


@pytest.mark.parametrize("level", [0.0, 1e-4])  # digital silence, and hiss at -80 dBFS
def test_silence_is_refused(tmp_path, capsys, corpus, model_dir, level):
    wav = tmp_path / "quiet.wav"
    save_wav(wav, noise_speech(1.0, level=level))
    code, _, err = animate(capsys, corpus, model_dir, wav, tmp_path)
    assert code == 1 and "the audio is silent" in err and "--allow-silence" in err
    assert not (tmp_path / "quiet.npy").exists()


def test_silence_is_animated_when_allowed(tmp_path, capsys, corpus, model_dir):
    wav = tmp_path / "quiet.wav"
    save_wav(wav, np.zeros(SAMPLE_RATE, np.float32))
    code, _, err = animate(capsys, corpus, model_dir, wav, tmp_path, "--allow-silence", "--no-video")
    assert code == 0 and "warning: " in err and "silent" in err
    assert np.load(tmp_path / "quiet.npy").shape == (25, V * 3)


def test_unknown_subject_lists_the_valid_ones(tmp_path, capsys, corpus, model_dir):
    wav = tmp_path / "speech.wav"
    save_wav(wav, noise_speech(0.5))
    code, _, err = animate(capsys, corpus, model_dir, wav, tmp_path, "--subject", "zoe")
    assert code == 1 and "unknown subject 'zoe'" in err and "alice, bob" in err
    code, _, err = animate(capsys, corpus, model_dir, wav, tmp_path, "--subject", "carol")  # a test subject: no style
    assert code == 1 and "alice, bob" in err


def test_missing_or_foreign_model_is_refused(tmp_path, capsys, corpus, model_dir):
    wav = tmp_path / "speech.wav"
    save_wav(wav, noise_speech(0.5))
    code, _, err = animate(capsys, corpus, tmp_path / "nothing", wav, tmp_path)
    assert code == 1 and "model folder not found" in err
    other = tmp_path / "other_corpus"
    other.mkdir()
    for name in ("manifest.csv", "topology.npz"):
        (other / name).write_bytes((corpus / name).read_bytes())
    save_templates(other / "templates.npz", {s: np.zeros((V + 3, 3), np.float32) for s in SUBJECTS})
    code, _, err = animate(capsys, other, model_dir, wav, tmp_path)
    assert code == 1 and f"{V + 3} vertices" in err and f"animates {V}" in err


def test_checkpoint_without_recorded_class_still_loads(tmp_path, model_dir):
    """Checkpoints written before save_checkpoint recorded the class: the class is found from config.json."""
    from safetensors.torch import load_file, save_file

    from avguide.models.checkpoint import checkpoint_class
    from avguide.models.registry import load_animator

    assert checkpoint_class(model_dir) == "FaceFormer"
    old = tmp_path / "old"
    old.mkdir()
    (old / "config.json").write_text((model_dir / "config.json").read_text())
    save_file(load_file(model_dir / "model.safetensors"), old / "model.safetensors")
    assert checkpoint_class(old) is None
    assert type(load_animator(old)).__name__ == "FaceFormer"


# --- evaluate -----------------------------------------------------------------------------------------


def test_evaluate_reproduces_the_train_stage_score_exactly(tmp_path, capsys, corpus, model_dir):
    from avguide.data.corpus import Corpus
    from avguide.data.dataset import TalkingFaceDataset
    from avguide.models.registry import load_animator
    from avguide.scoring import score
    from avguide.training.run import predict_split

    gt = Corpus(corpus)
    dataset = TalkingFaceDataset(gt, "test")
    pred, true, templates = predict_split(load_animator(model_dir), dataset)
    expected, rows = score(pred, true, templates, gt.topology)
    preds = tmp_path / "preds"
    preds.mkdir()
    for utt, p in zip(dataset.rows["utterance"], pred):
        np.save(preds / f"{utt}.npy", p.reshape(len(p), -1))
    code, out, err = run(capsys, "evaluate", preds, corpus, "--split", "test", "--out", tmp_path / "m.json", "-q")
    assert code == 0, err
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert {k: metrics[k] for k in expected} == expected  # bit for bit, every metric
    per_utt = pd.read_csv(tmp_path / "m_per_utterance.csv")
    assert per_utt["utterance"].tolist() == dataset.rows["utterance"].tolist()
    assert per_utt.columns.tolist() == [
        "utterance",
        "subject",
        "split",
        "pred_frames",
        "gt_frames",
        "frames",
        "LVE",
        "MVE",
        "FDD",
    ]
    assert per_utt[["LVE", "MVE", "FDD"]].to_numpy() == pytest.approx(rows[["LVE", "MVE", "FDD"]].to_numpy(), rel=1e-15)
    assert metrics["utterances"] == 2 and metrics["frames"] == sum(len(p) for p in pred)
    assert "LVE" in out


def test_evaluate_truncates_small_frame_gaps_only(tmp_path, capsys, corpus):
    preds = tmp_path / "preds"
    preds.mkdir()
    gt = np.load(corpus / "vertices_npy" / "carol_sentence01.npy")
    np.save(preds / "carol_sentence01.npy", np.concatenate([gt, gt[-2:]]))  # 2 frames longer: truncated
    code, _, err = run(capsys, "evaluate", preds, corpus, "-q")
    assert code == 0, err
    metrics = json.loads((preds / "metrics.json").read_text())
    assert metrics["truncated"] == 1 and metrics["LVE"] == 0.0 and metrics["MVE"] == 0.0
    np.save(preds / "carol_sentence01.npy", gt[:-3])  # 3 frames short: an error naming the file
    code, _, err = run(capsys, "evaluate", preds, corpus, "-q")
    assert code == 1 and "carol_sentence01.npy" in err and "more than 2 frames apart" in err


def test_evaluate_refuses_wrong_vertex_count_and_unknown_files(tmp_path, capsys, corpus):
    preds = tmp_path / "preds"
    preds.mkdir()
    np.save(preds / "carol_sentence01.npy", np.zeros((20, (V - 1) * 3), np.float32))
    code, _, err = run(capsys, "evaluate", preds, corpus, "-q")
    assert code == 1 and str(preds / "carol_sentence01.npy") in err and f"{V - 1} vertices per frame" in err
    (preds / "carol_sentence01.npy").unlink()
    np.save(preds / "dave_sentence01.npy", np.zeros((20, V * 3), np.float32))
    code, _, err = run(capsys, "evaluate", preds, corpus, "-q")
    assert code == 1 and "no utterance 'dave_sentence01'" in err
    code, _, err = run(capsys, "evaluate", preds, corpus, "--dataset", "vocaset", "-q")
    assert code == 1 and "vocaset meshes have 5023" in err


# --- render -------------------------------------------------------------------------------------------


def test_render_face_and_mouth_with_sound(tmp_path, capsys, corpus):
    from avguide.render.video import read_video

    vertices = corpus / "vertices_npy" / "alice_sentence01.npy"
    n = len(np.load(vertices))
    code, _, err = run(
        capsys,
        "render",
        vertices,
        "--audio",
        corpus / "wav" / "alice_sentence01.wav",
        "--corpus",
        corpus,
        "--subject",
        "alice",
        "--mouth",
        "--out",
        tmp_path / "mouth.mp4",
        "-q",
    )
    assert code == 0, err
    frames, _ = read_video(tmp_path / "mouth.mp4")
    assert frames.shape == (n, 88, 88) and has_audio_stream(tmp_path / "mouth.mp4")
    code, _, err = run(capsys, "render", vertices, "--corpus", corpus, "--size", "48", "--out", tmp_path / "f.mp4")
    assert code == 0, err
    assert read_video(tmp_path / "f.mp4")[0].shape == (n, 48, 48)


def test_render_refuses_a_vertex_count_that_is_not_the_templates(tmp_path, capsys, corpus):
    bad = tmp_path / "bad.npy"
    np.save(bad, np.zeros((10, (V + 5) * 3), np.float32))
    code, _, err = run(capsys, "render", bad, "--corpus", corpus, "-q")
    assert code == 1 and str(bad) in err and f"{V + 5} vertices per frame" in err and f"has {V}" in err
    assert not (tmp_path / "bad.mp4").exists()


# --- transcribe ---------------------------------------------------------------------------------------


def test_transcribe_without_the_expert_says_so(tmp_path, capsys):
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"")
    (tmp_path / "expert").mkdir()
    code, _, err = run(capsys, "transcribe", video, "--model-dir", tmp_path / "expert")
    assert code == 1 and f"{tmp_path / 'expert' / 'judge'}: no trained judge here" in err
    code, _, err = run(capsys, "transcribe", video, "--model-dir", tmp_path / "missing")
    assert code == 1 and "expert model folder not found" in err


def test_transcribe_prints_what_the_evaluation_records(tmp_path, capsys, corpus, monkeypatch, one_thread):
    """A tiny random judge saved with its decoding settings (not the defaults): `avguide transcribe` of each
    rendered test clip prints the transcript the evaluate stage's decoding (evaluate.read_renders) records for
    that clip, both decoding with the saved settings. H.264 is not lossless, so the evaluation is handed the
    frames the video files hold."""
    import avguide.evaluate
    import avguide.models.expert
    from avguide.data.corpus import Corpus
    from avguide.evaluate import read_renders
    from avguide.models.expert import Decoding, Expert, ExpertConfig, load_expert, save_reader
    from avguide.render.mouth import MouthView
    from avguide.render.video import read_video, write_video
    from avguide.training.guide import render_items

    torch.manual_seed(0)
    saved = Decoding(beam_size=3, ctc_weight=0.5)
    save_reader(Expert(ExpertConfig(mode="video", fps=FPS, **TINY_READER)), tmp_path / "expert" / "judge", saved)
    judge = load_expert(tmp_path / "expert" / "judge", map_location="cpu")
    assert judge.decoding == saved

    gt = Corpus(corpus)
    view = MouthView(gt.topology)
    items = render_items(gt, "test", view, progress=False)
    clips = []
    for item in items:
        clips.append(write_video(tmp_path / f"{item['utterance']}.mp4", item["video"].numpy(), FPS))
        item["video"] = torch.from_numpy(read_video(clips[-1])[0])

    used, search = [], avguide.models.expert.joint_beam_search

    def spy(model, enc, lengths, beam_size, ctc_weight):
        used.append((beam_size, ctc_weight))
        return search(model, enc, lengths, beam_size, ctc_weight)

    monkeypatch.setattr(avguide.models.expert, "joint_beam_search", spy)
    monkeypatch.setattr(avguide.evaluate, "render_items", lambda *args, **kw: items)
    refs, (hyps,) = read_renders([judge], gt, None, progress=False)
    assert refs == gt.split("test")["text"].tolist() and all(hyps)  # a random reader reads something
    for clip, hyp in zip(clips, hyps):
        code, out, err = run(capsys, "transcribe", clip, "--model-dir", tmp_path / "expert")
        assert code == 0, err
        assert out == hyp + "\n"
    assert set(used) == {(3, 0.5)} and len(used) == 1 + len(clips)  # one batch in the evaluation, one per command
