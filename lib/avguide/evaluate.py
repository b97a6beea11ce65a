"""The `evaluate` stage: every trained animator, and the ground-truth and static-template bounds, on the 3D
test subjects (never seen in training).

Geometry: LVE, MVE, FDD. Readability: the visual-only judge (trained on the 2D corpus only, never a loss) reads
mouth renders of each prediction, decoding with the settings saved with it; CER, WER and VER (viseme error rate)
of its transcripts. All scored by avguide.scoring.score. Runs with several seeds are reported as their mean with a
standard deviation.

Writes `eval.out`/: metrics.json ({model: {LVE, MVE, FDD, CER, WER, VER, ...}}), per_utterance.csv (one row per
model, seed and utterance: subject, frames, LVE, MVE, FDD, CER, the reference and the judge's transcript; pooled
over frames with `n_frames` as weights, LVE and MVE give metrics.json's values back).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from avguide.data.corpus import Corpus
from avguide.data.dataset import TalkingFaceDataset
from avguide.models.checkpoint import load_checkpoint
from avguide.models.expert import Expert, load_expert
from avguide.models.registry import ANIMATORS
from avguide.params import project_root
from avguide.render.mouth import MouthView
from avguide.scoring import METRICS, score
from avguide.training.expert import transcribe_dataset
from avguide.training.guide import render_items, run_name
from avguide.training.run import predict_split


def trained_models(params: dict) -> dict[str, list[tuple[int, Path]]]:
    """{model key: [(seed, model folder)]}: `<animator>-baseline` (train stage) and `<animator>-<loss>` for
    every guide run configured; a configured model that was not trained is an error."""
    root, out = project_root(), project_root() / params["train"]["out"]
    models = {}
    for animator in params["train"]["animators"]:
        models[f"{animator}-baseline"] = [(params["seed"], out / animator / "model")]
        for loss in params["guide"]["losses"]:
            models[f"{animator}-{loss}"] = [
                (s, out / run_name(animator, loss, s) / "model") for s in params["guide"]["seeds"]
            ]
    missing = [
        str(f.relative_to(root)) for runs in models.values() for _, f in runs if not (f / "config.json").is_file()
    ]
    if missing:
        raise FileNotFoundError(f"not trained yet (run their stages first): {', '.join(missing)}")
    return models


def read_renders(judge: Expert, corpus: Corpus, view: MouthView, sequences, progress: bool):
    """(references, the judge's transcripts) of mouth renders of one sequence per test utterance, decoded with
    the settings saved with the judge."""
    return transcribe_dataset(judge, render_items(corpus, "test", view, sequences, progress=progress))


def evaluate(params: dict, progress: bool = True) -> dict:
    root = project_root()
    corpus = Corpus(root / params["prepare"]["out"])
    test = TalkingFaceDataset(corpus, "test", cache=True)
    judge = load_expert(root / params["pretrain_expert"]["out"] / "judge", map_location="cpu")
    view = MouthView(corpus.topology)
    torch.manual_seed(params["seed"])

    items = [test[i] for i in range(len(test))]
    true = [item["vertices"].numpy() for item in items]
    templates = [item["template"].numpy() for item in items]
    runs = {
        "ground_truth": [(params["seed"], true)],
        "static_template": [(params["seed"], [np.broadcast_to(t, v.shape) for t, v in zip(templates, true)])],
    }
    for key, folders in trained_models(params).items():
        animator = key.split("-")[0]
        runs[key] = [
            (seed, predict_split(load_checkpoint(*ANIMATORS[animator], folder), test)[0]) for seed, folder in folders
        ]

    rows, results = [], {}
    utterances, subjects = test.rows["utterance"].tolist(), test.rows["subject"].tolist()
    for key, seeds in runs.items():
        per_seed = []
        for seed, pred in seeds:
            refs, hyps = read_renders(judge, corpus, view, pred, progress)
            overall, per_utt = score(pred, true, templates, corpus.topology, refs, hyps, utterances, subjects)
            per_seed.append({m: overall[m] for m in METRICS})
            rows.append(per_utt.assign(model=key, seed=seed)[["model", "seed", *per_utt.columns]])
        table = pd.DataFrame(per_seed)
        results[key] = {m: float(table[m].mean()) for m in METRICS}
        if len(per_seed) > 1:
            results[key].update({f"{m}_std": float(table[m].std(ddof=1)) for m in METRICS})
        results[key]["n_seeds"] = len(per_seed)
    out = root / params["eval"]["out"]
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(results, indent=1) + "\n")
    pd.concat(rows, ignore_index=True).to_csv(out / "per_utterance.csv", index=False)
    return results
