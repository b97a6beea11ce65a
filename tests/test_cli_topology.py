"""Real topologies end to end: `avguide animate --template` on meshes of FLAME's size (VOCASET, 5,023 vertices) and
BIWI's (23,370), the mouth camera and renders on such meshes (an open mouth without an interior shows the
background), and `avguide evaluate --dataset vocaset|biwi` on the public code's processed folders.

Everything is written here: a face-like dome with a mouth hole (a few hundred triangles) padded with vertices no
triangle uses to the dataset's vertex count, small random FaceFormers of those vertex counts, and tiny processed
folders. Commands run in-process through `main(argv)`.
"""

import json
import pickle
import struct

import numpy as np
import pytest
import torch

from avguide.cli import main
from avguide.data.audio import SAMPLE_RATE, save_wav
from avguide.data.corpus import Topology
from avguide.data.readers import read_mesh

FLAME, BIWI = 5023, 23370
ROWS, COLS = 18, 22  # the dome's grid: 396 vertices, 714 triangles (less the mouth hole's)
HOLE_ROWS, HOLE_COLS = (7, 10), (7, 14)  # quads removed: the open mouth


def face_mesh(n_vertices, hole=True, seed=0):
    """(n_vertices, 3) vertices, (F, 3) triangles (counter-clockwise seen from +z) and lip ids of a dome facing +z
    with a mouth hole; the vertices beyond the grid sit behind it, in no triangle."""
    ys, xs = np.mgrid[0:ROWS, 0:COLS]
    x, y = (xs - (COLS - 1) / 2) * 0.008, ((ROWS - 1) / 2 - ys) * 0.009
    grid = np.stack([x, y, 0.05 - 2.0 * (x**2 + y**2)], -1).reshape(-1, 3)
    rng = np.random.default_rng(seed)
    extra = rng.uniform([-0.06, -0.06, -0.08], [0.06, 0.06, -0.02], (n_vertices - len(grid), 3))
    faces = []
    for r in range(ROWS - 1):
        for c in range(COLS - 1):
            if hole and HOLE_ROWS[0] <= r < HOLE_ROWS[1] and HOLE_COLS[0] <= c < HOLE_COLS[1]:
                continue
            a = r * COLS + c  # rows go down the face: (a, a + COLS, a + 1) is counter-clockwise seen from +z
            faces += [(a, a + COLS, a + 1), (a + 1, a + COLS, a + COLS + 1)]
    ring = [
        r * COLS + c
        for r in range(HOLE_ROWS[0] - 1, HOLE_ROWS[1] + 2)
        for c in range(HOLE_COLS[0] - 1, HOLE_COLS[1] + 2)
    ]
    return np.concatenate([grid, extra]).astype(np.float32), np.array(faces, np.int64), np.array(ring)


def write_ply(path, vertices, faces=None, binary=True):
    """A PLY as FLAME_sample.ply is written (x, y, z floats, plus a colour the reader must skip)."""
    head = ["ply", f"format {'binary_little_endian' if binary else 'ascii'} 1.0", "comment written by the test"]
    head += [f"element vertex {len(vertices)}", "property float x", "property float y", "property float z"]
    head += ["property uchar red"]
    if faces is not None:
        head += [f"element face {len(faces)}", "property list uchar int vertex_indices"]
    head += ["end_header"]
    with open(path, "wb") as f:
        f.write(("\n".join(head) + "\n").encode())
        if binary:
            rows = np.zeros(len(vertices), [("xyz", "<f4", 3), ("red", "u1")])
            rows["xyz"], rows["red"] = vertices, 200
            f.write(rows.tobytes())
            for tri in [] if faces is None else faces:
                f.write(struct.pack("<Biii", 3, *map(int, tri)))
        else:
            f.write("".join(f"{x!r} {y!r} {z!r} 200\n" for x, y, z in vertices.tolist()).encode())
            f.write("".join(f"3 {a} {b} {c}\n" for a, b, c in ([] if faces is None else faces.tolist())).encode())
    return path


