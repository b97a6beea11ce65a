"""VOCASET / BIWI readers on tiny fixtures written in the datasets' real on-disk formats."""

from __future__ import annotations

import json
import logging
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from avguide.data.audio import resample
from avguide.data.biwi import prepare_biwi
from avguide.data.corpus import MANIFEST_COLUMNS, Corpus, CorpusError
from avguide.data.readers import read_faces
from avguide.data.vocaset import prepare_vocaset

V = 30
FACES = np.array([(i, i + 1, i + 2) for i in range(V - 2)], dtype=np.int64)
LIPS, UPPER = [0, 1, 2, 3, 4], [20, 21, 22]
TRAIN, VAL, TEST = "FaceTalk_170728_03272_TA", "FaceTalk_170811_03275_TA", "FaceTalk_170809_00138_TA"


# ---------------------------------------------------------------- fixture writers


def write_ply(path: Path, faces: np.ndarray | list, binary: bool) -> None:
    """FLAME_sample.ply style: VCGLIB header, float xyz, `property list uchar int vertex_indices`."""
    verts = np.random.default_rng(0).normal(size=(V, 3)).astype("<f4")
    fmt = "binary_little_endian" if binary else "ascii"
    header = (
        f"ply\nformat {fmt} 1.0\ncomment VCGLIB generated\nelement vertex {V}\n"
        "property float x\nproperty float y\nproperty float z\n"
        f"element face {len(faces)}\nproperty list uchar int vertex_indices\nend_header\n"
    )
    with open(path, "wb") as f:
        f.write(header.encode("ascii"))
        if binary:
            f.write(verts.tobytes())
            for face in faces:
                f.write(struct.pack(f"<B{len(face)}i", len(face), *face))
        else:
            f.writelines(f"{x:.6f} {y:.6f} {z:.6f}\n".encode() for x, y, z in verts)
            f.writelines(f"{len(face)} {' '.join(map(str, face))}\n".encode() for face in faces)


def write_regions(d: Path, lips: list[int] = LIPS) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "lve.txt").write_text(", ".join(map(str, lips)))  # CodeTalker style
    (d / "fdd.txt").write_text("\n".join(map(str, UPPER[:2])) + " " + str(UPPER[2]) + "\n")
    return d


def write_pickle(path: Path, obj: object) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)  # the releases are Python 2 pickles


def sine(n: int, sr: int, f0: float = 220.0) -> np.ndarray:
    return (0.4 * np.sin(2 * np.pi * f0 * np.arange(n) / sr)).astype(np.float32)


def motion(rng: np.random.Generator, template: np.ndarray, n: int) -> np.ndarray:
    return (template + 0.01 * rng.normal(size=(n, V, 3))).astype(np.float32)


TEXTS = {"sentence01": "Hello, World!  It's 3pm", "sentence02": "Don\u2019t STOP-now"}
NORMALISED = {"sentence01": "hello world it's pm", "sentence02": "don't stop now"}


def write_texts(d: Path, sentences: list[str]) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    for q in sentences:
        (d / f"{q}.txt").write_text(TEXTS.get(q, f"text of {q}") + "\n")
    return d


