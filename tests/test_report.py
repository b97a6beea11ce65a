"""The evaluation report: tables pool like avguide.metrics, figures show what they say, the README block and the
paper's parameter files."""

import json
import subprocess
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import yaml

from avguide import report
from avguide.metrics import cer, edit_distance, fdd, lve, mve, to_visemes, ver, wer
from avguide.params import load_params
from avguide.scoring import score

ROOT = Path(__file__).resolve().parents[1]
LIPS, UPPER = [0, 1, 2], [4, 5]
REFS = ["bin blue at f two now", "place red by v six fast", "set white with b four please"]
HYPS = ["pin blue at f two now", "place rod by six vast", ""]


def write_per_utterance(folder: Path, seeds=(0,)) -> dict:
    """A per_utterance.csv as the evaluate stage writes it (avguide.scoring.score's rows), from random sequences;
    returns them too."""
    rng = np.random.default_rng(0)
    topology = SimpleNamespace(lip_ids=LIPS, upper_face_ids=UPPER)
    data, rows = {}, []
    for seed in seeds:
        pred, true, templates = [], [], []
        for n in (5, 7, 4):
            t = rng.normal(size=(n, 6, 3))
            tm = rng.normal(size=(6, 3))
            p = t + rng.normal(scale=0.1 * (1 + seed), size=t.shape)
            pred.append(p), true.append(t), templates.append(tm)
        _, per_utt = score(pred, true, templates, topology, REFS, HYPS, ["u0", "u1", "u2"], ["s0", "s1", "s0"])
        rows.append(per_utt.assign(model="m", seed=seed)[["model", "seed", *per_utt.columns]])
        data[seed] = (pred, true, templates)
    pd.concat(rows).to_csv(folder / "per_utterance.csv", index=False)
    return data


def test_pooled_rows_give_the_metrics_of_the_whole_run(tmp_path):
    ((pred, true, templates),) = write_per_utterance(tmp_path).values()
    table = report.per_utterance(tmp_path)
    got = report.seed_metrics(table).iloc[0]
    assert got["LVE"] == pytest.approx(lve(pred, true, LIPS), rel=1e-12)
    assert got["MVE"] == pytest.approx(mve(pred, true), rel=1e-12)
    assert got["FDD"] == pytest.approx(fdd(pred, true, templates, UPPER), rel=1e-12)
    assert got["CER"] == pytest.approx(cer(REFS, HYPS))
    assert got["WER"] == pytest.approx(wer(REFS, HYPS))
    assert got["VER"] == pytest.approx(ver(REFS, HYPS))
    assert table["chars"].tolist() == [len(r) for r in REFS]  # the empty transcript is read as "", not NaN


def test_error_bars_are_the_sd_over_seeds_else_a_bootstrap_interval(tmp_path):
    write_per_utterance(tmp_path, seeds=(0, 1, 2))
    table = report.per_utterance(tmp_path)
    per_seed = report.seed_metrics(table)
    bars = report.error_bars(table).set_index("metric")
    mean, sd = per_seed["LVE"].mean(), per_seed["LVE"].std(ddof=1)
    assert bars.loc["LVE", ["mean", "lo", "hi"]].tolist() == pytest.approx([mean, mean - sd, mean + sd])
    assert "3 seeds" in bars.loc["LVE", "bar"]

    one = report.error_bars(table[table["seed"] == 0]).set_index("metric")
    assert "bootstrap" in one.loc["CER", "bar"]
    assert one.loc["CER", "lo"] <= one.loc["CER", "mean"] <= one.loc["CER", "hi"]
    assert one.loc["CER", "hi"] > one.loc["CER", "lo"]


