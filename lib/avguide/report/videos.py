"""Videos of the evaluation report: every model's predictions for a few test utterances (chosen for their
bilabials and open vowels) and side-by-side MP4s with the utterance's sound."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from avguide.data.corpus import Corpus
from avguide.data.dataset import TalkingFaceDataset
from avguide.evaluate import trained_models
from avguide.models.checkpoint import load_checkpoint
from avguide.models.registry import ANIMATORS
from avguide.params import project_root
from avguide.render import face_camera
from avguide.render.movie import render_frames
from avguide.render.video import caption_grid, write_video
from avguide.report.figures import BOUNDS
from avguide.training.run import predict_split

# ---------------------------------------------------------------- predictions of a few test utterances


def predict_utterances(params: dict, utterances: list[str]) -> dict[str, list[np.ndarray]]:
    """{model: [(T, V, 3) per utterance]} for the ground truth, the static template and every trained
    model of the evaluate stage (its first seed), on the given test utterances."""
    import torch
    from torch.utils.data import Subset

    corpus = Corpus(project_root() / params["prepare"]["out"])
    test = TalkingFaceDataset(corpus, "test")
    index = {u: i for i, u in enumerate(test.rows["utterance"])}
    unknown = [u for u in utterances if u not in index]
    if unknown:
        raise ValueError(f"{corpus.root / 'manifest.csv'}: {unknown} are not test utterances")
    subset = Subset(test, [index[u] for u in utterances])
    true = [corpus.vertices(u) for u in utterances]
    out = {
        "ground_truth": true,
        "static_template": [
            np.broadcast_to(corpus.templates[corpus.row(u).subject], t.shape) for u, t in zip(utterances, true)
        ],
    }
    torch.manual_seed(params["seed"])
    for key, runs in trained_models(params).items():
        model = load_checkpoint(*ANIMATORS[key.split("-")[0]], runs[0][1])
        out[key] = predict_split(model, subset)[0]
    return out


def pick_utterances(phonemes: pd.DataFrame, utterances: list[str], n: int) -> list[str]:
    """The n utterances (of those given, in their order on ties) with the most bilabials and open vowels."""
    shown = phonemes[phonemes["utterance"].isin(utterances)]
    score = (
        shown["viseme"].isin(["PP"]).groupby(shown["utterance"]).sum()
        + shown["viseme"].str.startswith("aa").groupby(shown["utterance"]).sum()
    )
    score = score.reindex(utterances, fill_value=0)
    return sorted(utterances, key=lambda u: -score[u])[:n]


# ---------------------------------------------------------------- videos


def comparison_videos(
    corpus, predictions: dict[str, list[np.ndarray]], utterances: list[str], out_dir: str | Path, size: int = 256
) -> list[Path]:
    """For each animator and utterance, `<out_dir>/<animator>_<utterance>.mp4`: ground truth | baseline |
    AV-guided (`<animator>-avguide`, else its last fine-tuned variant), full face, with the sound."""
    animators = list(dict.fromkeys(m.split("-")[0] for m in predictions if m not in BOUNDS))
    paths = []
    for k, u in enumerate(utterances):
        row = corpus.row(u)
        camera = face_camera(corpus.templates[row.subject], size=size)
        frames = {}

        def render(name, k=k, camera=camera, frames=frames):  # bound now: called in this iteration only
            if name not in frames:
                frames[name] = render_frames(
                    predictions[name][k], corpus.topology.faces, corpus.topology.albedo, camera
                )
            return frames[name]

        for a in animators:
            variants = [m for m in predictions if m.startswith(f"{a}-") and m != f"{a}-baseline"]
            guided = f"{a}-avguide" if f"{a}-avguide" in predictions else variants[-1]
            shown = ["ground_truth", f"{a}-baseline", guided]
            n = min(len(render(m)) for m in shown)
            names = ["ground truth", f"{a} baseline", f"{a} AV-guided" if guided == f"{a}-avguide" else guided]
            grid = caption_grid([render(m)[:n] for m in shown], names)
            paths.append(write_video(Path(out_dir) / f"{a}_{u}.mp4", grid, row.fps, corpus.audio(u)))
    return paths