def write_obj(path, vertices, faces):
    lines = [f"v {x!r} {y!r} {z!r}" for x, y, z in vertices.tolist()]
    lines += [f"f {a + 1}/{a + 1} {b + 1}/{b + 1} {c + 1}/{c + 1}" for a, b, c in faces.tolist()]
    path.write_text("# written by the test\n" + "\n".join(lines) + "\n")
    return path


def noise_speech(seconds, seed=0, level=0.1):
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    return (level * rng.standard_normal(len(t)) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t))).astype(np.float32)


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def animator(folder, n_vertices, fps, subjects=None):
    """A small random FaceFormer of `n_vertices` (its output layer random, so the face moves with the audio)."""
    from avguide.models.checkpoint import save_checkpoint
    from avguide.models.faceformer import FaceFormer, FaceFormerConfig

    torch.manual_seed(0)
    named = {"subjects": subjects} if subjects else {}
    cfg = FaceFormerConfig(
        n_vertices=n_vertices, n_subjects=3, fps=fps, feature_dim=16, n_heads=2, max_frames=300, dropout=0.0, **named
    )
    model = FaceFormer(cfg)
    torch.nn.init.normal_(model.motion_out.weight, std=0.01)
    return save_checkpoint(model, folder)


VOCA_STYLES = ["FaceTalk_170728_03272_TA", "FaceTalk_170904_00128_TA", "FaceTalk_170725_00137_TA"]


@pytest.fixture(scope="module")
def flame(tmp_path_factory, one_thread):
    """A FLAME-size template as a binary PLY with faces, its lip ids as text, a 30 fps model naming its styles."""
    root = tmp_path_factory.mktemp("flame")
    vertices, faces, lips = face_mesh(FLAME)
    write_ply(root / "template.ply", vertices, faces)
    (root / "lve.txt").write_text("\n".join(map(str, lips)) + "\n")
    return dict(
        root=root, vertices=vertices, faces=faces, lips=lips, model=animator(root / "model", FLAME, 30.0, VOCA_STYLES)
    )


@pytest.fixture(scope="module")
def biwi(tmp_path_factory, one_thread):
    """A BIWI-size template as an OBJ, its lip ids as .npy, a 25 fps model without style names."""
    root = tmp_path_factory.mktemp("biwi")
    vertices, faces, lips = face_mesh(BIWI, seed=1)
    write_obj(root / "template.obj", vertices, faces)
    np.save(root / "lips.npy", lips)
    return dict(root=root, vertices=vertices, faces=faces, lips=lips, model=animator(root / "model", BIWI, 25.0))


@pytest.fixture
def speech(tmp_path):
    wav = tmp_path / "speech.wav"
    save_wav(wav, noise_speech(1.0))
    return wav


# --- the mesh files -----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["ply-binary", "ply-ascii", "obj"])
def test_read_mesh_gives_the_vertices_and_faces_back(tmp_path, kind):
    vertices, faces, _ = face_mesh(600)
    if kind == "obj":
        path = write_obj(tmp_path / "m.obj", vertices, faces)
    else:
        path = write_ply(tmp_path / "m.ply", vertices, faces, binary=kind == "ply-binary")
    v, f = read_mesh(path)
    np.testing.assert_array_equal(v, vertices)
    np.testing.assert_array_equal(f, faces)
    v, f = read_mesh(write_ply(tmp_path / "points.ply", vertices, binary=kind != "ply-ascii"))
    assert f is None and v.shape == (600, 3)


# --- animate ------------------------------------------------------------------------------------------