def test_metrics_figure_draws_each_model_mean(tmp_path):
    write_per_utterance(tmp_path)
    rows = pd.read_csv(tmp_path / "per_utterance.csv", keep_default_na=False)
    rows = pd.concat([rows.assign(model="ground_truth", LVE=0.0, judge=rows["reference"]), rows])
    rows.to_csv(tmp_path / "per_utterance.csv", index=False)
    bars = report.error_bars(report.per_utterance(tmp_path))
    fig = report.plot_metrics(bars)
    lve_axis = fig.axes[0]
    widths = sorted(p.get_width() for p in lve_axis.patches)
    expected = sorted(bars.query("metric == 'LVE'")["mean"] * 1e6)
    assert widths == pytest.approx(expected)
    assert report.save(fig, tmp_path / "figures", "metrics").stat().st_size > 1000


def test_subject_breakdown_pools_each_subject(tmp_path):
    write_per_utterance(tmp_path)
    table = report.per_utterance(tmp_path)
    subjects = report.subject_metrics(table).set_index("subject")
    s0 = table[table["subject"] == "s0"]
    assert subjects.loc["s0", "CER"] == pytest.approx(cer(s0["reference"].tolist(), s0["judge"].tolist()))
    fig = report.plot_subjects(report.subject_metrics(table))
    assert len(fig.axes[0].patches) >= 2


def test_alignment_is_a_minimum_edit_alignment():
    pairs = report.align(list("abc"), list("axcd"))
    assert pairs == [("a", "a"), ("b", "x"), ("c", "c"), (report.GAP, "d")]
    for ref, hyp in (("kitten", "sitting"), ("", "abc"), ("abc", ""), ("flaw", "lawn")):
        pairs = report.align(list(ref), list(hyp))
        assert sum(a != b for a, b in pairs) == edit_distance(ref, hyp)
        assert [a for a, _ in pairs if a != report.GAP] == list(ref)
        assert [b for _, b in pairs if b != report.GAP] == list(hyp)


def test_viseme_confusion_rows_sum_to_the_reference_counts():
    counts = report.viseme_confusion(REFS, HYPS)
    said = pd.Series([v for seq in to_visemes(REFS) for v in seq]).value_counts()
    rows = counts.drop(index=report.GAP).sum(axis=1)
    assert rows[rows > 0].sort_index().to_dict() == said.sort_index().to_dict()
    read = pd.Series([v for seq in to_visemes(HYPS) for v in seq]).value_counts()
    cols = counts.drop(columns=report.GAP).sum(axis=0)
    assert cols[cols > 0].sort_index().to_dict() == read.sort_index().to_dict()
    # bin/pin look the same: the first word of the first sentence is read right on the lips
    assert counts.loc["PP", "PP"] >= 1
    # the whole third sentence was deleted
    assert counts[report.GAP].sum() >= len(to_visemes([REFS[2]])[0])
    errors = counts.values.sum() - np.trace(counts.values[:-1, :-1])
    assert errors / said.sum() == pytest.approx(ver(REFS, HYPS))
    fig = report.plot_confusions({"a": counts, "b": counts})
    assert f"VER {100 * ver(REFS, HYPS):.1f} %" in fig.axes[0].get_title()


def test_lip_aperture_is_the_midline_inner_lip_distance():
    from avguide.face.template import build_face

    face = build_face()
    upper, lower = face.contour_ids()
    mid = np.argmin(np.abs(face.vertices[upper, 0]))  # the upper/lower pair at the mouth's midline
    u, lo = upper[mid], lower[mid]
    assert abs(face.vertices[lo, 0]) < 1e-6
    motion = np.repeat(face.vertices[None].astype(np.float64), 4, 0)
    motion[:, lo, 1] -= 0.001 * np.arange(4)  # open by 0, 1, 2, 3 mm
    aperture = report.lip_aperture(motion.reshape(4, -1))
    by_hand = 1000 * (face.vertices[u, 1] - face.vertices[lo, 1]) + np.arange(4)
    assert aperture == pytest.approx(by_hand, abs=1e-4)


