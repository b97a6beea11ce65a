"""One scoring function (avguide.scoring.score) for the train stage, the evaluate stage, `avguide evaluate` and the
report: its overall figures are the avguide.metrics calls over the whole run, and pooling its own per-utterance
rows gives them back. One METRICS tuple, one registry of animators."""

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from avguide import scoring
from avguide.metrics import cer, fdd, lve, mve, ver, wer
from avguide.scoring import METRICS, error_counts, pooled, score

TOPOLOGY = SimpleNamespace(lip_ids=[0, 1, 2], upper_face_ids=[4, 5])
REFS = ["bin blue at f two now", "place red by v six fast", "set white with b four please"]
HYPS = ["pin blue at f two now", "place rod by six vast", ""]


def run(seed=0, lengths=(5, 7, 4)):
    """Random predicted and true (T, V, 3) sequences and templates; one prediction a frame longer (trimmed)."""
    rng = np.random.default_rng(seed)
    true = [rng.normal(size=(n, 6, 3)) for n in lengths]
    pred = [t + rng.normal(scale=0.1, size=t.shape) for t in true]
    pred[1] = np.concatenate([pred[1], pred[1][-1:]])
    return pred, true, [rng.normal(size=(6, 3)) for _ in lengths]


def test_overall_figures_are_the_metrics_and_pool_from_the_rows():
    pred, true, templates = run()
    overall, rows = score(pred, true, templates, TOPOLOGY, REFS, HYPS, ["u0", "u1", "u2"], ["s0", "s1", "s0"])
    static = [np.broadcast_to(t, p.shape) for t, p in zip(templates, pred)]
    assert overall == {
        "LVE": lve(pred, true, TOPOLOGY.lip_ids),
        "MVE": mve(pred, true),
        "FDD": fdd(pred, true, templates, TOPOLOGY.upper_face_ids),
        "static_template_LVE": lve(static, true, TOPOLOGY.lip_ids),
        "CER": cer(REFS, HYPS),
        "WER": wer(REFS, HYPS),
        "VER": ver(REFS, HYPS),
    }  # bit for bit
    # the rows the evaluate stage writes to per_utterance.csv (after model and seed)
    assert rows.columns.tolist() == [
        "utterance",
        "subject",
        "n_frames",
        "LVE",
        "MVE",
        "FDD",
        "CER",
        "reference",
        "judge",
    ]
    assert rows["n_frames"].tolist() == [5, 7, 4]
    for k, row in rows.iterrows():
        p, t, tm = pred[k], true[k], templates[k]
        assert (row["LVE"], row["MVE"], row["FDD"], row["CER"]) == (
            lve([p], [t], TOPOLOGY.lip_ids),
            mve([p], [t]),
            fdd([p], [t], [tm], TOPOLOGY.upper_face_ids),
            cer([REFS[k]], [HYPS[k]]),
        )
    again = pooled(error_counts(rows))
    assert list(again.index) == list(METRICS)
    for m in ("LVE", "MVE", "FDD"):
        assert again[m] == pytest.approx(overall[m], rel=1e-12)
    for m in ("CER", "WER", "VER"):  # integer counts: exactly
        assert again[m] == overall[m]
    # any group pools as the metrics over that group
    group = error_counts(rows)[rows["subject"] == "s0"]
    assert pooled(group)["CER"] == cer([REFS[0], REFS[2]], [HYPS[0], HYPS[2]])
    assert pooled(group)["LVE"] == pytest.approx(lve([pred[0], pred[2]], [true[0], true[2]], TOPOLOGY.lip_ids))


def test_per_utterance_csv_is_written_as_the_evaluate_stage_wrote_it_before():
    """The rows the evaluate stage built by hand (one dict per utterance) and score's rows give the same file."""
    pred, true, templates = run(2)
    utterances, subjects = ["u0", "u1", "u2"], ["s0", "s1", "s0"]
    by_hand = [
        {
            "model": "m",
            "seed": 3,
            "utterance": u,
            "subject": s,
            "n_frames": min(len(p), len(t)),
            "LVE": lve([p], [t], TOPOLOGY.lip_ids),
            "MVE": mve([p], [t]),
            "FDD": fdd([p], [t], [tm], TOPOLOGY.upper_face_ids),
            "CER": cer([r], [h]),
            "reference": r,
            "judge": h,
        }
        for u, s, p, t, tm, r, h in zip(utterances, subjects, pred, true, templates, REFS, HYPS)
    ]
    _, rows = score(pred, true, templates, TOPOLOGY, REFS, HYPS, utterances, subjects)
    written = pd.concat([rows.assign(model="m", seed=3)[["model", "seed", *rows.columns]]], ignore_index=True)
    assert written.to_csv(index=False) == pd.DataFrame(by_hand).to_csv(index=False)


def test_geometry_only():
    pred, true, templates = run(1)
    overall, rows = score(pred, true, templates, TOPOLOGY)
    assert list(overall) == ["LVE", "MVE", "FDD", "static_template_LVE"]  # what the train stage's metrics.json holds
    assert rows.columns.tolist() == ["n_frames", "LVE", "MVE", "FDD"]
    assert pooled(rows).to_dict() == pytest.approx({m: overall[m] for m in ("LVE", "MVE", "FDD")}, rel=1e-12)


def test_one_metrics_tuple_and_one_animator_registry():
    from avguide import evaluate, report
    from avguide.models import registry
    from avguide.training import guide
    from avguide.training import run as train_run

    assert evaluate.METRICS is scoring.METRICS and report.METRICS is scoring.METRICS
    assert report.pooled is scoring.pooled
    for module in (evaluate, report, guide, train_run):
        assert module.ANIMATORS is registry.ANIMATORS, module.__name__
    assert guide.score is scoring.score and train_run.score is scoring.score and evaluate.score is scoring.score