def test_animate_a_flame_size_ply_with_the_mouth_video(tmp_path, capsys, flame, speech):
    """VOCASET's size: the template and faces from one binary PLY, the mouth camera from the lip ids given, the
    style by the name the model's config lists."""
    from avguide.render.video import read_video

    out = tmp_path / "out"
    args = ["animate", speech, "--model", flame["model"], "--template", flame["root"] / "template.ply", "-q"]
    code, stdout, err = run(capsys, *args, "--lips", flame["root"] / "lve.txt", "--mouth", "--size", "48",
                            "--subject", VOCA_STYLES[1], "--obj", "--out", out)  # fmt: skip
    assert code == 0, err
    n = 30  # 1 s at the model's 30 fps
    vertices = np.load(out / "speech.npy")
    assert vertices.shape == (n, FLAME * 3) and vertices.dtype == np.float32
    moved = vertices.reshape(n, FLAME, 3)
    assert np.abs(moved - flame["vertices"]).max() > 1e-4 and np.abs(np.diff(moved, axis=0)).max() > 1e-6
    objs = sorted((out / "speech_obj").glob("*.obj"))
    assert len(objs) == n
    np.testing.assert_array_equal(read_mesh(objs[0])[1], flame["faces"])
    frames, fps = read_video(out / "speech.mp4")
    assert frames.shape == (n, 48, 48) and fps == 30
    middle = frames[:, 20:28, 20:28]  # the open mouth: background, black
    assert middle.max() < 40 and frames[:, :6].mean() > 80  # ... inside lit skin
    # the same style by index
    code, _, err = run(capsys, *args, "--subject", "1", "--no-video", "--out", tmp_path / "by_index")
    assert code == 0, err
    np.testing.assert_array_equal(np.load(tmp_path / "by_index" / "speech.npy"), vertices)


def test_animate_a_biwi_size_obj_with_the_face_video(tmp_path, capsys, biwi, speech):
    from avguide.render.video import read_video

    args = ["animate", speech, "--model", biwi["model"], "--template", biwi["root"] / "template.obj", "-q"]
    code, _, err = run(capsys, *args, "--size", "64", "--subject", "2", "--out", tmp_path)
    assert code == 0, err
    n = 25
    assert np.load(tmp_path / "speech.npy").shape == (n, BIWI * 3)
    frames, fps = read_video(tmp_path / "speech.mp4")
    assert frames.shape == (n, 64, 64) and fps == 25 and frames.max() > 80
    code, _, err = run(capsys, *args, "--lips", biwi["root"] / "lips.npy", "--mouth", "--size", "32", "--out", tmp_path)
    assert code == 0, err
    assert read_video(tmp_path / "speech.mp4")[0].shape == (n, 32, 32)


def test_a_npy_template_without_faces_writes_the_vertices_only(tmp_path, capsys, biwi, speech):
    np.save(tmp_path / "template.npy", biwi["vertices"])
    args = ["animate", speech, "--model", biwi["model"], "--template", tmp_path / "template.npy", "--out", tmp_path]
    code, _, err = run(capsys, *args, "-q")
    assert code == 1 and f"{tmp_path / 'template.npy'}: has no faces" in err and "--no-video" in err
    assert not (tmp_path / "speech.npy").exists()
    code, _, err = run(capsys, *args, "--no-video", "-q")
    assert code == 0, err
    assert np.load(tmp_path / "speech.npy").shape == (25, BIWI * 3)
    np.save(tmp_path / "faces.npy", biwi["faces"])  # --faces completes it
    code, _, err = run(capsys, *args, "--faces", tmp_path / "faces.npy", "--size", "32", "-q")
    assert code == 0, err
    assert (tmp_path / "speech.mp4").is_file()


def test_template_vertex_count_must_be_the_models(tmp_path, capsys, flame, speech):
    np.save(tmp_path / "small.npy", flame["vertices"][:5000])
    code, _, err = run(capsys, "animate", speech, "--model", flame["model"], "--template", tmp_path / "small.npy",
                       "--no-video", "--out", tmp_path, "-q")  # fmt: skip
    assert code == 1
    assert f"{tmp_path / 'small.npy'}: template has 5000 vertices" in err and "animates 5023" in err