def test_lip_aperture_of_a_corpus_utterance_closes_on_bilabials():
    from avguide.data.corpus import Corpus
    from avguide.face.template import build_face
    from avguide.pipeline import require

    params = load_params(profile="smoke")
    require(params, "corpus")
    corpus = Corpus(ROOT / params["prepare"]["out"])
    phonemes = pd.read_csv(corpus.root / "phonemes.csv", keep_default_na=False)
    row = corpus.row(report.pick_utterances(phonemes, corpus.manifest["utterance"].tolist(), 1)[0])
    v = corpus.vertices(row.utterance)
    upper, lower = build_face().contour_ids()
    mid = np.argmin(np.abs(corpus.templates[row.subject][upper, 0]))
    by_hand = 1000 * (v[:, upper[mid], 1] - v[:, lower[mid], 1])
    aperture = report.lip_aperture(v)
    assert aperture == pytest.approx(by_hand, abs=1e-4)
    frames = report.key_frames(phonemes.query("utterance == @row.utterance"), aperture, row.fps)
    closed = [aperture[f] for f, label in frames if "closure" in label]
    opened = [aperture[f] for f, label in frames if "open" in label]
    assert closed and max(closed) < 0.5  # the rig closes the lips on p, b, m
    if opened:
        assert min(opened) > max(closed) + 3


def test_key_frames_pick_the_extremes_inside_each_segment():
    fps = 10
    phonemes = pd.DataFrame(
        {
            "phoneme": ["b", "I", "aa", "m"],
            "viseme": ["PP", "ih", "aa", "PP"],
            "start_s": [0.0, 0.3, 0.5, 1.0],
            "end_s": [0.3, 0.5, 1.0, 1.2],
        }
    )
    aperture = np.array([3, 1, 2, 5, 5, 6, 9, 7, 6, 6, 4, 0.5, 2], float)
    frames = report.key_frames(phonemes, aperture, fps)
    assert [f for f, _ in frames] == [1, 6, 11]
    assert "closure" in frames[0][1] and "open" in frames[1][1]


def test_word_spans_cover_each_word_in_order():
    from avguide.data.speech import synthesize
    from avguide.face.visemes import load_table

    text = "bin blue at f two fast"
    speech = synthesize(text)  # says "at" with a t of another flavour than "at" alone: still found by its visemes
    phonemes = pd.DataFrame(
        [
            {"phoneme": p, "viseme": "+".join(load_table().of(p)), "start_s": s, "end_s": e}
            for p, s, e in speech.phonemes
        ]
    )
    spans = report.word_spans(phonemes, text)
    assert [s[0] for s in spans] == text.split()
    assert [s[1] for s in spans] == sorted(s[1] for s in spans)
    assert all(a[2] <= b[1] for a, b in zip(spans, spans[1:]))  # no overlap
    spoken = phonemes[~phonemes["phoneme"].str.startswith("_")]
    assert spans[0][1] == spoken["start_s"].iloc[0] and spans[-1][2] == spoken["end_s"].iloc[-1]
    assert spans[1][1] == spoken.query("phoneme == 'b'")["start_s"].iloc[1]  # "blue" starts at its b
    assert report.word_spans(phonemes, "bin pin at f two fast")[1] is None  # a word that was not said


def test_nearest_neighbour_accuracy_and_tsne_figure():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(size=(8, 5)) + 5 * np.eye(5)[0], rng.normal(size=(8, 5)) - 5 * np.eye(5)[0]])
    y = np.array(["bin"] * 8 + ["pin"] * 8)
    assert report.nearest_neighbour_accuracy(x, y) == 1.0
    same = np.ones((16, 5))
    assert report.nearest_neighbour_accuracy(same + 1e-9 * rng.normal(size=same.shape), y) < 0.9
    features = pd.DataFrame(
        [
            {"pair": "bin / pin", "input": name, "word": w, "x": v}
            for name in ("audio-visual", "video only")
            for w, v in zip(y, x)
        ]
    )
    fig = report.plot_tsne(features)
    assert len(fig.axes) == 2 and "100 %" in fig.axes[0].get_title()


