"""The `avguide` command line: animate your own speech, score any method's predictions, render vertex
sequences as videos with sound, and read lips with the expert.

    avguide animate SPEECH.wav [--model DIR] [--corpus DIR] [--subject NAME] [--out DIR] [--obj] [--no-video]
    avguide animate SPEECH.wav --model DIR --template T.npy|.ply|.obj [--faces MESH] [--lips IDS] [--subject NAME]
    avguide evaluate PRED_DIR GT_DIR [--dataset synth3d|vocaset|biwi] [--split test] [--out metrics.json]
    avguide evaluate PRED_DIR GT_DIR --dataset vocaset|biwi [--lips IDS] [--upper-face IDS] [--templates T]
    avguide render VERTICES.npy [--audio SPEECH.wav] [--corpus DIR] [--subject NAME | --template T.npy] [--mouth]
    avguide transcribe VIDEO [--audio SPEECH.wav] [--model-dir DIR]
    avguide convert faceformer CKPT.pth --dataset vocaset|biwi [--subjects NAME...] --out DIR
    avguide convert codetalker STAGE1.pth.tar STAGE2.pth.tar --dataset vocaset|biwi --out DIR
    avguide convert autoavsr CKPT.pth --spm unigram5000.model --modality av|video|audio --out DIR

Common options: -q (no progress bars), --threads N (torch's CPU threads).
Exit codes: 0 done, 1 bad input (the message on stderr says what was expected, what was found and in
which file), 2 bad command line. Default folders come from the project's params.yaml when run inside
the project (prepare.out, train.out), else data/... below the working directory. The logic lives in
the library (avguide.inference, avguide.models.registry, avguide.scoring, avguide.render.stream,
avguide.reading); heavy modules are imported only by the command that needs them, so `avguide --help` is
instant and a bad input file is refused before torch and the models are loaded.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path


class CommandError(ValueError):
    """Bad input for a command: printed as one line on stderr, exit code 1."""


# --- helpers ------------------------------------------------------------------------------------------


def _project_default(params_key: tuple[str, ...], fallback: str, suffix: str = "") -> Path:
    """A default folder from params.yaml (e.g. prepare.out) below the project root, else `fallback`."""
    try:
        from avguide.params import load_params, project_root

        root = project_root()
        value = load_params(root / "params.yaml")
        for key in params_key:
            value = value[key]
        return root / str(value) / suffix if suffix else root / str(value)
    except (FileNotFoundError, KeyError, TypeError, ValueError):
        return Path(fallback)


def _default_corpus() -> Path:
    return _project_default(("prepare", "out"), "data/corpus/synth3d")


def _default_model() -> Path:
    return _project_default(("train", "out"), "data/animators/faceformer/model", "faceformer/model")


def _load_corpus(folder: Path | None):
    from avguide.data.corpus import Corpus

    folder = folder or _default_corpus()
    if not folder.is_dir():
        raise CommandError(
            f"{folder}: corpus folder not found; expected the model's training corpus "
            f"(manifest.csv, templates.npz, topology.npz): pass --corpus"
        )
    return Corpus(folder)


def _pick_subject(corpus, name: str | None, any_split: bool = False) -> tuple[str, int]:
    """(subject, style index among the training subjects; -1 if not a training subject)."""
    train = [str(s) for s in corpus.subjects["train"]]
    allowed = sorted(corpus.templates) if any_split else train
    if not allowed:
        raise CommandError(f"{corpus.root / 'manifest.csv'}: no training subjects; expected at least one")
    name = name if name is not None else (train[0] if train else allowed[0])
    if name not in allowed:
        kind = "subjects" if any_split else "training subjects"
        raise CommandError(f"unknown subject {name!r}; the {kind} of {corpus.root} are: {', '.join(allowed)}")
    return name, train.index(name) if name in train else -1


def _camera(template, lip_ids, mouth: bool, size: int | None):
    from avguide.render import face_camera, mouth_camera

    size = size or (88 if mouth else 256)
    if size <= 0 or size % 2:
        raise CommandError(f"--size must be a positive even number of pixels (H.264); got {size}")
    return mouth_camera(template, lip_ids, size=size) if mouth else face_camera(template, size=size)


# --- animate ------------------------------------------------------------------------------------------


def cmd_animate(args) -> int:
    from avguide.data.audio import load_wav
    from avguide.inference import check_speech

    audio_path = Path(args.audio)
    mesh = _user_mesh(args)  # a bad mesh or region file is refused before the audio is read or torch loaded
    audio = load_wav(audio_path)  # stereo is downmixed, other rates resampled, with a warning
    check_speech(audio, audio_path, allow_silence=args.allow_silence)
    return _animate(args, audio, audio_path, mesh)


def _user_mesh(args):
    """The user's template mesh (--template, --faces, --lips), checked for what the outputs asked for need; None
    without --template (the model's training corpus gives template and topology)."""
    if args.template is None:
        given = [f"--{name}" for name in ("faces", "lips") if getattr(args, name) is not None]
        if given:
            raise CommandError(f"{' and '.join(given)} go with --template (the mesh they belong to)")
        return None
    if args.corpus:
        raise CommandError("--template and --corpus: give one (the template and mesh, or the model's corpus)")
    from avguide.inference import load_user_mesh

    mesh = load_user_mesh(args.template, args.faces, args.lips)
    needs = [what for what, wanted in (("the video", not args.no_video), ("--obj", args.obj)) if wanted]
    if mesh.faces is None and needs:
        raise CommandError(
            f"{mesh.path}: has no faces (triangles), which {' and '.join(needs)} need: pass --faces MESH.ply|.obj "
            f"(or a mesh file with faces as --template), or --no-video to write the vertices only"
        )
    if mesh.lip_ids is None and args.mouth and not args.no_video:
        raise CommandError(
            "--mouth frames the camera on the lips: pass --lips with the mesh's lip vertex ids "
            "(a text file or .npy, e.g. FaceFormer's regions/lve.txt)"
        )
    return mesh


def _animate(args, audio, audio_path: Path, mesh=None) -> int:
    import torch  # only now: a bad file is refused without loading torch

    from avguide.inference import (
        NpyFrames,
        animate_blocks,
        frames_for,
        pick_style,
        write_npy_blocks,
        write_obj_sequence,
    )
    from avguide.models.registry import load_animator

    model_dir = Path(args.model) if args.model else _default_model()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = load_animator(model_dir, device)
    cfg = model.cfg
    if mesh is None:
        corpus = _load_corpus(Path(args.corpus) if args.corpus else None)
        if corpus.n_vertices != cfg.n_vertices:
            raise CommandError(
                f"{corpus.root / 'templates.npz'}: templates have {corpus.n_vertices} vertices, the "
                f"model in {model_dir} animates {cfg.n_vertices}; pass the model's training corpus"
            )
        if len(corpus.subjects["train"]) != cfg.n_subjects:
            raise CommandError(
                f"{corpus.root / 'manifest.csv'}: {len(corpus.subjects['train'])} training subjects, "
                f"the model in {model_dir} has {cfg.n_subjects} styles; pass its training corpus"
            )
        subject, style = _pick_subject(corpus, args.subject)
        template = corpus.templates[subject]
        faces, albedo, lip_ids = corpus.topology.faces, corpus.topology.albedo, corpus.topology.lip_ids
    else:
        if mesh.n_vertices != cfg.n_vertices:
            raise CommandError(
                f"{mesh.path}: template has {mesh.n_vertices} vertices, the model in {model_dir} animates "
                f"{cfg.n_vertices}; pass a template of the mesh the model was trained on"
            )
        subject, style = pick_style(args.subject, cfg.n_subjects, getattr(cfg, "subjects", None), model_dir)
        template, faces, albedo, lip_ids = mesh.template, mesh.faces, None, mesh.lip_ids
        if not args.no_video:
            _check_facing(mesh)
    if args.chunk_seconds * float(cfg.fps) < 1 or not 0 <= args.overlap_seconds < args.chunk_seconds:
        raise CommandError(
            f"--chunk-seconds must last at least one frame (1/{cfg.fps:g} s) and --overlap-seconds "
            f"be in [0, chunk); got {args.chunk_seconds} and {args.overlap_seconds}"
        )
    camera = None if args.no_video else _camera(template, lip_ids, args.mouth, args.size)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = audio_path.stem
    n_frames = frames_for(len(audio), float(cfg.fps))
    progress = not args.quiet
    logging.getLogger("avguide").info(
        "animating %s (%.1f s, %d frames at %g fps) as %s with %s",
        audio_path,
        len(audio) / 16000,
        n_frames,
        cfg.fps,
        subject,
        type(model).__name__,
    )
    blocks = animate_blocks(model, audio, template, style, args.chunk_seconds, args.overlap_seconds, progress)
    npy = write_npy_blocks(out_dir / f"{stem}.npy", blocks, n_frames)
    written = [npy]
    vertices = NpyFrames(npy)  # read back a slice at a time
    if args.obj:
        written.append(write_obj_sequence(out_dir / f"{stem}_obj", vertices, faces, stem, progress))
    if not args.no_video:
        from avguide.render.stream import stream_video

        written.append(
            stream_video(
                out_dir / f"{stem}.mp4",
                vertices,
                faces,
                albedo,
                camera,
                float(cfg.fps),
                audio,
                progress=progress,
            )
        )
    for path in written:
        print(path)
    return 0


def _check_facing(mesh) -> None:
    """Warn when the part of the mesh the video frames faces away from the camera (it would render as background)."""
    from avguide.render.camera import facing_share

    share = facing_share(mesh.template, mesh.faces, mesh.lip_ids)
    # a closed head shows the camera half its projected area (the back faces away); a face-only mesh nearly all
    if share < (0.5 if mesh.lip_ids is not None else 0.4):
        region = "lip region" if mesh.lip_ids is not None else "mesh"
        logging.getLogger("avguide").warning(
            "%s: only %.0f%% of the %s's triangles face the camera (it looks along -z, y up; triangles "
            "counter-clockwise seen from +z are front faces): the video may show mostly background",
            mesh.faces_path,
            100 * share,
            region,
        )


# --- evaluate -----------------------------------------------------------------------------------------


def cmd_evaluate(args) -> int:
    from avguide.scoring import score_folder, score_predictions

    pred_dir, gt_dir = Path(args.pred_dir), Path(args.gt_dir)
    processed = args.dataset in ("vocaset", "biwi") and not (gt_dir / "manifest.csv").is_file()
    if not gt_dir.is_dir() or (processed and not (gt_dir / "vertices_npy").is_dir()):
        raise CommandError(
            f"{gt_dir}: ground truth not found; expected a corpus folder as the prepare stage writes it "
            f"(manifest.csv, vertices_npy/, templates.npz, topology.npz) or, with --dataset vocaset|biwi, the "
            f"public code's processed folder (vertices_npy/<utterance>.npy)"
        )
    if processed:
        if args.split:
            raise CommandError(f"--split needs a corpus folder (manifest.csv); {gt_dir} is a processed folder")
        overall, per_utt = score_folder(
            pred_dir,
            gt_dir,
            args.dataset,
            args.lips,
            args.upper_face,
            args.templates,
            args.gt_fps,
            progress=not args.quiet,
        )
    else:
        given = [o for o, v in (("--templates", args.templates), ("--gt-fps", args.gt_fps)) if v is not None]
        if given:
            raise CommandError(f"{' and '.join(given)}: only for a processed folder; {gt_dir} is a corpus")
        corpus = _load_corpus(gt_dir)
        _override_regions(corpus, args.lips, args.upper_face)
        overall, per_utt = score_predictions(pred_dir, corpus, args.dataset, args.split, progress=not args.quiet)
    out = Path(args.out) if args.out else pred_dir / "metrics.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    per_utt_path = out.with_name(out.stem + "_per_utterance.csv")
    out.write_text(json.dumps(overall, indent=1) + "\n")
    per_utt.to_csv(per_utt_path, index=False, lineterminator="\n")

    def fmt(name):
        return "n/a" if overall.get(name) is None else f"{overall[name]:.4e}"

    print(
        f"{overall['utterances']} utterances, {overall['frames']} frames: LVE {fmt('LVE')}  MVE {fmt('MVE')}  "
        f"FDD {fmt('FDD')}  (static template LVE {fmt('static_template_LVE')})"
    )
    print(out)
    print(per_utt_path)
    return 0


def _override_regions(corpus, lips, upper_face) -> None:
    """--lips / --upper-face replace the corpus's lip and upper-face regions."""
    from dataclasses import replace

    from avguide.data.readers import read_vertex_ids

    if lips is not None:
        corpus.topology = replace(corpus.topology, lip_ids=read_vertex_ids(lips, corpus.n_vertices))
    if upper_face is not None:
        corpus.topology = replace(corpus.topology, upper_face_ids=read_vertex_ids(upper_face, corpus.n_vertices))


# --- render -------------------------------------------------------------------------------------------


def cmd_render(args) -> int:
    import numpy as np

    from avguide.data.audio import load_wav
    from avguide.inference import NpyFrames
    from avguide.render.stream import stream_video

    path = Path(args.vertices)
    if not path.is_file():
        raise CommandError(f"{path}: vertex file not found")
    try:
        vertices = NpyFrames(path)  # read a slice at a time: any length renders in bounded memory
    except (ValueError, OSError) as e:
        raise CommandError(f"{path}: not a readable .npy array ({e})") from None
    corpus = _load_corpus(Path(args.corpus) if args.corpus else None)
    if args.template:
        where = Path(args.template)
        try:
            template = np.load(where, allow_pickle=False).astype(np.float32)
        except (ValueError, OSError) as e:
            raise CommandError(f"{where}: not a readable .npy template ({e})") from None
        if template.size % 3:
            raise CommandError(f"{where}: expected a (V, 3) template, found shape {template.shape}")
        template = template.reshape(-1, 3)
    else:
        subject, _ = _pick_subject(corpus, args.subject, any_split=True)
        template, where = corpus.templates[subject], corpus.root / "templates.npz"
    n_vertices = len(template)
    if n_vertices != corpus.n_vertices:
        raise CommandError(
            f"{where}: template has {n_vertices} vertices, the corpus mesh in {corpus.root} has {corpus.n_vertices}"
        )
    shape = vertices.shape
    if len(shape) == 2 and shape[1] % 3 == 0:
        found = shape[1] // 3
    elif len(shape) == 3 and shape[2] == 3:
        found = shape[1]
    else:
        raise CommandError(f"{path}: expected frames x (V*3) vertices (FaceFormer's .npy), found shape {shape}")
    if shape[0] == 0:
        raise CommandError(f"{path}: holds no frames")
    if found != n_vertices:
        raise CommandError(
            f"{path}: {found} vertices per frame, but the template ({where}) has "
            f"{n_vertices}; render needs the mesh the vertices were made on"
        )
    fps = float(args.fps) if args.fps else float(corpus.manifest["fps"].iloc[0])
    audio = None
    if args.audio:
        audio = load_wav(args.audio)
        gap = len(audio) / 16000 - len(vertices) / fps
        if abs(gap) > 1.0 / fps * 2:
            logging.getLogger("avguide").warning(
                "%s lasts %.2f s, the %d frames of %s last %.2f s at %g fps",
                args.audio,
                len(audio) / 16000,
                len(vertices),
                path,
                len(vertices) / fps,
                fps,
            )
    out = Path(args.out) if args.out else path.with_suffix(".mp4")
    camera = _camera(template, corpus.topology.lip_ids, args.mouth, args.size)
    stream_video(
        out, vertices, corpus.topology.faces, corpus.topology.albedo, camera, fps, audio, progress=not args.quiet
    )
    print(out)
    return 0


# --- transcribe ---------------------------------------------------------------------------------------


def cmd_transcribe(args) -> int:
    video = Path(args.video)
    if not video.is_file():
        raise CommandError(f"{video}: video file not found")
    if args.audio and not Path(args.audio).is_file():
        raise CommandError(f"{args.audio}: audio file not found")
    model_dir = (
        Path(args.model_dir) if args.model_dir else _project_default(("pretrain_expert", "out"), "data/models/expert")
    )
    if not model_dir.is_dir():
        raise CommandError(
            f"{model_dir}: expert model folder not found; train it with `dvc repro pretrain_expert` or pass --model-dir"
        )
    from avguide.reading import read_lips

    print(read_lips(video, Path(args.audio) if args.audio else None, model_dir=model_dir))
    return 0


def cmd_convert(args) -> int:
    if args.source == "faceformer":
        from avguide.convert.faceformer import convert_faceformer

        out = convert_faceformer(args.checkpoint, args.dataset, args.out, args.subjects)
    elif args.source == "codetalker":
        from avguide.convert.codetalker import convert_codetalker

        out = convert_codetalker(args.stage1, args.stage2, args.dataset, args.out, args.subjects)
    else:
        from avguide.convert.autoavsr import convert_autoavsr

        out = convert_autoavsr(args.checkpoint, args.spm, args.modality, args.out, args.units)
    logging.getLogger("avguide").info("wrote %s (load it with --model %s)", out, out)
    return 0


# --- parser and entry point ---------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="avguide", description="Speech-driven 3D facial animation: animate, evaluate, render, transcribe."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-q", "--quiet", action="store_true", help="no progress bars or notes (warnings still)")
    common.add_argument(
        "--threads",
        type=int,
        help="CPU threads for torch (default: torch's choice; on a busy machine 1 is often several times faster)",
    )

    p = sub.add_parser(
        "animate", parents=[common], help="speech WAV -> vertex .npy (FaceFormer format), .obj sequence, MP4 with sound"
    )
    p.add_argument("audio", help="speech recording (WAV/FLAC/OGG; stereo and other rates are converted)")
    p.add_argument(
        "--model",
        help="checkpoint folder (config.json + model.safetensors); default: the "
        "project's trained FaceFormer, data/animators/faceformer/model",
    )
    p.add_argument("--corpus", help="the model's training corpus (templates, topology); default: data/corpus/synth3d")
    p.add_argument(
        "--template",
        help="animate this mesh instead of a corpus subject: a (V, 3) .npy, or a .ply / .obj mesh (e.g. FLAME's "
        "5,023-vertex template for a VOCASET model, BIWI's 23,370 for a BIWI model); V must be the model's",
    )
    p.add_argument(
        "--faces",
        help="with --template: the triangles (.ply, .obj or an (F, 3) .npy), when the template file has none; "
        "needed for the video and --obj",
    )
    p.add_argument(
        "--lips",
        help="with --template: the lip region's vertex ids (text or .npy, e.g. FaceFormer's regions/lve.txt); "
        "needed for --mouth",
    )
    p.add_argument(
        "--subject",
        help="the style (training subject): with --corpus a training subject, whose template is used too; with "
        "--template a name the model's config lists (converted models) or an index (default: the first)",
    )
    p.add_argument("--out", default=".", help="output folder (default: the working directory)")
    p.add_argument("--obj", action="store_true", help="also write one .obj per frame in <out>/<name>_obj/")
    p.add_argument("--no-video", action="store_true", help="do not render the MP4")
    p.add_argument("--mouth", action="store_true", help="render the mouth crop instead of the full face")
    p.add_argument("--size", type=int, help="video frame size in pixels (default 256 face, 88 mouth)")
    p.add_argument("--chunk-seconds", type=float, default=20.0, help="animate long audio in windows this long")
    p.add_argument("--overlap-seconds", type=float, default=1.0, help="cross-faded overlap of the windows")
    p.add_argument("--allow-silence", action="store_true", help="animate silent audio instead of refusing it")
    p.set_defaults(run=cmd_animate)

    p = sub.add_parser(
        "evaluate", parents=[common], help="score predictions (<utterance>.npy, frames x V*3) against a corpus"
    )
    p.add_argument(
        "pred_dir",
        help="folder of <utterance>.npy predictions (or <utterance>_condition_<style>.npy, as the public code)",
    )
    p.add_argument(
        "gt_dir",
        help="ground truth: a corpus (manifest.csv, vertices_npy/, templates.npz, topology.npz), or with --dataset "
        "vocaset|biwi the public code's processed folder (vertices_npy/<utterance>.npy, frames x V*3)",
    )
    p.add_argument(
        "--dataset",
        choices=["synth3d", "vocaset", "biwi"],
        default="synth3d",
        help="checks the mesh (VOCASET 5023, BIWI 23370 vertices) and labels the results; for a processed folder "
        "it also sets the conventions: predictions at 30 fps (VOCASET) or 25 fps (BIWI), ground truth at 60 fps "
        "(VOCASET: every 2nd frame kept, as FaceFormer) or 25 fps (BIWI), regions GT_DIR/regions/lve.txt and "
        "fdd.txt, templates GT_DIR/templates.pkl",
    )
    p.add_argument(
        "--lips",
        help="lip region's vertex ids for LVE and lip MVE (text or .npy); default: the corpus's, or "
        "GT_DIR/regions/lve.txt for a processed folder",
    )
    p.add_argument(
        "--upper-face",
        help="upper face's vertex ids for FDD (text or .npy); default: the corpus's, or GT_DIR/regions/fdd.txt "
        "for a processed folder (FDD is not scored without one)",
    )
    p.add_argument(
        "--templates",
        help="processed folder: the subjects' templates (FaceFormer's templates.pkl, a .npz, or one (V, 3) .npy) "
        "for FDD and the static template's LVE; default GT_DIR/templates.pkl or .npz",
    )
    p.add_argument(
        "--gt-fps",
        type=float,
        help="processed folder: the frame rate of vertices_npy/ (default 60 VOCASET, 25 BIWI; pass 30 for VOCASET "
        "already at 30 fps); a whole multiple of the predictions'",
    )
    p.add_argument(
        "--split",
        choices=["train", "val", "test"],
        help="score exactly this split (every utterance needs a prediction); default: every file",
    )
    p.add_argument(
        "--out",
        help="overall metrics JSON (default PRED_DIR/metrics.json); the per-utterance "
        "CSV goes beside it as <name>_per_utterance.csv",
    )
    p.set_defaults(run=cmd_evaluate)

    p = sub.add_parser("render", parents=[common], help="vertex .npy -> MP4 (with sound if --audio)")
    p.add_argument("vertices", help="frames x (V*3) .npy (FaceFormer format) or (T, V, 3)")
    p.add_argument("--audio", help="the speech to mux in")
    p.add_argument("--corpus", help="corpus giving the mesh topology and templates; default: data/corpus/synth3d")
    p.add_argument("--subject", help="whose template frames the camera (default: the first training subject)")
    p.add_argument("--template", help="a (V, 3) .npy template to frame the camera instead")
    p.add_argument("--fps", type=float, help="frame rate (default: the corpus's)")
    p.add_argument("--out", help="video path (default: VERTICES with .mp4)")
    p.add_argument("--mouth", action="store_true", help="mouth crop (the expert's view) instead of the full face")
    p.add_argument("--size", type=int, help="frame size in pixels (default 256 face, 88 mouth)")
    p.set_defaults(run=cmd_render)

    p = sub.add_parser("transcribe", parents=[common], help="read the lips of a (mouth-crop) video with the expert")
    p.add_argument("video", help="grey mouth-crop video, e.g. from `avguide render --mouth`")
    p.add_argument("--audio", help="the speech, for the audio-visual expert (without: the visual-only judge)")
    p.add_argument("--model-dir", help="expert folder as pretrain_expert writes it (default: data/models/expert)")
    p.set_defaults(run=cmd_transcribe)

    p = sub.add_parser("convert", parents=[common], help="a published checkpoint -> a model folder of ours")
    source = p.add_subparsers(dest="source", required=True, metavar="SOURCE")
    animators = {
        "faceformer": ("FaceFormer's vocaset.pth / biwi.pth (or the paper's, same layout)", {"checkpoint": "the .pth"}),
        "codetalker": (
            "CodeTalker's stage-1 (VQ-VAE) and stage-2 checkpoints",
            {"stage1": "the stage-1 .pth.tar", "stage2": "the stage-2 .pth.tar"},
        ),
    }
    for name, (what, files) in animators.items():
        c = source.add_parser(name, help=what)
        for file, about in files.items():
            c.add_argument(file, help=about)
        c.add_argument("--dataset", required=True, choices=["vocaset", "biwi"], help="what it was trained on")
        c.add_argument("--subjects", nargs="+", help="training subjects in one-hot order (default: the public code's)")
        c.add_argument("--out", required=True, help="model folder to write (config.json + model.safetensors)")
        c.set_defaults(run=cmd_convert)
    c = source.add_parser("autoavsr", help="auto-AVSR's audio-visual, visual-only or audio-only reader")
    c.add_argument("checkpoint", help="the .pth (or Lightning .ckpt) file")
    c.add_argument("--spm", required=True, help="its SentencePiece model, e.g. spm/unigram/unigram5000.model")
    c.add_argument("--units", help="the units file numbering the outputs (default: <spm stem>_units.txt beside it)")
    c.add_argument("--modality", required=True, choices=["av", "video", "audio"], help="what the checkpoint reads")
    c.add_argument("--out", required=True, help="reader folder to write (use it as --model-dir, eval.judges, ...)")
    c.set_defaults(run=cmd_convert)
    return parser


class _StderrHandler(logging.Handler):
    """Writes to whatever sys.stderr is at the time (so captured streams in tests see it)."""

    def emit(self, record):
        try:
            print(self.format(record), file=sys.stderr)
        except Exception:  # noqa: BLE001 - logging must never break the command
            self.handleError(record)


class _Formatter(logging.Formatter):
    def format(self, record):
        prefix = "avguide: " if record.levelno < logging.WARNING else f"avguide: {record.levelname.lower()}: "
        return prefix + record.getMessage()


def _set_threads(n: int | None) -> int | None:
    """Set torch's CPU threads to `n` (if given); returns the number before, to restore."""
    if n is None:
        return None
    if n < 1:
        raise CommandError(f"--threads must be at least 1; got {n}")
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    return before


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns the exit code (the console script passes it to sys.exit)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help (0) or a usage error (2), already printed by argparse
        return int(e.code or 0)
    logger = logging.getLogger("avguide")
    handler = _StderrHandler()
    handler.setFormatter(_Formatter())
    saved = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING if args.quiet else logging.INFO)
    logger.propagate = False
    threads = None
    try:
        threads = _set_threads(args.threads)
        return args.run(args)
    except (ValueError, OSError) as e:  # bad input: every library error says what, where and what was expected
        print(f"avguide {args.command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"avguide {args.command}: interrupted", file=sys.stderr)
        return 130
    finally:
        _set_threads(threads)
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]


if __name__ == "__main__":
    sys.exit(main())