def test_lip_ids_out_of_range_are_refused_before_the_model_loads(tmp_path, capsys, flame, speech):
    (tmp_path / "lips.txt").write_text("10 20 5023\n")
    code, _, err = run(capsys, "animate", speech, "--model", tmp_path / "no model", "--template",
                       flame["root"] / "template.ply", "--lips", tmp_path / "lips.txt", "--mouth", "-q")  # fmt: skip
    assert code == 1 and f"{tmp_path / 'lips.txt'}: vertex ids must lie in 0..5022; found 10..5023" in err
    code, _, err = run(capsys, "animate", speech, "--model", flame["model"], "--template",
                       flame["root"] / "template.ply", "--mouth", "-q")  # fmt: skip
    assert code == 1 and "--mouth frames the camera on the lips: pass --lips" in err


def test_a_file_that_is_not_a_mesh_is_refused(tmp_path, capsys, flame, speech):
    def animate(template, *extra):
        return run(capsys, "animate", speech, "--model", flame["model"], "--template", template, "--out", tmp_path,
                   "-q", *extra)  # fmt: skip

    fake = tmp_path / "head.ply"
    fake.write_text("solid head\nfacet normal 0 0 1\n")
    code, _, err = animate(fake)
    assert code == 1 and f"{fake}: not a PLY file" in err
    obj = tmp_path / "head.obj"
    obj.write_text("# an empty export\nmtllib head.mtl\n")
    code, _, err = animate(obj)
    assert code == 1 and f"{obj}: not a mesh: no vertex lines" in err
    points = write_ply(tmp_path / "points.ply", flame["vertices"])  # vertices only: fine without a video
    code, _, err = animate(points)
    assert code == 1 and f"{points}: has no faces" in err
    code, _, err = animate(points, "--no-video")
    assert code == 0, err
    code, _, err = animate(flame["root"] / "template.ply", "--faces", fake)
    assert code == 1 and f"{fake}: not a PLY file" in err
    code, _, err = animate(tmp_path / "missing.ply")
    assert code == 1 and "missing.ply: template file not found" in err


def test_unknown_style_lists_the_models_names(tmp_path, capsys, flame, biwi, speech):
    code, _, err = run(capsys, "animate", speech, "--model", flame["model"], "--template",
                       flame["root"] / "template.ply", "--subject", "zoe", "--no-video", "-q")  # fmt: skip
    assert code == 1 and "unknown subject 'zoe'" in err and ", ".join(VOCA_STYLES) in err
    code, _, err = run(capsys, "animate", speech, "--model", biwi["model"], "--template",
                       biwi["root"] / "template.obj", "--subject", "F2", "--no-video", "-q")  # fmt: skip
    assert code == 1 and "does not name its styles" in err and "index 0..2" in err
    code, _, err = run(capsys, "animate", speech, "--template", biwi["root"] / "template.obj", "--corpus", tmp_path)
    assert code == 1 and "give one" in err
    code, _, err = run(capsys, "animate", speech, "--lips", biwi["root"] / "lips.npy")
    assert code == 1 and "--lips go with --template" in err


def test_a_mesh_turned_away_from_the_camera_is_warned_about(tmp_path, capsys, flame, speech):
    vertices, faces = flame["vertices"], flame["faces"][:, ::-1]  # clockwise: back faces from the camera
    write_ply(tmp_path / "flipped.ply", vertices, faces)
    args = ["animate", speech, "--model", flame["model"], "--template", tmp_path / "flipped.ply", "--out", tmp_path]
    code, _, err = run(capsys, *args, "--lips", flame["root"] / "lve.txt", "--mouth", "--size", "16", "-q")
    assert code == 0, err
    assert "warning:" in err and "0% of the lip region's triangles face the camera" in err