def test_training_curves_read_every_dvclive_run(tmp_path):
    def curve(path, steps, values):
        path.parent.mkdir(parents=True, exist_ok=True)
        pd.DataFrame({"step": steps, "loss": values}).to_csv(path, sep="\t", index=False)

    curve(tmp_path / "a/dvclive/plots/metrics/train/loss.tsv", [1, 2, 3], [3.0, 2.0, 1.0])
    curve(tmp_path / "a/dvclive/plots/metrics/val/loss.tsv", [3], [1.5])
    curve(tmp_path / "b/dvclive/stage1/plots/metrics/train/loss.tsv", [5, 10], [0.2, 0.1])
    curves = report.training_curves([tmp_path / "a", tmp_path / "b"])
    assert sorted(set(curves["run"])) == ["a", "b/stage1"]
    assert curves.query("run == 'a' and split == 'train'")["loss"].tolist() == [3.0, 2.0, 1.0]
    fig = report.plot_curves(curves)
    lines = [line for ax in fig.axes for line in ax.get_lines() if len(line.get_xdata())]
    assert any(list(line.get_ydata()) == [3.0, 2.0, 1.0] for line in lines)
    with pytest.raises(FileNotFoundError, match="loss.tsv"):
        report.training_curves([tmp_path / "nothing"])


METRICS_JSON = {
    "ground_truth": {"LVE": 0.0, "MVE": 0.0, "FDD": 0.0, "CER": 0.112, "WER": 0.2917, "VER": 0.1491, "n_seeds": 1},
    "faceformer-avguide": {
        "LVE": 2.8237e-05,
        "MVE": 0.0016213,
        "FDD": 1.141e-07,
        "CER": 0.5312,
        "WER": 0.775,
        "VER": 0.5623,
        "LVE_std": 1.2e-06,
        "MVE_std": 1e-05,
        "FDD_std": 2e-09,
        "CER_std": 0.011,
        "WER_std": 0.02,
        "VER_std": 0.013,
        "n_seeds": 3,
    },
}
RUN = {
    "commit": "abc1234",
    "uncommitted_changes": False,
    "date": "2026-11-22",
    "seconds": 300,
    "test_utterances": 80,
    "test_subjects": 2,
    "seeds": [0, 1, 2],
    "machine": {"cpu": "Test CPU @ 2.0GHz", "cores": 2, "gpu": None},
}


def test_readme_block_states_the_numbers_commit_and_machine():
    block = report.readme_block(METRICS_JSON, RUN)
    flat = block.replace("\n", " ")  # the prose is wrapped
    for text in (
        "2.824e-05 ± 1.200e-06",
        "1.62 ± 0.01",
        "53.1 % ± 1.1 %",
        "11.2 %",
        "29.2 %",
        "14.9 %",
        "`abc1234`",
        "Test CPU @ 2.0GHz, 2 cores, no GPU",
        "80 test utterances",
        "figures/visemes.png",
    ):
        assert text in flat, text
    assert block.startswith(report.START) and block.endswith(report.END)
    assert "uncommitted" not in block
    dirty = report.readme_block(METRICS_JSON, {**RUN, "uncommitted_changes": True}).replace("\n", " ")
    assert "plus uncommitted changes" in dirty
    assert "figures/tsne.png" not in report.readme_block(METRICS_JSON, RUN, figures=["metrics"])


