"""One scoring function (avguide.scoring.score) for the train stage, the evaluate stage, `avguide evaluate` and the
report: its overall figures are the avguide.metrics calls over the whole run, and pooling its own per-utterance
rows gives them back. One METRICS tuple, one registry of animators."""

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from avguide import scoring
from avguide.data.corpus import Topology
from avguide.face.template import MIDLINE_LOWER, build_face, lip_opening
from avguide.metrics import aperture_rmse, cer, fdd, lip_mve, lve, mtm, mve, ver, wer
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


def test_a_second_judge_is_scored_and_pooled_like_the_first():
    pred, true, templates = run()
    hyps2 = ["bin blue at two now", "place red by v six fast", "set with b four"]
    overall, rows = score(pred, true, templates, TOPOLOGY, REFS, HYPS, ["u0", "u1", "u2"], hyps2=hyps2)
    assert (overall["CER"], overall["CER_judge2"]) == (cer(REFS, HYPS), cer(REFS, hyps2))
    assert (overall["WER_judge2"], overall["VER_judge2"]) == (wer(REFS, hyps2), ver(REFS, hyps2))
    assert rows["judge2"].tolist() == hyps2
    again = pooled(error_counts(rows))
    for m in ("CER", "WER", "VER", "CER_judge2", "WER_judge2", "VER_judge2"):
        assert again[m] == overall[m], m


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


# ---------------------------------------------------------------- lip articulation on the synthetic template

MESH = build_face()
SYNTH = Topology(faces=MESH.faces, lip_ids=MESH.lip_ids, upper_face_ids=MESH.upper_face_ids)
OTHER = Topology(faces=MESH.faces[::-1].copy(), lip_ids=MESH.lip_ids, upper_face_ids=MESH.upper_face_ids)
FPS = 25.0


def opening_sequence(shift_frames: float, n: int) -> np.ndarray:
    """The template with the lower lip's midline vertex moved so that the inner-lip opening is a wave between 0 and
    10 mm, shut at frames 5, 25, 45 (+ shift_frames)."""
    t = np.arange(n) - shift_frames
    target = 0.005 * (1 + np.sin(2 * np.pi * (t - 10) / 20))
    seq = np.repeat(MESH.vertices[None].astype(np.float64), n, axis=0)
    seq[:, MIDLINE_LOWER, 1] += lip_opening(MESH.vertices) - target
    return seq


def articulation_run():
    true = [opening_sequence(0, 60), opening_sequence(0, 40)]
    pred = [opening_sequence(3, 60), opening_sequence(0, 41)]  # three frames late; on time, one frame longer
    table = pd.DataFrame(
        [  # the truth closes at 0.2 s and 1.0 s; the late prediction at 0.32 s and 1.12 s
            ("u0", 0, "b", "PP", 0.18, 0.22),
            ("u0", 1, "aa", "aa", 0.22, 0.40),
            ("u0", 2, "m", "PP", 0.98, 1.02),
            ("u1", 0, "p", "PP", 0.18, 0.22),
            ("x9", 0, "p", "PP", 0.18, 0.22),  # not scored: ignored
        ],
        columns=["utterance", "index", "phoneme", "viseme", "start_s", "end_s"],
    )
    return pred, true, [MESH.vertices] * 2, table


