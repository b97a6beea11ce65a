"""The `avguide` command line: animate your own speech, score any method's predictions, render vertex
sequences as videos with sound, and read lips with the expert.

    avguide animate SPEECH.wav [--model DIR] [--corpus DIR] [--subject NAME] [--out DIR] [--obj] [--no-video]
    avguide evaluate PRED_DIR GT_DIR [--dataset synth3d|vocaset|biwi] [--split test] [--out metrics.json]
    avguide render VERTICES.npy [--audio SPEECH.wav] [--corpus DIR] [--subject NAME | --template T.npy] [--mouth]
    avguide transcribe VIDEO [--audio SPEECH.wav] [--model-dir DIR]

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


def _camera(template, corpus, mouth: bool, size: int | None):
    from avguide.render import face_camera, mouth_camera

    size = size or (88 if mouth else 256)
    if size <= 0 or size % 2:
        raise CommandError(f"--size must be a positive even number of pixels (H.264); got {size}")
    return mouth_camera(template, corpus.topology.lip_ids, size=size) if mouth else face_camera(template, size=size)


# --- animate ------------------------------------------------------------------------------------------


def cmd_animate(args) -> int:
    from avguide.data.audio import load_wav
    from avguide.inference import check_speech

    audio_path = Path(args.audio)
    audio = load_wav(audio_path)  # stereo is downmixed, other rates resampled, with a warning
    check_speech(audio, audio_path, allow_silence=args.allow_silence)
    return _animate(args, audio, audio_path)


def _animate(args, audio, audio_path: Path) -> int:
    import torch  # only now: a bad file is refused without loading torch

    from avguide.inference import NpyFrames, animate_blocks, frames_for, write_npy_blocks, write_obj_sequence
    from avguide.models.registry import load_animator

    model_dir = Path(args.model) if args.model else _default_model()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = load_animator(model_dir, device)
    cfg = model.cfg
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
    if args.chunk_seconds * float(cfg.fps) < 1 or not 0 <= args.overlap_seconds < args.chunk_seconds:
        raise CommandError(
            f"--chunk-seconds must last at least one frame (1/{cfg.fps:g} s) and --overlap-seconds "
            f"be in [0, chunk); got {args.chunk_seconds} and {args.overlap_seconds}"
        )
    camera = None if args.no_video else _camera(template, corpus, args.mouth, args.size)
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
        written.append(write_obj_sequence(out_dir / f"{stem}_obj", vertices, corpus.topology.faces, stem, progress))
    if not args.no_video:
        from avguide.render.stream import stream_video

        written.append(
            stream_video(
                out_dir / f"{stem}.mp4",
                vertices,
                corpus.topology.faces,
                corpus.topology.albedo,
                camera,
                float(cfg.fps),
                audio,
                progress=progress,
            )
        )
    for path in written:
        print(path)
    return 0


# --- evaluate -----------------------------------------------------------------------------------------


def cmd_evaluate(args) -> int:
    from avguide.scoring import score_predictions

    pred_dir, gt_dir = Path(args.pred_dir), Path(args.gt_dir)
    if not gt_dir.is_dir():
        raise CommandError(
            f"{gt_dir}: ground-truth corpus folder not found; expected manifest.csv, "
            f"vertices_npy/, templates.npz, topology.npz as the prepare stage writes them"
        )
    corpus = _load_corpus(gt_dir)
    overall, per_utt = score_predictions(pred_dir, corpus, args.dataset, args.split, progress=not args.quiet)
    out = Path(args.out) if args.out else pred_dir / "metrics.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    per_utt_path = out.with_name(out.stem + "_per_utterance.csv")
    out.write_text(json.dumps(overall, indent=1) + "\n")
    per_utt.to_csv(per_utt_path, index=False, lineterminator="\n")
    print(
        f"{overall['utterances']} utterances, {overall['frames']} frames: LVE {overall['LVE']:.4e}  "
        f"MVE {overall['MVE']:.4e}  FDD {overall['FDD']:.4e}  (static template LVE "
        f"{overall['static_template_LVE']:.4e})"
    )
    print(out)
    print(per_utt_path)
    return 0


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
    camera = _camera(template, corpus, args.mouth, args.size)
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
    p.add_argument("--subject", help="training subject whose style and template to use (default: the first)")
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
    p.add_argument("pred_dir", help="folder of <utterance>.npy predictions")
    p.add_argument("gt_dir", help="ground-truth corpus (manifest.csv, vertices_npy/, templates.npz, topology.npz)")
    p.add_argument(
        "--dataset",
        choices=["synth3d", "vocaset", "biwi"],
        default="synth3d",
        help="checks the mesh (VOCASET 5023, BIWI 23370 vertices) and labels the results",
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
