"""The `evaluate` stage: every trained animator, and the bounds, on the 3D test subjects (never seen in training).

Geometry: LVE, MVE, FDD; lip articulation from the corpus' phoneme timings (avguide.scoring.LIP_METRICS: lip MVE,
inner-lip aperture RMSE, MTM, the closure rate of p/b/m). Bounds: the ground truth, the static template and, on the
synthetic corpus, the oracle (the rig driven by the true phonemes with the mean style: avguide.oracle).
Readability: the visual-only judge (trained on the 2D corpus only, never a loss) reads mouth renders of each
prediction, decoding with the settings saved with it; CER, WER and VER (viseme error rate) of its transcripts; a
second judge (pretrain_expert.judge2: another seed and shape), when there is one, gives CER_judge2, WER_judge2 and
VER_judge2. All
scored by avguide.scoring.score. Runs with several seeds are reported as their mean with a standard deviation.

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
from avguide.oracle import oracle_sequences
from avguide.params import project_root, set_threads
from avguide.render.mouth import MouthView
from avguide.scoring import JUDGE2_METRICS, LIP_METRICS, METRICS, score
from avguide.training.expert import judges, transcribe_dataset
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


def read_renders(readers: list[Expert], corpus: Corpus, sequences, progress: bool):
    """(references, one list of transcripts per reader) of mouth renders of one sequence per test utterance,
    rendered once per reading frame rate (each reader reads at its own: MouthView.rates), each reader decoding
    with the settings saved with it."""
    items = {}
    for fps in dict.fromkeys(reader.cfg.fps for reader in readers):
        view = MouthView(corpus.topology, rates=(corpus.fps, fps))
        items[fps] = render_items(corpus, "test", view, sequences, progress=progress)
    reads = [transcribe_dataset(reader, items[reader.cfg.fps]) for reader in readers]
    return reads[0][0], [hyps for _, hyps in reads]


def judge_folders(params: dict) -> list[Path]:
    """The judges' reader folders: pretrain_judge's (pretrain_expert.out/judge, /judge2), or the folder eval.judges
    names for that judge instead (e.g. a converted auto-AVSR visual-only reader, the paper's judge)."""
    readers, override = project_root() / params["pretrain_expert"]["out"], params["eval"].get("judges") or {}
    names = judges(params["pretrain_expert"])
    if set(override) - set(names):
        raise ValueError(f"eval.judges: {sorted(set(override) - set(names))} are not judges of pretrain_expert {names}")
    return [Path(override[name]) if override.get(name) else readers / name for name in names]


class TestScorer:
    """Scores (T, V, 3) predictions of the test utterances as the evaluate stage does: geometry, lip articulation,
    and the judge's reading of their mouth renders (avguide.scoring.score)."""

    def __init__(self, params: dict, progress: bool = True):
        root = project_root()
        self.params, self.progress = params, progress
        self.corpus = Corpus(root / params["prepare"]["out"])
        self.test = TalkingFaceDataset(self.corpus, "test", cache=True)
        self.judges = [load_expert(folder, map_location="cpu") for folder in judge_folders(params)]
        items = [self.test[i] for i in range(len(self.test))]
        self.true = [item["vertices"].numpy() for item in items]
        self.templates = [item["template"].numpy() for item in items]
        self.fps = self.corpus.fps
        phonemes = self.corpus.phonemes()
        self.phonemes = None if phonemes is None else phonemes[phonemes["utterance"].isin(self.test.rows["utterance"])]

    def bounds(self) -> dict[str, list[np.ndarray]]:
        """The ground truth, the static template and, on the synthetic corpus, the oracle (the rig driven by the
        true phonemes with the mean style)."""
        return {key: self.bound(key) for key in bound_keys(self.corpus)}

    def bound(self, key: str) -> list[np.ndarray]:
        if key == "ground_truth":
            return self.true
        if key == "static_template":
            return [np.broadcast_to(t, v.shape) for t, v in zip(self.templates, self.true)]
        if key == "oracle" and self.phonemes is not None:
            synthetic = {"seed": self.params["seed"], **self.params["prepare"]["synthetic"]}
            return oracle_sequences(self.corpus, "test", synthetic)
        raise ValueError(f"{self.corpus.root}: no bound {key!r} here; bounds: {bound_keys(self.corpus)}")

    def predict(self, animator: str, folder: Path) -> list[np.ndarray]:
        return predict_split(load_checkpoint(*ANIMATORS[animator], folder), self.test)[0]

    def __call__(self, pred: list[np.ndarray]) -> tuple[dict, pd.DataFrame]:
        """Overall figures (METRICS and the LIP_METRICS the corpus allows) and one row per utterance."""
        refs, (hyps, *second) = read_renders(self.judges, self.corpus, pred, self.progress)
        rows = self.test.rows
        overall, per_utt = score(
            pred,
            self.true,
            self.templates,
            self.corpus.topology,
            refs,
            hyps,
            rows["utterance"].tolist(),
            rows["subject"].tolist(),
            phonemes=self.phonemes,
            fps=self.fps,
            hyps2=second[0] if second else None,
        )
        return {m: overall[m] for m in (*METRICS, *LIP_METRICS, *JUDGE2_METRICS) if m in overall}, per_utt


def bound_keys(corpus: Corpus) -> list[str]:
    """The bounds a corpus allows: the oracle needs the synthetic corpus' phoneme timings."""
    return ["ground_truth", "static_template", *(["oracle"] if corpus.phonemes() is not None else [])]


_scorer: TestScorer | None = None  # a worker process's own (evaluate with eval.workers > 1)


def _start_worker(params: dict) -> None:
    global _scorer
    set_threads(params)
    _scorer = TestScorer(params, progress=False)


def _score(scorer: TestScorer, job: tuple[str, int, Path | None]) -> tuple[dict, pd.DataFrame]:
    """Score one model (key, seed, folder), or a bound (folder None)."""
    key, _, folder = job
    torch.manual_seed(scorer.params["seed"])
    return scorer(scorer.bound(key) if folder is None else scorer.predict(key.split("-")[0], folder))


def _score_in_worker(job: tuple[str, int, Path | None]) -> tuple[dict, pd.DataFrame]:
    return _score(_scorer, job)


def evaluate(params: dict, progress: bool = True) -> dict:
    """Score the bounds and every trained model (`trained_models`) into eval.out; `eval.workers` processes score
    them side by side, each with params' `threads` (the figures do not depend on how many)."""
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    set_threads(params)
    corpus = Corpus(project_root() / params["prepare"]["out"])
    jobs = [(key, params["seed"], None) for key in bound_keys(corpus)]
    jobs += [(key, seed, folder) for key, runs in trained_models(params).items() for seed, folder in runs]
    workers = min(int(params["eval"].get("workers", 1)), len(jobs))
    if workers > 1:
        context = get_context("spawn")
        with ProcessPoolExecutor(workers, mp_context=context, initializer=_start_worker, initargs=(params,)) as pool:
            scored = list(pool.map(_score_in_worker, jobs))
    else:
        scorer = TestScorer(params, progress)
        scored = [_score(scorer, job) for job in jobs]
    rows, per_key = [], {}
    for (key, seed, _), (overall, per_utt) in zip(jobs, scored):
        per_key.setdefault(key, []).append(overall)
        rows.append(per_utt.assign(model=key, seed=seed)[["model", "seed", *per_utt.columns]])
    results = {key: summary(per_seed) for key, per_seed in per_key.items()}
    out = project_root() / params["eval"]["out"]
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(results, indent=1) + "\n")
    pd.concat(rows, ignore_index=True).to_csv(out / "per_utterance.csv", index=False)
    return results


def summary(per_seed: list[dict]) -> dict:
    """The mean over seeds of each figure, with its standard deviation when there are several, and n_seeds."""
    table = pd.DataFrame(per_seed)
    out = {m: float(table[m].mean()) for m in table.columns}
    if len(per_seed) > 1:
        out.update({f"{m}_std": float(table[m].std(ddof=1)) for m in table.columns})
    return {**out, "n_seeds": len(per_seed)}