def test_metrics_table_files_hold_the_numbers_in_display_units(tmp_path):
    (tmp_path / "old-model.json").write_text("{}")
    paths = report.write_table(METRICS_JSON, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["faceformer-avguide.json", "ground_truth.json"]
    row = json.loads((tmp_path / "faceformer-avguide.json").read_text())
    assert row == {
        "LVE_mm2": 28.24,
        "LVE_mm2_sd": 1.2,
        "MVE_mm": 1.621,
        "MVE_mm_sd": 0.01,
        "FDD_mm2": 0.1141,
        "FDD_mm2_sd": 0.002,
        "CER_pct": 53.12,
        "CER_pct_sd": 1.1,
        "WER_pct": 77.5,
        "WER_pct_sd": 2.0,
        "VER_pct": 56.23,
        "VER_pct_sd": 1.3,
        "seeds": 3,
    }
    assert len(paths) == 2


def test_readme_command_rewrites_only_the_block(tmp_path, monkeypatch):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"seed": 1, "eval": {"out": "out/eval"}}))
    (tmp_path / "out/eval").mkdir(parents=True)
    (tmp_path / "out/eval/metrics.json").write_text(json.dumps(METRICS_JSON))
    (tmp_path / "out/eval/run.json").write_text(json.dumps(RUN))
    readme = tmp_path / "README.md"
    readme.write_text(f"# title\n\nbefore\n{report.START}\nold table\n{report.END}\nafter\n")
    monkeypatch.chdir(tmp_path)
    assert report.main(["readme"]) == 0
    text = readme.read_text()
    assert text.startswith("# title\n\nbefore\n") and text.endswith("\nafter\n")
    assert "old table" not in text and "| `faceformer-avguide` | 2.824e-05" in text
    assert report.main(["readme"]) == 0 and readme.read_text() == text  # idempotent
    readme.write_text("no markers\n")
    with pytest.raises(ValueError, match="markers"):
        report.main(["readme"])
    (tmp_path / "out/eval/run.json").unlink()
    assert report.main(["readme"]) == 1


def test_study_block_lists_every_model_and_its_paired_difference():
    summary = {
        "oracle": {"LVE": 9.2e-6, "CER": 0.2, "closure_rate": 1.0},
        "faceformer-mse+rlv": {"LVE": 1.54e-5, "CER": 0.284, "closure_rate": 0.3, "n_seeds": 3, "weight": 0.0},
        "faceformer-critic": {"LVE": 1.5e-5, "CER": 0.25, "closure_rate": 0.5, "n_seeds": 3, "weight": 3.1e-7},
    }
    paired = pd.DataFrame(
        [
            {
                "model": "faceformer-critic",
                "control": "faceformer-mse+rlv",
                "metric": m,
                "diff": d,
                "lo": d - 1,
                "hi": d + 1,
            }
            for m, d in (("LVE", -2.6), ("CER", -3.4), ("closure_rate", 20.0))
        ]
    )
    block = report.study_block(summary, paired, {"guide": {"epochs": 6}})
    start, end = report.markers("study")
    assert block.startswith(start) and block.endswith(end) and "6 epochs" in block
    assert "| `faceformer-critic` | 15.00 |  | 25.0 |  |  | 50 |  | 3.1e-07 | 3 |" in block
    row = (
        "| `faceformer-critic` | `faceformer-mse+rlv` | -2.6 [-3.6, -1.6] | -3.4 [-4.4, -2.4] | +20.0 [+19.0, +21.0] |"
    )
    assert row in block
    with pytest.raises(ValueError, match="block"):
        report.markers("other")


def test_readme_has_the_generated_blocks():
    text = (ROOT / "README.md").read_text()
    for block in report.BLOCKS:
        start, end = report.markers(block)
        assert text.count(start) == 1 and text.count(end) == 1 and text.index(start) < text.index(end), block


# ---------------------------------------------------------------- videos and mouth crops on the smoke corpus


@pytest.fixture(scope="module")
def smoke_corpus():
    from avguide.data.corpus import Corpus
    from avguide.pipeline import require

    params = load_params(profile="smoke")
    require(params, "corpus")
    return Corpus(ROOT / params["prepare"]["out"])