# --- the mouth view on these meshes -------------------------------------------------------------------


def head_with_open_mouth():
    """A FLAME-like head without a mouth interior: the face (with the mouth hole) and, behind it, the back of the
    head, whose triangles face away from the camera (counter-clockwise seen from -z)."""
    face, faces, lips = face_mesh(ROWS * COLS)
    back = face * np.array([1, 1, -1], np.float32) - np.array([0, 0, 0.05], np.float32)  # mirrored behind
    _, back_faces, _ = face_mesh(ROWS * COLS, hole=False)
    vertices = np.concatenate([face, back])
    return vertices, np.concatenate([faces, back_faces[:, ::-1] + len(face)]), lips, len(faces)


def hole_pixels(camera, margin=2.0):
    """Image rows and columns well inside the mouth hole (`margin` pixels from its edges)."""
    x0 = (HOLE_COLS[0] - (COLS - 1) / 2) * 0.008
    x1 = (HOLE_COLS[1] - (COLS - 1) / 2) * 0.008
    y0, y1 = ((ROWS - 1) / 2 - HOLE_ROWS[0]) * 0.009, ((ROWS - 1) / 2 - HOLE_ROWS[1]) * 0.009
    px = camera.transform(torch.tensor([[x0, y0, 0.0], [x1, y1, 0.0]]))
    (c0, r0), (c1, r1) = px[0, :2].tolist(), px[1, :2].tolist()
    return slice(int(np.ceil(r0 + margin)), int(r1 - margin)), slice(int(np.ceil(c0 + margin)), int(c1 - margin))


def test_an_open_mouth_without_interior_shows_the_background():
    """The paper's renders of FLAME show the background through the open mouth: the back of the head faces away
    and is culled. Both in the expert's mouth view (background black) and with another background grey."""
    from avguide.render import MeshRenderer, RasterSettings, ShaderSettings, mouth_camera
    from avguide.render.mouth import MouthView

    vertices, faces, lips, n_front = head_with_open_mouth()
    view = MouthView(Topology(faces=faces, lip_ids=lips, upper_face_ids=np.arange(COLS)), size=88)
    frame = view.clip(torch.from_numpy(vertices)[None], vertices)[0].numpy()
    rows, cols = hole_pixels(view.renderer(vertices).camera)
    assert frame[rows, cols].size >= 100
    assert np.all(frame[rows, cols] == 0.0)  # exactly the background
    assert frame[:4].min() > 0.3 and frame[-4:].min() > 0.3  # the lips and the skin around them are lit

    camera = mouth_camera(vertices, lips, size=88)
    grey = ShaderSettings(background=0.5)
    image = MeshRenderer(camera, RasterSettings(88), grey)(torch.from_numpy(vertices)[None], torch.from_numpy(faces),
                                                          torch.full((len(vertices),), 0.9))[0].numpy()  # fmt: skip
    assert np.all(image[rows, cols] == 0.5)
    # control: were the back of the head turned towards the camera, the hole would show it, not the background
    inward = np.concatenate([faces[:n_front], faces[n_front:, ::-1]])
    seen = MeshRenderer(camera, RasterSettings(88), grey)(torch.from_numpy(vertices)[None], torch.from_numpy(inward),
                                                         torch.full((len(vertices),), 0.9))[0].numpy()  # fmt: skip
    assert np.all(seen[rows, cols] != 0.5)