def make_raw(root: Path, broken: bool = False) -> dict:
    """VOCASET release: data_verts.npy (60 fps, rows shuffled), the three pickles. Returns expectations."""
    rng = np.random.default_rng(1)
    raw = root / "raw"
    raw.mkdir(parents=True)
    templates = {s: rng.normal(size=(V, 3)) for s in (TRAIN, VAL, TEST)}
    keys = [(s, q) for s in templates for q in ("sentence01", "sentence02")]
    items = {k: 24 + 6 * i for i, k in enumerate(keys)}  # motion frames at 60 fps
    audio_s = {k: n / 60 for k, n in items.items()}  # audio exactly as long as the motion
    if broken:
        items[(TRAIN, "sentence03")] = 20  # motion, no audio
        audio_s[(TRAIN, "sentence04")] = 0.5  # audio, empty frame index
        items[(TRAIN, "sentence05")], audio_s[(TRAIN, "sentence05")] = 30, 2.0  # 1.5 s apart
        items[(TRAIN, "sentence06")], audio_s[(TRAIN, "sentence06")] = 30, 0.6  # 0.1 s apart: trimmed
    frames = {k: motion(rng, templates[k[0]], n) for k, n in items.items()}
    n_rows = sum(items.values())
    rows = iter(rng.permutation(n_rows))
    data_verts = np.zeros((n_rows, V, 3), np.float32)
    index: dict = {s: {} for s in templates}
    for (s, q), seq in frames.items():
        numbers = 100 + np.arange(len(seq))  # frame numbers, stored in shuffled key order
        order = rng.permutation(len(seq))
        idx = {}
        for j in order:
            idx[int(numbers[j])] = r = int(next(rows))
            data_verts[r] = seq[j]
        index[s][q] = idx
    if broken:
        index[TRAIN]["sentence04"] = {}
    np.save(raw / "data_verts.npy", data_verts)
    pcm = {k: (sine(round(t * 22000), 22000) * 32767).astype(np.int16) for k, t in audio_s.items()}
    raw_audio: dict = {s: {} for s in templates}
    for (s, q), a in pcm.items():
        raw_audio[s][q] = {"audio": a, "sample_rate": 22000}
    write_pickle(raw / "raw_audio_fixed.pkl", raw_audio)
    write_pickle(raw / "templates.pkl", templates)
    write_pickle(raw / "subj_seq_to_idx.pkl", index)
    write_ply(root / "FLAME_sample.ply", FACES, binary=True)
    write_regions(root / "regions")
    write_texts(root / "texts", [f"sentence{i:02d}" for i in range(1, 7)])
    return {"frames": frames, "pcm": pcm, "templates": templates}


def vocaset_args(root: Path) -> dict:
    return dict(transcripts_dir=root / "texts", regions_dir=root / "regions", faces_path=root / "FLAME_sample.ply")


def make_processed(root: Path, subjects: list[str], sentences: list[str], fps: int) -> dict:
    """Processed layout: wav/<utt>.wav (first one 44.1 kHz stereo, others 16 kHz mono), vertices_npy/<utt>.npy."""
    rng = np.random.default_rng(2)
    proc = root / "processed"
    (proc / "wav").mkdir(parents=True)
    (proc / "vertices_npy").mkdir()
    templates = {s: rng.normal(size=(V, 3)).astype(np.float32) for s in subjects}
    write_pickle(proc / "templates.pkl", templates)
    expected = {}
    for i, (s, q) in enumerate((s, q) for s in subjects for q in sentences):
        n = 10 + 3 * i
        verts = motion(rng, templates[s], n)
        np.save(proc / "vertices_npy" / f"{s}_{q}.npy", verts.reshape(n, -1))
        if i == 0:
            left = sine(round(n / fps * 44100), 44100)
            sf.write(proc / "wav" / f"{s}_{q}.wav", np.stack([left, 0.5 * left], axis=1), 44100, subtype="FLOAT")
            audio = resample(0.75 * left, 44100)
        else:
            audio = sine(round(n / fps * 16000), 16000)
            sf.write(proc / "wav" / f"{s}_{q}.wav", audio, 16000, subtype="FLOAT")
        expected[f"{s}_{q}"] = (verts, audio)
    return {"expected": expected, "templates": templates}


# ---------------------------------------------------------------- round trips


def test_raw_vocaset_round_trip(tmp_path: Path) -> None:
    fx = make_raw(tmp_path)
    out = prepare_vocaset(tmp_path / "out", raw_dir=tmp_path / "raw", **vocaset_args(tmp_path))
    corpus = Corpus(out)
    assert list(corpus.manifest.columns[: len(MANIFEST_COLUMNS)]) == MANIFEST_COLUMNS
    assert len(corpus) == 6
    assert corpus.subjects == {"train": [TRAIN], "val": [VAL], "test": [TEST]}
    for (s, q), seq in fx["frames"].items():
        utt = f"{s}_{q}"
        row = corpus.row(utt)
        np.testing.assert_array_equal(corpus.vertices(utt), seq[::2])  # frame-number order, 60 -> 30 fps
        assert row["n_frames"] == len(seq[::2]) and row["fps"] == 30 and row["text"] == NORMALISED[q]
        assert row["wav"] == f"wav/{utt}.wav" and row["vertices"] == f"vertices_npy/{utt}.npy"
        wav = corpus.audio(utt)
        assert sf.info(out / row["wav"]).samplerate == 16000
        assert abs(len(wav) / 16000 - len(seq) / 60) < 1e-3
        np.testing.assert_allclose(wav, resample(fx["pcm"][(s, q)] / 32768, 22000), atol=2e-4)
        corpus.load(utt)
    for s, t in fx["templates"].items():
        np.testing.assert_allclose(corpus.templates[s], t, rtol=1e-6)
    np.testing.assert_array_equal(corpus.topology.faces, FACES)
    np.testing.assert_array_equal(corpus.topology.lip_ids, LIPS)
    np.testing.assert_array_equal(corpus.topology.upper_face_ids, UPPER)
    report = json.loads((out / "prepare_report.json").read_text())
    assert report == {"written": 6, "skipped": 0, "trimmed": 0, "reasons": []}