def test_comparison_videos_have_three_faces_and_sound(smoke_corpus, tmp_path):
    import imageio_ffmpeg

    from avguide.render.video import read_video

    utt = smoke_corpus.split("test")["utterance"].iloc[0]
    true = smoke_corpus.vertices(utt)
    preds = {
        "ground_truth": [true],
        "static_template": [true],
        "ff-baseline": [true * 1.001],
        "ff-mse": [true],
        "ff-avguide": [true * 0.999],
    }
    paths = report.comparison_videos(smoke_corpus, preds, [utt], tmp_path, size=64)
    assert [p.name for p in paths] == [f"ff_{utt}.mp4"]
    frames, fps = read_video(paths[0])
    assert frames.shape[2] == 3 * 64 and len(frames) == len(true) and fps == smoke_corpus.row(utt).fps
    probe = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-i", str(paths[0])], capture_output=True, text=True)
    assert "Audio:" in probe.stderr


def test_mouth_strips_show_the_chosen_frames(smoke_corpus):
    from avguide.render.mouth import MouthView

    row = smoke_corpus.split("test").iloc[0]
    true = smoke_corpus.vertices(row.utterance)
    view = MouthView(smoke_corpus.topology)
    crops = report.mouth_crops(view, true, smoke_corpus.templates[row.subject], [0, 3])
    assert crops.shape == (2, 88, 88) and 0 <= crops.min() and crops.max() <= 1
    fig = report.plot_strips({"ground_truth": crops, "other": crops[::-1]}, ["a", "b"])
    assert len(fig.axes) == 4 and fig.axes[0].get_title() == "a"


def paired_rows(model, seed, char_err, lve_value, utterances):
    return [
        {
            "model": model,
            "seed": seed,
            "utterance": u,
            "n_frames": 10 + k,
            "LVE": lve_value,
            "MVE": 1.0,
            "FDD": 1.0,
            "char_err": e,
            "chars": 20,
            "word_err": 0,
            "words": 4,
            "vis_err": e,
            "visemes": 20,
        }
        for k, (u, e) in enumerate(zip(utterances, char_err))
    ]


def test_paired_differences_score_both_models_on_the_same_draw():
    rng = np.random.default_rng(1)
    utts = [f"u{k}" for k in range(40)]
    rows = []
    for seed in (0, 1):
        control = rng.integers(2, 8, size=len(utts))
        rows += paired_rows("ff-mse+rlv", seed, control, 2.0, utts)
        rows += paired_rows("ff-avguide", seed, control - 1, 2.2, utts)  # one error fewer everywhere, LVE +10 %
        rows += paired_rows("ff-baseline", seed, control, 2.0, utts)
        rows += paired_rows("ct-avguide", seed, control, 2.0, utts)  # no control: not compared
    paired = report.paired_differences(pd.DataFrame(rows))
    assert set(paired["model"]) == {"ff-avguide"} and set(paired["control"]) == {"ff-mse+rlv"}
    by = paired.set_index("metric")
    assert by.loc["CER", "diff"] == pytest.approx(-5.0)  # 1 of 20 characters, in points
    assert by.loc["CER", "lo"] == pytest.approx(-5.0) and by.loc["CER", "hi"] == pytest.approx(
        -5.0
    )  # paired: no spread
    assert by.loc["LVE", "diff"] == pytest.approx(10.0)
    noisy = pd.DataFrame(rows)
    guided = noisy["model"] == "ff-avguide"
    noisy.loc[guided, "char_err"] = noisy.loc[guided, "char_err"] + rng.integers(-3, 2, size=int(guided.sum()))
    row = report.paired_differences(noisy).set_index("metric").loc["CER"]
    assert row["lo"] < row["diff"] < row["hi"] < 0
    table = report.paired_table(paired)
    assert "| `ff-avguide` − `ff-mse+rlv` | +10.0 % [+10.0, +10.0] | -5.0 [-5.0, -5.0] | -5.0 [-5.0, -5.0] |" in table
    block = report.readme_block(METRICS_JSON, RUN, paired=paired)
    assert table in block and table not in report.readme_block(METRICS_JSON, RUN)
    with pytest.raises(ValueError, match="different utterances"):
        report.paired_differences(
            pd.DataFrame([r for r in rows if not (r["model"] == "ff-mse+rlv" and r["utterance"] == "u0")])
        )