def test_the_mouth_camera_is_framed_from_the_mesh_alone():
    """No constant of the synthetic head: the same mesh scaled and moved renders the same mouth crop, with the lip
    region filling the frame but for the margin, and the view takes meshes whose last vertices are in no
    triangle (uniform albedo sized by the vertices)."""
    from avguide.render.mouth import MouthView

    vertices, faces, lips = face_mesh(FLAME)
    topology = Topology(faces=faces, lip_ids=lips, upper_face_ids=np.arange(COLS))
    view = MouthView(topology, size=64)
    moved = vertices * 1.7 + np.array([0.3, -0.2, 0.1], np.float32)
    a = view.clip(torch.from_numpy(vertices)[None], vertices)[0]
    b = view.clip(torch.from_numpy(moved)[None], moved)[0]
    assert torch.allclose(a, b, atol=1e-3) and a.std() > 0.1
    camera = view.renderer(moved).camera
    px = camera.transform(torch.from_numpy(moved[lips]))[:, :2]
    span = px.max(0).values - px.min(0).values
    assert px.min() >= 0 and px.max() <= 64 and span.max() == pytest.approx(64 / 1.1, rel=1e-4)


# --- evaluate -----------------------------------------------------------------------------------------


def processed_folder(root, n_vertices, gt_fps, fps, names, lips, upper=None, seed=0):
    """The public code's processed layout: vertices_npy/<utt>.npy at gt_fps, regions/, templates.pkl; and
    predictions at fps (the truth plus noise on some vertices). Returns {utterance: (prediction, truth at fps)}."""
    rng = np.random.default_rng(seed)
    (root / "vertices_npy").mkdir(parents=True)
    (root / "regions").mkdir()
    (root / "regions" / "lve.txt").write_text(" ".join(map(str, lips)))
    if upper is not None:
        (root / "regions" / "fdd.txt").write_text(", ".join(map(str, upper)))
    subjects = sorted({n.rsplit("_", 1)[0] for n in names})
    templates = {s: rng.normal(0, 0.05, (n_vertices, 3)).astype(np.float32) for s in subjects}
    with open(root / "templates.pkl", "wb") as f:
        pickle.dump(templates, f)
    out = {}
    step = int(gt_fps // fps)
    for k, name in enumerate(names):
        n = 8 + k
        motion = rng.normal(0, 0.002, (n * step, n_vertices, 3)).astype(np.float32)
        gt = templates[name.rsplit("_", 1)[0]] + motion
        np.save(root / "vertices_npy" / f"{name}.npy", gt.reshape(len(gt), -1))
        true = gt[::step]
        pred = true + rng.normal(0, 0.001, true.shape).astype(np.float32)
        out[name] = (pred, true, templates[name.rsplit("_", 1)[0]])
    return out


def test_evaluate_a_vocaset_processed_folder(tmp_path, capsys):
    """VOCASET's convention: ground truth at 60 fps, every 2nd frame kept; predictions at 30 fps, one per style as
    the public test script names them; LVE over regions/lve.txt, FDD over regions/fdd.txt with templates.pkl."""
    from avguide.metrics import fdd, lve, mve

    lips, upper = np.arange(100, 160), np.arange(3000, 3100)
    gt_dir = tmp_path / "vocaset"
    names = ["FaceTalk_170809_00138_TA_sentence01", "FaceTalk_170731_00024_TA_sentence02"]
    items = processed_folder(gt_dir, FLAME, 60, 30, names, lips, upper)
    preds = tmp_path / "preds"
    preds.mkdir()
    for name, (pred, _, _) in items.items():
        for style in VOCA_STYLES[:2]:
            np.save(preds / f"{name}_condition_{style}.npy", pred.reshape(len(pred), -1))
    code, out, err = run(capsys, "evaluate", preds, gt_dir, "--dataset", "vocaset", "-q")
    assert code == 0, err
    metrics = json.loads((preds / "metrics.json").read_text())
    pred, true, tmpl = zip(*[items[n] for n in names for _ in range(2)])
    assert metrics["utterances"] == 4 and metrics["frames"] == 2 * (8 + 9) and metrics["truncated"] == 0
    assert metrics["fps"] == 30 and metrics["gt_fps"] == 60
    assert metrics["LVE"] == pytest.approx(lve(pred, true, lips), rel=1e-12)
    assert metrics["MVE"] == pytest.approx(mve(pred, true), rel=1e-12)
    assert metrics["FDD"] == pytest.approx(fdd(pred, true, tmpl, upper), rel=1e-12)
    static = [np.broadcast_to(t, v.shape) for t, v in zip(tmpl, true)]
    assert metrics["static_template_LVE"] == pytest.approx(lve(static, true, lips), rel=1e-12)
    rows = (preds / "metrics_per_utterance.csv").read_text().splitlines()
    assert rows[0] == "utterance,subject,style,pred_frames,gt_frames,frames,LVE,MVE,FDD"
    firsts = sorted(",".join(r.split(",")[:6]) for r in rows[1:])
    assert firsts[2] == f"{names[0]},FaceTalk_170809_00138_TA,{VOCA_STYLES[0]},8,16,8"
    assert firsts[0] == f"{names[1]},FaceTalk_170731_00024_TA,{VOCA_STYLES[0]},9,18,9"
    assert "LVE" in out

    # ground truth already at 30 fps: the gap is an error that says what to pass
    at30 = tmp_path / "at30"
    processed_folder(at30, FLAME, 30, 30, names[:1], lips)
    (preds / "x").mkdir()
    np.save(preds / "x" / f"{names[0]}.npy", items[names[0]][0].reshape(8, -1))
    code, _, err = run(capsys, "evaluate", preds / "x", at30, "--dataset", "vocaset", "-q")
    assert code == 1 and f"{names[0]}.npy" in err and "pass --gt-fps 30" in err
    code, _, err = run(capsys, "evaluate", preds / "x", at30, "--dataset", "vocaset", "--gt-fps", "30", "-q")
    assert code == 0, err
    assert json.loads((preds / "x" / "metrics.json").read_text())["FDD"] is None  # no fdd.txt: not scored


def test_evaluate_a_biwi_processed_folder_with_regions_given(tmp_path, capsys):
    from avguide.metrics import lve

    lips = np.arange(20000, 20200)
    gt_dir = tmp_path / "biwi"
    items = processed_folder(gt_dir, BIWI, 25, 25, ["F1_e37", "M3_e38"], np.arange(10))
    preds = tmp_path / "preds"
    preds.mkdir()
    for name, (pred, _, _) in items.items():
        np.save(preds / f"{name}.npy", pred.reshape(len(pred), -1))
    np.save(tmp_path / "lips.npy", lips)
    upper = np.zeros(BIWI, bool)
    upper[:5000] = True
    np.save(tmp_path / "upper.npy", upper)  # a boolean mask works too
    args = ["evaluate", preds, gt_dir, "--dataset", "biwi", "--lips", tmp_path / "lips.npy", "-q"]
    code, _, err = run(capsys, *args, "--upper-face", tmp_path / "upper.npy", "--out", tmp_path / "m.json")
    assert code == 0, err
    metrics = json.loads((tmp_path / "m.json").read_text())
    pred, true, _ = zip(*items.values())
    assert metrics["LVE"] == pytest.approx(lve(pred, true, lips), rel=1e-12) and metrics["gt_fps"] == 25
    assert metrics["FDD"] is not None and metrics["lips"] == str(tmp_path / "lips.npy")

    (tmp_path / "bad.txt").write_text("1 2 23370")
    code, _, err = run(capsys, "evaluate", preds, gt_dir, "--dataset", "biwi", "--lips", tmp_path / "bad.txt", "-q")
    assert code == 1 and f"{tmp_path / 'bad.txt'}: vertex ids must lie in 0..23369; found 1..23370" in err
    np.save(preds / "F9_e01.npy", items["F1_e37"][0].reshape(8, -1))
    code, _, err = run(capsys, *args)
    assert code == 1 and "F9_e01.npy: no ground truth" in err
    code, _, err = run(capsys, "evaluate", preds, gt_dir, "-q")  # the default dataset needs a corpus
    assert code == 1 and "manifest" in err