def test_lip_articulation_on_the_synthetic_topology_and_its_pooling():
    pred, true, templates, table = articulation_run()
    overall, rows = score(pred, true, templates, SYNTH, utterances=["u0", "u1"], phonemes=table, fps=FPS)
    pred_open = [lip_opening(p[: len(t)]) for p, t in zip(pred, true)]
    true_open = [lip_opening(t) for t in true]
    assert overall["lip_mve_mm"] == lip_mve(pred, true, SYNTH.lip_ids)
    assert overall["aperture_rmse_mm"] == aperture_rmse(pred_open, true_open) > 0
    assert overall["MTM_ms"] == mtm(pred_open, true_open, FPS) == pytest.approx(60.0)  # 120 ms and 0 ms
    assert overall["closure_rate"] == 1 / 3  # the late u0 misses both, u1 closes
    assert overall["gt_closure_rate"] == 1.0
    assert set(scoring.LIP_METRICS) < set(overall)
    assert rows.columns.tolist() == [
        "utterance",
        "n_frames",
        "LVE",
        "MVE",
        "FDD",
        "lip_mve_mm",
        "aperture_rmse_mm",
        "MTM_ms",
        "closures",
        "bilabials",
        "closure_rate",
    ]
    assert rows[["closures", "bilabials"]].values.tolist() == [[0, 2], [1, 1]]
    assert rows["MTM_ms"].tolist() == pytest.approx([120.0, 0.0])
    again = pooled(rows)
    for m in ("lip_mve_mm", "aperture_rmse_mm", "MTM_ms", "closure_rate"):
        assert again[m] == pytest.approx(overall[m], rel=1e-12), m
    assert pooled(rows[rows["utterance"] == "u1"])["closure_rate"] == 1.0


def test_pooling_survives_the_csv_the_report_reads(tmp_path):
    """An utterance without an MTM (a still prediction) is an empty cell in per_utterance.csv; the report reads it
    with keep_default_na=False, as a string: pooling leaves it out, as score does."""
    pred, true, templates, table = articulation_run()
    pred[1] = np.broadcast_to(MESH.vertices, true[1].shape)
    overall, rows = score(pred, true, templates, SYNTH, REFS[:2], HYPS[:2], ["u0", "u1"], phonemes=table, fps=FPS)
    assert np.isnan(rows["MTM_ms"][1]) and overall["MTM_ms"] == pytest.approx(120.0)
    rows.to_csv(tmp_path / "per_utterance.csv", index=False)
    back = error_counts(pd.read_csv(tmp_path / "per_utterance.csv", keep_default_na=False))
    again = pooled(back)
    for m in ("LVE", "CER", "lip_mve_mm", "aperture_rmse_mm", "MTM_ms", "closure_rate"):
        assert again[m] == pytest.approx(overall[m], rel=1e-12), m


def test_lip_articulation_is_skipped_on_a_mesh_without_known_midline():
    pred, true, templates, table = articulation_run()
    for topology in (OTHER, TOPOLOGY):  # other connectivity; no faces at all
        tm = templates if topology is OTHER else [t[:6] for t in templates]
        p, t = (pred, true) if topology is OTHER else ([x[:, :6] for x in pred], [x[:, :6] for x in true])
        overall, rows = score(p, t, tm, topology, utterances=["u0", "u1"], phonemes=table, fps=FPS)
        assert list(overall) == ["LVE", "MVE", "FDD", "static_template_LVE", "lip_mve_mm"]
        assert rows.columns.tolist() == ["utterance", "n_frames", "LVE", "MVE", "FDD", "lip_mve_mm"]
        assert set(pooled(rows).index) == {"LVE", "MVE", "FDD", "lip_mve_mm"}


def test_without_fps_the_figures_are_the_train_stages():
    pred, true, templates, table = articulation_run()
    overall, rows = score(pred, true, templates, SYNTH)
    assert list(overall) == ["LVE", "MVE", "FDD", "static_template_LVE"]
    assert rows.columns.tolist() == ["n_frames", "LVE", "MVE", "FDD"]
    overall, _ = score(pred, true, templates, SYNTH, utterances=["u0", "u1"], fps=FPS)
    assert "closure_rate" not in overall and "MTM_ms" in overall  # no phonemes: no closure rate
    with pytest.raises(ValueError, match="without fps"):
        score(pred, true, templates, SYNTH, utterances=["u0", "u1"], phonemes=table)
    with pytest.raises(ValueError, match="without the utterances"):
        score(pred, true, templates, SYNTH, phonemes=table, fps=FPS)