def test_raw_vocaset_skips_and_counts_broken_items(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    make_raw(tmp_path, broken=True)
    with caplog.at_level(logging.WARNING):
        out = prepare_vocaset(tmp_path / "out", raw_dir=tmp_path / "raw", **vocaset_args(tmp_path))
    report = json.loads((out / "prepare_report.json").read_text())
    assert (report["written"], report["skipped"], report["trimmed"]) == (7, 3, 1)
    reasons = {r["utterance"]: r["reason"] for r in report["reasons"]}
    assert set(reasons) == {f"{TRAIN}_sentence03", f"{TRAIN}_sentence04", f"{TRAIN}_sentence05"}
    assert "raw_audio_fixed.pkl: no audio" in reasons[f"{TRAIN}_sentence03"]
    assert "subj_seq_to_idx.pkl: empty frame index" in reasons[f"{TRAIN}_sentence04"]
    assert "more than" in reasons[f"{TRAIN}_sentence05"]
    skipped_logs = [r.getMessage() for r in caplog.records if "skipping broken item" in r.getMessage()]
    assert len(skipped_logs) == 3 and f"{TRAIN}_sentence05" in " ".join(skipped_logs)
    assert any("skipped 3 broken" in r.getMessage() for r in caplog.records)
    corpus = Corpus(out)
    assert f"{TRAIN}_sentence05" not in set(corpus.manifest["utterance"])
    trimmed = f"{TRAIN}_sentence06"  # 15 motion frames at 30 fps, 0.6 s of audio -> audio cut to 0.5 s
    assert corpus.row(trimmed)["n_frames"] == 15 and len(corpus.audio(trimmed)) == 8000
    corpus.load(trimmed)


def test_processed_vocaset_round_trip(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    fx = make_processed(tmp_path, [TRAIN, TEST], ["sentence01", "sentence02"], fps=30)
    write_ply(tmp_path / "FLAME_sample.ply", FACES, binary=False)
    write_regions(tmp_path / "regions")
    write_texts(tmp_path / "texts", ["sentence01", "sentence02"])
    with caplog.at_level(logging.WARNING):
        out = prepare_vocaset(tmp_path / "out", processed_dir=tmp_path / "processed", **vocaset_args(tmp_path))
    assert any("2 channels, downmixed" in r.getMessage() for r in caplog.records)
    corpus = Corpus(out)
    assert sorted(corpus.manifest["utterance"]) == sorted(fx["expected"])
    assert corpus.subjects == {"train": [TRAIN], "val": [], "test": [TEST]}
    for utt, (verts, audio) in fx["expected"].items():
        np.testing.assert_array_equal(corpus.vertices(utt), verts)
        assert sf.info(out / corpus.row(utt)["wav"]).channels == 1
        np.testing.assert_allclose(corpus.audio(utt), audio, atol=1e-4)
        assert corpus.row(utt)["text"] == NORMALISED[corpus.row(utt)["sentence"]]
    np.testing.assert_array_equal(corpus.topology.faces, FACES)


def test_processed_vocaset_at_60_fps(tmp_path: Path) -> None:
    fx = make_processed(tmp_path, [VAL], ["sentence01"], fps=60)
    write_ply(tmp_path / "FLAME_sample.ply", FACES, binary=True)
    write_regions(tmp_path / "regions")
    write_texts(tmp_path / "texts", ["sentence01"])
    args = dict(processed_dir=tmp_path / "processed", **vocaset_args(tmp_path))
    with pytest.raises(CorpusError, match=r"wav.*about 2x the frames expected"):
        prepare_vocaset(tmp_path / "out", **args)
    corpus = Corpus(prepare_vocaset(tmp_path / "out", processed_fps=60, **args))
    verts, _ = fx["expected"][f"{VAL}_sentence01"]
    np.testing.assert_array_equal(corpus.vertices(f"{VAL}_sentence01"), verts[::2])


def test_biwi_round_trip(tmp_path: Path) -> None:
    fx = make_processed(tmp_path, ["F2", "F1"], ["e01", "e33", "e37"], fps=25)
    proc = tmp_path / "processed"
    write_regions(proc / "regions")
    obj = tmp_path / "BIWI.obj"
    quad_faces = "f 1/1/1 2/2/2 3/3/3 4/4/4\nf 5//5 6//6 7//7\n"
    obj.write_text("# BIWI\n" + "".join(f"v {i} 0 0\n" for i in range(V)) + "vt 0 0\n" + quad_faces + "f -1 -2 -3\n")
    (tmp_path / "texts").mkdir()
    (tmp_path / "texts" / "transcripts.csv").write_text(
        'sentence,text\ne01,"I\'m Fine, thanks."\ne33,Good MORNING\ne37,see   you\n'
    )
    out = prepare_biwi(tmp_path / "out", processed_dir=proc, transcripts_dir=tmp_path / "texts", faces_path=obj)
    corpus = Corpus(out)
    split = dict(zip(corpus.manifest["utterance"], corpus.manifest["split"]))
    assert split == {
        "F1_e01": "test", "F1_e33": "test", "F1_e37": "test", "F2_e01": "train", "F2_e33": "val", "F2_e37": "test",
    }  # fmt: skip
    assert set(corpus.manifest["fps"]) == {25}
    assert corpus.row("F2_e01")["text"] == "i'm fine thanks" and corpus.row("F1_e33")["text"] == "good morning"
    np.testing.assert_array_equal(corpus.topology.faces, [[0, 1, 2], [0, 2, 3], [4, 5, 6], [29, 28, 27]])
    for utt, (verts, audio) in fx["expected"].items():
        np.testing.assert_array_equal(corpus.vertices(utt), verts)
        np.testing.assert_allclose(corpus.audio(utt), audio, atol=1e-4)
        corpus.load(utt)


@pytest.mark.parametrize("binary", [False, True])
def test_ply_faces_ascii_and_binary(tmp_path: Path, binary: bool) -> None:
    path = tmp_path / "mesh.ply"
    write_ply(path, [[0, 1, 2], [2, 3, 4, 5]], binary=binary)
    np.testing.assert_array_equal(read_faces(path), [[0, 1, 2], [2, 3, 4], [2, 4, 5]])


# ---------------------------------------------------------------- bad inputs


def test_missing_folder_and_file(tmp_path: Path) -> None:
    make_raw(tmp_path)
    with pytest.raises(CorpusError, match=r"absent: folder not found"):
        prepare_vocaset(tmp_path / "out", raw_dir=tmp_path / "absent", **vocaset_args(tmp_path))
    (tmp_path / "raw" / "subj_seq_to_idx.pkl").unlink()
    with pytest.raises(CorpusError, match=r"subj_seq_to_idx\.pkl: file not found"):
        prepare_vocaset(tmp_path / "out", raw_dir=tmp_path / "raw", **vocaset_args(tmp_path))
    assert not (tmp_path / "out" / "manifest.csv").exists()


def test_missing_faces_and_region_files(tmp_path: Path) -> None:
    make_raw(tmp_path)
    args = vocaset_args(tmp_path) | {"faces_path": tmp_path / "nothing.ply"}
    with pytest.raises(CorpusError, match=r"nothing\.ply: file not found"):
        prepare_vocaset(tmp_path / "out", raw_dir=tmp_path / "raw", **args)
    (tmp_path / "regions" / "fdd.txt").unlink()
    with pytest.raises(CorpusError, match=r"fdd\.txt: file not found"):
        prepare_vocaset(tmp_path / "out", raw_dir=tmp_path / "raw", **vocaset_args(tmp_path))


def processed_fixture(tmp_path: Path, subjects: tuple[str, ...] = (TRAIN,)) -> dict:
    make_processed(tmp_path, subjects, ["sentence01", "sentence02"], fps=30)
    write_ply(tmp_path / "FLAME_sample.ply", FACES, binary=True)
    write_regions(tmp_path / "regions")
    write_texts(tmp_path / "texts", ["sentence01", "sentence02"])
    return dict(processed_dir=tmp_path / "processed", **vocaset_args(tmp_path))


def test_processed_missing_wav(tmp_path: Path) -> None:
    args = processed_fixture(tmp_path)
    (tmp_path / "processed" / "wav" / f"{TRAIN}_sentence02.wav").unlink()
    with pytest.raises(CorpusError, match=rf"{TRAIN}_sentence02\.wav: file not found"):
        prepare_vocaset(tmp_path / "out", **args)


def test_vertex_count_differs_from_template(tmp_path: Path) -> None:
    args = processed_fixture(tmp_path)
    npy = tmp_path / "processed" / "vertices_npy" / f"{TRAIN}_sentence01.npy"
    np.save(npy, np.zeros((10, (V - 1) * 3), np.float32))
    with pytest.raises(CorpusError, match=rf"{npy.name}: {V - 1} vertices per frame, the template has {V}"):
        prepare_vocaset(tmp_path / "out", **args)


def test_processed_lengths_disagree(tmp_path: Path) -> None:
    args = processed_fixture(tmp_path)
    sf.write(tmp_path / "processed" / "wav" / f"{TRAIN}_sentence02.wav", sine(16000, 16000), 16000)  # 1 s vs 13 frames
    expected = rf"{TRAIN}_sentence02\.wav.*30\.0 frames at 30 fps, but the motion has 13 frames"
    with pytest.raises(CorpusError, match=expected):
        prepare_vocaset(tmp_path / "out", **args)


def test_empty_transcript(tmp_path: Path) -> None:
    args = processed_fixture(tmp_path)
    (tmp_path / "texts" / "sentence02.txt").write_text("?! 42 \n")
    with pytest.raises(CorpusError, match=r"sentence02\.txt: transcript is empty after normalisation"):
        prepare_vocaset(tmp_path / "out", **args)


def test_missing_transcript(tmp_path: Path) -> None:
    args = processed_fixture(tmp_path)
    (tmp_path / "texts" / "sentence02.txt").unlink()
    with pytest.raises(CorpusError, match=rf"texts: no transcript for {TRAIN} sentence02 \(expected sentence02\.txt"):
        prepare_vocaset(tmp_path / "out", **args)


def test_region_ids_out_of_range(tmp_path: Path) -> None:
    args = processed_fixture(tmp_path)
    write_regions(tmp_path / "regions", lips=[1, 2, V])
    with pytest.raises(CorpusError, match=rf"lve\.txt: vertex ids must lie in 0\.\.{V - 1}; found 1\.\.{V}"):
        prepare_vocaset(tmp_path / "out", **args)


def test_unknown_subject_needs_splits(tmp_path: Path) -> None:
    args = processed_fixture(tmp_path, [TRAIN, "FaceTalk_999999_00000_TA"])
    with pytest.raises(CorpusError, match=r"\['FaceTalk_999999_00000_TA'\] are not in the VOCASET split table"):
        prepare_vocaset(tmp_path / "out", **args)
    splits = {"train": [TRAIN], "val": ["FaceTalk_999999_00000_TA_sentence01"], "test": ["FaceTalk_999999_00000_TA"]}
    corpus = Corpus(prepare_vocaset(tmp_path / "out", splits=splits, **args))
    assert dict(zip(corpus.manifest["utterance"], corpus.manifest["split"])) == {
        f"{TRAIN}_sentence01": "train", f"{TRAIN}_sentence02": "train",
        "FaceTalk_999999_00000_TA_sentence01": "val", "FaceTalk_999999_00000_TA_sentence02": "test",
    }  # fmt: skip


def test_bad_faces_files(tmp_path: Path) -> None:
    ply = tmp_path / "points.ply"
    ply.write_text("ply\nformat ascii 1.0\nelement vertex 1\nproperty float x\nend_header\n0\n")
    with pytest.raises(CorpusError, match=r"points\.ply: expected 'element face'"):
        read_faces(ply)
    short = tmp_path / "short.ply"
    write_ply(short, FACES, binary=True)
    short.write_bytes(short.read_bytes()[:-5])
    with pytest.raises(CorpusError, match=r"short\.ply: PLY data ends early"):
        read_faces(short)
    npy = tmp_path / "faces.npy"
    np.save(npy, FACES.astype(np.float32))
    with pytest.raises(CorpusError, match=r"faces\.npy: expected an \(F, 3\) integer array"):
        read_faces(npy)
