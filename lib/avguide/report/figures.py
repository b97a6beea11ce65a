"""The evaluation report: figures, videos and the README's results block, from what the evaluate stage wrote.

Tables come from `<eval.out>/per_utterance.csv` (one row per model, seed and test utterance); figures are
seaborn/matplotlib figures that `save` writes as PNG under `<eval.out>/figures/`; videos are MP4s with the
utterance's sound under `<eval.out>/videos/`. Notebook 04 calls these functions in order and shows the
results; `python -m avguide.report readme` rewrites README.md's results block from `metrics.json`.
"""
from __future__ import annotations

import argparse
import difflib
import json
import os
import platform
import re
import subprocess
import sys
import textwrap
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path

import matplotlib

if "ipykernel" not in sys.modules:  # scripts and tests draw off screen; notebooks keep their inline backend
    matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from avguide.metrics import edit_distance, to_visemes  # noqa: E402

METRICS = ("LVE", "MVE", "FDD", "CER", "WER", "VER")
# how each metric is drawn: label and factor from the stored unit (m², m, m², fraction)
UNITS = {"LVE": ("LVE (mm²)", 1e6), "MVE": ("MVE (mm)", 1e3), "FDD": ("FDD (mm²)", 1e6),
         "CER": ("judge CER (%)", 100), "WER": ("judge WER (%)", 100), "VER": ("judge VER (%)", 100)}
GAP = "∅"  # the empty side of an insertion or a deletion in an alignment
BOUNDS = ("ground_truth", "static_template")
BLOCKS = ("results", "ablation")  # README blocks: the main comparison (with figures), the ablation (table only)


def markers(block: str = "results") -> tuple[str, str]:
    if block not in BLOCKS:
        raise ValueError(f"README block must be one of {BLOCKS}; found {block!r}")
    return f"<!-- {block}:start -->", f"<!-- {block}:end -->"


START, END = markers("results")
FIGURES = {"metrics": "metrics per model", "subjects": "per test subject", "visemes": "viseme confusion of the judge",
           "aperture": "lip aperture of one test utterance", "strips": "mouth frames at closures and open vowels",
           "tsne": "t-SNE of the expert's features for lip-alike words", "curves": "training curves"}


# ---------------------------------------------------------------- per-utterance tables

def per_utterance(eval_dir: str | Path) -> pd.DataFrame:
    """`per_utterance.csv` with error counts: char/word/viseme edits and reference lengths per row, so any
    group of rows pools into corpus-level CER, WER and VER exactly as avguide.metrics does."""
    table = pd.read_csv(Path(eval_dir) / "per_utterance.csv", keep_default_na=False)
    refs, hyps = table["reference"].astype(str).tolist(), table["judge"].astype(str).tolist()
    visemes = to_visemes(refs + hyps)
    table["char_err"] = [edit_distance(r, h) for r, h in zip(refs, hyps)]
    table["chars"] = [len(r) for r in refs]
    table["word_err"] = [edit_distance(r.split(), h.split()) for r, h in zip(refs, hyps)]
    table["words"] = [len(r.split()) for r in refs]
    table["vis_err"] = [edit_distance(r, h) for r, h in zip(visemes[: len(refs)], visemes[len(refs):])]
    table["visemes"] = [len(r) for r in visemes[: len(refs)]]
    return table


def _parts(rows: pd.DataFrame) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per metric, a numerator and a denominator per row: a group's pooled metric is sum / sum."""
    w, one = rows["n_frames"].to_numpy(float), np.ones(len(rows))
    return {"LVE": (rows["LVE"].to_numpy() * w, w), "MVE": (rows["MVE"].to_numpy() * w, w),
            "FDD": (rows["FDD"].to_numpy(), one), "CER": (rows["char_err"].to_numpy(), rows["chars"].to_numpy()),
            "WER": (rows["word_err"].to_numpy(), rows["words"].to_numpy()),
            "VER": (rows["vis_err"].to_numpy(), rows["visemes"].to_numpy())}


def pooled(rows: pd.DataFrame) -> pd.Series:
    """The six metrics of a group of rows, pooled as the evaluate stage pools a whole run: LVE and MVE over
    frames, FDD over utterances, error rates over reference characters / words / visemes."""
    return pd.Series({m: num.sum() / den.sum() for m, (num, den) in _parts(rows).items()})


def seed_metrics(table: pd.DataFrame) -> pd.DataFrame:
    """One row per model and seed with the six pooled metrics (what metrics.json averages over seeds)."""
    out = table.groupby(["model", "seed"], sort=False).apply(pooled, include_groups=False)
    return out.reset_index()


def subject_metrics(table: pd.DataFrame) -> pd.DataFrame:
    """One row per model and test subject, all seeds pooled."""
    return table.groupby(["model", "subject"], sort=False).apply(pooled, include_groups=False).reset_index()


def error_bars(table: pd.DataFrame, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Per model: the mean over seeds of each metric and an error bar (lo, hi). Several seeds: ± their
    standard deviation. One seed: the 95 % bootstrap interval over test utterances (so a difference
    between two models can be judged even then); column `bar` says which."""
    rows = []
    rng = np.random.default_rng(seed)
    for model, group in table.groupby("model", sort=False):
        per_seed = seed_metrics(group)
        mean = per_seed[list(METRICS)].mean()
        if len(per_seed) > 1:
            sd = per_seed[list(METRICS)].std(ddof=1)
            lo, hi, bar = mean - sd, mean + sd, f"± sd over {len(per_seed)} seeds"
        else:
            pick = rng.integers(len(group), size=(n_boot, len(group)))
            boot = pd.DataFrame({m: num[pick].sum(1) / den[pick].sum(1) for m, (num, den) in _parts(group).items()})
            lo, hi, bar = boot.quantile(0.025), boot.quantile(0.975), f"95 % bootstrap CI over {len(group)} utterances"
        rows += [{"model": model, "metric": m, "mean": mean[m], "lo": lo[m], "hi": hi[m], "bar": bar} for m in METRICS]
    return pd.DataFrame(rows)


PAIRED = ("LVE", "CER", "VER")  # the guided-minus-control differences the README states


def paired_differences(table: pd.DataFrame, n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Each guided model against its control, `<animator>-<loss>` minus `<animator>-mse`, on the same test
    utterances and seeds: the difference of the pooled LVE (in % of the control's) and of CER and VER (in
    points), with a 95 % paired bootstrap interval: utterances are resampled (each with all its seeds) and the
    same draw scores both models, so what the two share (hard utterances, the subject) cancels out."""
    def sums(name):  # per utterance, each metric's numerator and denominator summed over seeds
        rows = table[table["model"] == name]
        frame = pd.DataFrame({f"{m}_{k}": part[k] for m, part in _parts(rows).items() if m in PAIRED for k in (0, 1)})
        return frame.assign(utterance=rows["utterance"].to_numpy()).groupby("utterance").sum()

    def rate(frame, m, index):
        return frame[f"{m}_0"].to_numpy()[index].sum(-1) / frame[f"{m}_1"].to_numpy()[index].sum(-1)

    models = list(dict.fromkeys(table["model"]))
    rows, rng = [], np.random.default_rng(seed)
    for model in models:
        animator, _, loss = model.partition("-")
        control = f"{animator}-mse"
        if loss in ("", "baseline", "mse") or control not in models:
            continue
        a, b = sums(model), sums(control)
        if set(a.index) != set(b.index):
            raise ValueError(f"{model} and {control} were scored on different utterances")
        b = b.loc[a.index]
        everything, pick = np.arange(len(a)), rng.integers(len(a), size=(n_boot, len(a)))
        for m in PAIRED:
            def diff(index):
                mine, theirs = rate(a, m, index), rate(b, m, index)
                return 100 * (mine / theirs - 1) if m == "LVE" else 100 * (mine - theirs)
            boot = diff(pick)
            rows.append({"model": model, "control": control, "metric": m, "diff": float(diff(everything)),
                         "lo": float(np.quantile(boot, 0.025)), "hi": float(np.quantile(boot, 0.975))})
    return pd.DataFrame(rows, columns=["model", "control", "metric", "diff", "lo", "hi"])


def paired_table(paired: pd.DataFrame) -> str:
    """paired_differences as a Markdown table: difference [95 % interval], LVE in %, error rates in points."""
    lines = ["| guided − control | LVE | judge CER | VER |", "| --- | --- | --- | --- |"]
    for (model, control), group in paired.groupby(["model", "control"], sort=False):
        cells = []
        for m in PAIRED:
            r = group[group["metric"] == m].iloc[0]
            unit = " %" if m == "LVE" else ""
            cells.append(f"{r['diff']:+.1f}{unit} [{r['lo']:+.1f}, {r['hi']:+.1f}]")
        lines.append(f"| `{model}` − `{control}` | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_table(metrics: dict, folder: str | Path) -> list[Path]:
    """metrics.json as one small JSON per model in display units (mm², mm, %), under `folder`: declared as the
    stage's DVC metrics, so `dvc metrics show` prints a model x metric table (and `dvc metrics diff` compares
    runs model by model). Files of models no longer evaluated are removed."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    names = {"LVE": "LVE_mm2", "MVE": "MVE_mm", "FDD": "FDD_mm2", "CER": "CER_pct", "WER": "WER_pct", "VER": "VER_pct"}
    paths = []
    for model, m in metrics.items():
        row = {}
        for k, name in names.items():
            row[name] = float(f"{m[k] * UNITS[k][1]:.4g}")
            if f"{k}_std" in m:
                row[f"{name}_sd"] = float(f"{m[k + '_std'] * UNITS[k][1]:.3g}")
        row["seeds"] = m.get("n_seeds", 1)
        paths.append(folder / f"{model}.json")
        paths[-1].write_text(json.dumps(row, indent=1) + "\n")
    for stale in set(folder.glob("*.json")) - set(paths):
        stale.unlink()
    return paths


# ---------------------------------------------------------------- model colours

def model_colours(models) -> dict[str, tuple]:
    """Bounds in black and grey; each animator its own hue, a darker shade for each later variant."""
    models = list(dict.fromkeys(models))
    animators = list(dict.fromkeys(m.split("-")[0] for m in models if m not in BOUNDS))
    hues = dict(zip(animators, sns.color_palette("colorblind", max(len(animators), 1))))
    colours = {"ground_truth": (0.1, 0.1, 0.1), "static_template": (0.65, 0.65, 0.65)}
    for a in animators:
        family = [m for m in models if m.split("-")[0] == a]
        shades = sns.light_palette(hues[a], len(family) + 2)[2:]
        colours.update(zip(family, shades))
    return {m: colours[m] for m in models}


def line_style(model: str) -> str:
    variant = model.partition("-")[2]
    return {"baseline": "-", "mse": ":", "avguide": "--"}.get(variant, "-.")


def save(fig, out_dir: str | Path, name: str) -> Path:
    """`fig` as `<out_dir>/<name>.png` (the figure stays open, so a notebook still shows it)."""
    path = Path(out_dir) / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path


# ---------------------------------------------------------------- figures: metrics

def plot_metrics(bars: pd.DataFrame):
    """One panel per metric: a bar per model (mean over seeds) with its error bar (see `error_bars`)."""
    models = list(dict.fromkeys(bars["model"]))
    colours = model_colours(models)
    fig, axes = plt.subplots(1, len(METRICS), figsize=(2.9 * len(METRICS), 0.42 * len(models) + 1.4), sharey=True)
    for ax, m in zip(axes, METRICS):
        label, k = UNITS[m]
        rows = bars[bars["metric"] == m].set_index("model").loc[models]
        sns.barplot(x=rows["mean"] * k, y=models, hue=models, palette=colours, legend=False, ax=ax, orient="h")
        ax.errorbar(rows["mean"] * k, np.arange(len(models)), xerr=[(rows["mean"] - rows["lo"]) * k,
                    (rows["hi"] - rows["mean"]) * k], fmt="none", ecolor="0.2", capsize=3, lw=1)
        ax.set_xlabel(label)
        ax.set_title(m)
        ax.axvline(0, color="0.3", lw=0.8)
    fig.suptitle(f"Test subjects; lower is better (FDD: nearer 0). Error bars: {bars['bar'].iloc[-1]}", y=1.0)
    fig.tight_layout()
    return fig


def plot_subjects(subjects: pd.DataFrame, metrics=("LVE", "CER", "VER")):
    """Per-subject breakdown: one panel per metric, a bar per model and test subject."""
    axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 0.45 * subjects["model"].nunique() + 1.8),
                        sharey=True, squeeze=False)[1][0]
    for ax, m in zip(axes, metrics):
        label, k = UNITS[m]
        sns.barplot(data=subjects.assign(value=subjects[m] * k), x="value", y="model", hue="subject", ax=ax,
                    orient="h", palette="muted")
        ax.set_xlabel(label)
        ax.set_ylabel("")
        handles, names = ax.get_legend_handles_labels()
        ax.get_legend().remove()
    fig = axes[0].figure
    fig.legend(handles, names, title="test subject", loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=len(names),
               frameon=False)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------- figures: viseme confusion of the judge

def align(ref: list, hyp: list) -> list[tuple]:
    """A minimum edit-distance alignment: (reference, hypothesis) pairs, GAP on the missing side of an
    insertion or a deletion. Its number of unequal pairs is avguide.metrics.edit_distance."""
    n, m = len(ref), len(hyp)
    cost = np.zeros((n + 1, m + 1), int)
    cost[:, 0], cost[0, :] = np.arange(n + 1), np.arange(m + 1)
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            cost[i, j] = min(cost[i - 1, j] + 1, cost[i, j - 1] + 1, cost[i - 1, j - 1] + (ref[i - 1] != hyp[j - 1]))
    pairs, i, j = [], n, m
    while i or j:
        if i and j and cost[i, j] == cost[i - 1, j - 1] + (ref[i - 1] != hyp[j - 1]):
            pairs.append((ref[i - 1], hyp[j - 1]))
            i, j = i - 1, j - 1
        elif i and cost[i, j] == cost[i - 1, j] + 1:
            pairs.append((ref[i - 1], GAP))
            i -= 1
        else:
            pairs.append((GAP, hyp[j - 1]))
            j -= 1
    return pairs[::-1]


def viseme_confusion(refs: list[str], hyps: list[str]) -> pd.DataFrame:
    """Counts of (reference viseme, judge viseme) over aligned transcripts; the GAP column counts
    deletions, the GAP row insertions. Row v sums to the number of v in the references."""
    from avguide.face.visemes import load_table

    labels = load_table().visemes + [GAP]
    counts = pd.DataFrame(0, index=pd.Index(labels, name="reference"), columns=pd.Index(labels, name="judge"))
    visemes = to_visemes(list(refs) + list(hyps))
    for r, h in zip(visemes[: len(refs)], visemes[len(refs):]):
        for a, b in align(r, h):
            counts.loc[a, b] += 1
    return counts


def plot_confusions(confusions: dict[str, pd.DataFrame]):
    """Row-normalised viseme confusion of the judge, one panel per model (the title gives the VER); visemes
    that no panel has are left out, empty cells are white."""
    used = sum(c.sum(axis=0) + c.sum(axis=1) for c in confusions.values()) > 0
    labels = [v for v in next(iter(confusions.values())).index if used[v]]
    n = len(confusions)
    fig, axes = plt.subplots(1, n + 1, figsize=(5.0 * n + 0.6, 5.0), gridspec_kw={"width_ratios": [1] * n + [0.05]})
    for k, (ax, (name, counts)) in enumerate(zip(axes, confusions.items())):
        counts = counts.loc[labels, labels]
        rows = counts.drop(index=GAP, errors="ignore")
        share = rows.div(rows.sum(axis=1).replace(0, np.nan), axis=0) * 100
        sns.heatmap(share, ax=ax, cmap="rocket_r", vmin=0, vmax=100, square=True, mask=~(share > 0),
                    cbar=k == n - 1, cbar_ax=axes[-1] if k == n - 1 else None,
                    cbar_kws={"label": "% of the reference viseme"}, linewidths=0.3, linecolor="0.92")
        errors = counts.values.sum() - np.trace(counts.drop(index=GAP, columns=GAP, errors="ignore").values)
        ax.set_title(f"{name}: VER {100 * errors / max(rows.values.sum(), 1):.1f} %", fontsize=10)
        ax.tick_params(labelsize=8)
        ax.set_facecolor("white")
    fig.suptitle(f"What the judge reads (columns; {GAP}: nothing, deleted) for each viseme said (rows); "
                 "insertions count in the VER, not drawn", y=1.0)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------- predictions of a few test utterances

def predict_utterances(params: dict, utterances: list[str]) -> dict[str, list[np.ndarray]]:
    """{model: [(T, V, 3) per utterance]} for the ground truth, the static template and every trained
    model of the evaluate stage (its first seed), on the given test utterances."""
    import torch
    from torch.utils.data import Subset

    from avguide.data.corpus import Corpus
    from avguide.data.dataset import TalkingFaceDataset
    from avguide.evaluate import trained_models
    from avguide.models.checkpoint import load_checkpoint
    from avguide.params import project_root
    from avguide.training.run import ANIMATORS, predict_split

    corpus = Corpus(project_root() / params["prepare"]["out"])
    test = TalkingFaceDataset(corpus, "test")
    index = {u: i for i, u in enumerate(test.rows["utterance"])}
    unknown = [u for u in utterances if u not in index]
    if unknown:
        raise ValueError(f"{corpus.root / 'manifest.csv'}: {unknown} are not test utterances")
    subset = Subset(test, [index[u] for u in utterances])
    true = [corpus.vertices(u) for u in utterances]
    out = {"ground_truth": true, "static_template": [np.broadcast_to(corpus.templates[corpus.row(u).subject], t.shape)
                                                     for u, t in zip(utterances, true)]}
    torch.manual_seed(params["seed"])
    for key, runs in trained_models(params).items():
        model = load_checkpoint(*ANIMATORS[key.split("-")[0]], runs[0][1])
        out[key] = predict_split(model, subset)[0]
    return out


def pick_utterances(phonemes: pd.DataFrame, utterances: list[str], n: int) -> list[str]:
    """The n utterances (of those given, in their order on ties) with the most bilabials and open vowels."""
    shown = phonemes[phonemes["utterance"].isin(utterances)]
    score = shown["viseme"].isin(["PP"]).groupby(shown["utterance"]).sum() + \
        shown["viseme"].str.startswith("aa").groupby(shown["utterance"]).sum()
    score = score.reindex(utterances, fill_value=0)
    return sorted(utterances, key=lambda u: -score[u])[:n]


# ---------------------------------------------------------------- figures: lip aperture and frame strips

def lip_aperture(vertices: np.ndarray) -> np.ndarray:
    """Inner-lip opening at the mouth's midline over time, in mm, of (T, V, 3) or (T, V·3) vertices of the
    project's template topology (avguide.face.template)."""
    from avguide.face.template import lip_opening

    v = np.asarray(vertices, np.float64)
    return 1000 * lip_opening(v.reshape(len(v), -1, 3))


def shade_phonemes(ax, phonemes: pd.DataFrame, labels: bool = True) -> None:
    """Bilabials (red) and open vowels (blue) as spans behind a time plot, phonemes written on top."""
    for row in phonemes.itertuples():
        if row.viseme == "PP" or row.viseme.startswith("aa"):
            ax.axvspan(row.start_s, row.end_s, color="tab:red" if row.viseme == "PP" else "tab:blue", alpha=0.12, lw=0)
        if labels and row.viseme != "sil":
            ax.text((row.start_s + row.end_s) / 2, 1.01, row.phoneme, transform=ax.get_xaxis_transform(),
                    ha="center", va="bottom", fontsize=7)


def plot_aperture(apertures: dict[str, np.ndarray], fps: float, phonemes: pd.DataFrame, title: str = ""):
    """Lip aperture over time of one utterance, ground truth against each model."""
    colours = model_colours(apertures)
    fig, ax = plt.subplots(figsize=(11, 4))
    shade_phonemes(ax, phonemes)
    for name, a in apertures.items():
        ax.plot(np.arange(len(a)) / fps, a, color=colours[name], ls=line_style(name) if name not in BOUNDS else "-",
                lw=2.4 if name == "ground_truth" else 1.4, label=name)
    ax.axhline(0, color="0.5", lw=0.6)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("inner-lip opening (mm)")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    ax.set_title(title + "\n(red: bilabials p b m, where the lips must close; blue: open vowels)", fontsize=10, pad=14)
    fig.tight_layout()
    return fig


def key_frames(phonemes: pd.DataFrame, aperture: np.ndarray, fps: float, n: int = 3) -> list[tuple[int, str]]:
    """(frame, label) of up to n bilabial closures (the frame of each p/b/m with the smallest ground-truth
    aperture) and n open vowels (the frame of each 'aa' with the largest), spread over the utterance."""
    picks = {"closure": [], "open": []}
    for row in phonemes.itertuples():
        kind = "closure" if row.viseme == "PP" else "open" if row.viseme.startswith("aa") else None
        if kind is None:
            continue
        frames = np.arange(int(np.ceil(row.start_s * fps)), int(np.floor(row.end_s * fps)) + 1)
        frames = frames[frames < len(aperture)]
        if not len(frames):
            frames = np.array([min(int(round((row.start_s + row.end_s) / 2 * fps)), len(aperture) - 1)])
        best = frames[np.argmin(aperture[frames])] if kind == "closure" else frames[np.argmax(aperture[frames])]
        picks[kind].append((int(best), f"{row.phoneme} ({kind})\n{best / fps:.2f} s"))
    out = []
    for kind, found in picks.items():
        keep = np.unique(np.linspace(0, len(found) - 1, min(n, len(found))).round().astype(int)) if found else []
        out += [found[k] for k in keep]
    return sorted(out)


def mouth_crops(view, sequence: np.ndarray, template: np.ndarray, frames: list[int]) -> np.ndarray:
    """(len(frames), H, W) mouth renders (the judge's view) of the given frames of one sequence."""
    import torch

    v = torch.as_tensor(np.array(np.asarray(sequence)[frames], np.float32)).reshape(len(frames), -1, 3)
    with torch.no_grad():
        return view.clip(v, template).numpy()


def plot_strips(crops: dict[str, np.ndarray], labels: list[str], title: str = "", notes: dict[str, list[str]] | None = None):
    """A row of mouth crops per model at the same frames (the paper's figure 2); `notes` (per model, one
    short text per frame, e.g. the lip aperture) are written in a corner of each crop."""
    names, cols = list(crops), len(labels)
    fig, axes = plt.subplots(len(names), cols, figsize=(1.45 * cols + 1.2, 1.55 * len(names) + 0.5), squeeze=False)
    for r, name in enumerate(names):
        for c in range(cols):
            ax = axes[r, c]
            ax.imshow(crops[name][c], cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(labels[c], fontsize=8)
            if notes and name in notes:
                ax.text(0.03, 0.04, notes[name][c], transform=ax.transAxes, fontsize=7, color="white",
                        bbox={"facecolor": "black", "alpha": 0.55, "pad": 1.5, "lw": 0})
        axes[r, 0].set_ylabel(name, fontsize=8, rotation=0, ha="right", va="center")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------- figure: t-SNE of the expert's features

@lru_cache(maxsize=None)
def word_visemes(word: str) -> tuple[str, ...]:
    """The visemes of the phonemes espeak-ng says for a word on its own (pauses dropped), as phonemes.csv
    writes them ("E+ih" for a diphthong)."""
    from avguide.data.speech import synthesize
    from avguide.face.visemes import load_table

    table = load_table()
    return tuple("+".join(table.of(p)) for p, _, _ in synthesize(word).phonemes if not p.startswith("_"))


def word_spans(phonemes: pd.DataFrame, text: str) -> list[tuple[str, float, float] | None]:
    """(word, start s, end s) for each word of `text`, found by aligning each word's own visemes with the
    utterance's phonemes (whose sounds vary a little in context; linking sounds between words are left
    out); None for a word not wholly matched."""
    spoken = phonemes[~phonemes["phoneme"].str.startswith("_")]
    said = spoken["viseme"].tolist()
    owner, wanted = [], []
    for k, w in enumerate(text.split()):
        owner += [k] * len(word_visemes(w))
        wanted += list(word_visemes(w))
    matched: dict[int, list[int]] = {}
    for a, b, size in difflib.SequenceMatcher(None, wanted, said, autojunk=False).get_matching_blocks():
        for d in range(size):
            matched.setdefault(owner[a + d], []).append(b + d)
    spans = []
    for k, w in enumerate(text.split()):
        at = matched.get(k, [])
        if len(at) != len(word_visemes(w)):
            spans.append(None)
        else:
            spans.append((w, float(spoken["start_s"].iloc[min(at)]), float(spoken["end_s"].iloc[max(at)])))
    return spans


def word_features(expert, video: np.ndarray, audio: np.ndarray, spans: list[tuple[str, float, float]],
                  fps: float) -> dict[str, list[np.ndarray]]:
    """The expert's encoder output averaged over each word's frames, with the speech ("audio-visual") and
    with silence in its place ("video only"); video (T, H, W) in [0, 1], audio 16 kHz."""
    import torch

    v = torch.as_tensor(np.asarray(video, np.float32))[None]
    a = torch.as_tensor(np.asarray(audio, np.float32))[None]
    out = {}
    with torch.no_grad():
        for name, sound in (("audio-visual", a), ("video only", torch.zeros_like(a))):
            enc, n = expert.encode(v, None, sound, None)
            rate = int(n[0]) / v.shape[1] * fps  # encoder frames per second
            out[name] = [enc[0, int(s * rate): max(int(np.ceil(e * rate)), int(s * rate) + 1)].mean(0).numpy()
                         for _, s, e in spans]
    return out


def nearest_neighbour_accuracy(x: np.ndarray, y: np.ndarray) -> float:
    """Leave-one-out 1-nearest-neighbour accuracy (cosine) of labels y from features x."""
    x = x / np.linalg.norm(x, axis=1, keepdims=True).clip(1e-12)
    sim = x @ x.T
    np.fill_diagonal(sim, -np.inf)
    return float((y[sim.argmax(1)] == y).mean())


def tsne(x: np.ndarray, seed: int = 0) -> np.ndarray:
    """2-D t-SNE of the rows of x (perplexity scaled down for few points)."""
    from sklearn.manifold import TSNE

    perplexity = float(np.clip((len(x) - 1) / 3, 1, 30))
    return TSNE(2, perplexity=perplexity, init="pca", random_state=seed, metric="cosine").fit_transform(x)


def plot_tsne(features: pd.DataFrame):
    """Panels: word pairs (columns) x input (rows: audio-visual, video only). `features`: columns pair,
    input, word, x (the feature vector). The title of each panel gives the 1-NN word accuracy."""
    pairs, inputs = sorted(set(features["pair"])), list(dict.fromkeys(features["input"]))
    fig, axes = plt.subplots(len(inputs), len(pairs), figsize=(3.6 * len(pairs), 3.4 * len(inputs)), squeeze=False)
    for c, pair in enumerate(pairs):
        for r, name in enumerate(inputs):
            ax, rows = axes[r, c], features[(features["pair"] == pair) & (features["input"] == name)]
            x, y = np.stack(rows["x"]), rows["word"].to_numpy()
            xy = tsne(x) if len(x) > 3 else x[:, :2]
            sns.scatterplot(x=xy[:, 0], y=xy[:, 1], hue=y, style=y, ax=ax, s=40, palette="Set1")
            ax.set_title(f"{name}: {pair}\n1-NN word accuracy {100 * nearest_neighbour_accuracy(x, y):.0f} % (n={len(y)})",
                         fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.legend(fontsize=8, loc="best")
    fig.suptitle("The expert's encoder features of words that look alike on the lips (t-SNE)", fontsize=10)
    fig.tight_layout()
    return fig


def lip_alike_features(params: dict, splits=("test",), pairs=None) -> pd.DataFrame:
    """Encoder features of the guidance expert (the one fine-tuned on 3D renders; the pretrained one when
    there is none) for every occurrence of a lip-alike word pair of the grammar in ground-truth mouth
    renders of the given splits of the 3D corpus. Needs the corpus's phoneme timings (phonemes.csv)."""
    import torch

    from avguide.data.corpus import Corpus
    from avguide.data.synthetic import load_grammar
    from avguide.models.expert import load_expert
    from avguide.params import project_root
    from avguide.render.mouth import MouthView

    root = project_root()
    corpus = Corpus(root / params["prepare"]["out"])
    phonemes = pd.read_csv(corpus.root / "phonemes.csv", keep_default_na=False)
    folder = root / params["guide"]["expert_out"] / "model"
    expert = load_expert(folder if (folder / "config.json").is_file() else root / params["pretrain_expert"]["out"] / "model", "cpu")
    pairs = pairs or [p for p in load_grammar()["lip_alike"] if all(len(w) > 1 for w in p)]
    words = {w: " / ".join(p) for p in pairs for w in p}
    view, rows = MouthView(corpus.topology), []
    for row in corpus.manifest[corpus.manifest["split"].isin(splits)].itertuples():
        spans = [s for s in word_spans(phonemes[phonemes["utterance"] == row.utterance], row.text) if s and s[0] in words]
        if not spans:
            continue
        audio, vertices = corpus.load(row.utterance)
        with torch.no_grad():
            video = view.clip(torch.as_tensor(vertices), corpus.templates[row.subject]).clamp(0, 1).numpy()
        video = np.round(video * 255) / 255  # as the expert reads renders (uint8 frames)
        for name, feats in word_features(expert, video, audio, spans, row.fps).items():
            rows += [{"pair": words[w], "input": name, "word": w, "utterance": row.utterance, "x": f}
                     for (w, _, _), f in zip(spans, feats)]
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- figure: training curves

def training_curves(folders) -> pd.DataFrame:
    """Every DVCLive run under the given model folders (`<folder>/dvclive[/<part>]/plots/metrics/`): rows of
    run, split (train/val), step, loss."""
    rows = []
    for folder in folders:
        for tsv in sorted(Path(folder).glob("dvclive/**/plots/metrics/*/loss.tsv")):
            part = tsv.parent.parent.parent.parent.relative_to(Path(folder) / "dvclive")
            run = Path(folder).name + ("" if str(part) == "." else f"/{part}")
            curve = pd.read_csv(tsv, sep="\t").drop_duplicates("step", keep="last")  # a resumed run logs a step again
            rows.append(curve.rename(columns={curve.columns[-1]: "loss"}).assign(run=run, split=tsv.parent.name))
    if not rows:
        raise FileNotFoundError(f"no DVCLive loss curves (dvclive/**/plots/metrics/*/loss.tsv) under {list(map(str, folders))}")
    return pd.concat(rows, ignore_index=True)[["run", "split", "step", "loss"]]


def plot_curves(curves: pd.DataFrame, cols: int = 4):
    """Training and validation loss of every run, one panel each (log scale: the losses differ in unit)."""
    grid = sns.relplot(data=curves, x="step", y="loss", hue="split", col="run", col_wrap=min(cols, curves["run"].nunique()),
                       kind="line", height=2.3, aspect=1.35, facet_kws={"sharex": False, "sharey": False},
                       palette={"train": "tab:blue", "val": "tab:orange"}, marker=".", markersize=5, markeredgewidth=0,
                       errorbar=None)
    for ax in grid.axes.flat:
        y = np.concatenate([line.get_ydata() for line in ax.get_lines()] or [[1.0]])
        y = y[np.isfinite(y) & (y > 0)]
        if len(y) and y.max() / y.min() > 10:  # log scale where the loss falls by more than a decade
            ax.set_yscale("log")
            ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.yaxis.set_major_locator(matplotlib.ticker.MaxNLocator(4) if ax.get_yscale() == "linear"
                                   else matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:.3g}"))
    grid.set_titles("{col_name}", size=9)
    grid.figure.suptitle("Training curves (DVCLive), every stage", y=1.02)
    return grid.figure


# ---------------------------------------------------------------- videos

def comparison_videos(corpus, predictions: dict[str, list[np.ndarray]], utterances: list[str], out_dir: str | Path,
                      size: int = 256) -> list[Path]:
    """For each animator and utterance, `<out_dir>/<animator>_<utterance>.mp4`: ground truth | baseline |
    AV-guided (`<animator>-avguide`, else its last fine-tuned variant), full face, with the sound."""
    from avguide.render import face_camera
    from avguide.render.movie import render_frames
    from avguide.render.video import caption_grid, write_video

    animators = list(dict.fromkeys(m.split("-")[0] for m in predictions if m not in BOUNDS))
    paths = []
    for k, u in enumerate(utterances):
        row = corpus.row(u)
        camera = face_camera(corpus.templates[row.subject], size=size)
        frames = {}

        def render(name):
            if name not in frames:
                frames[name] = render_frames(predictions[name][k], corpus.topology.faces, corpus.topology.albedo, camera)
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


# ---------------------------------------------------------------- provenance and the README block

def machine() -> dict:
    """CPU model, cores and GPU (or none) of this machine."""
    cpu = platform.processor() or platform.machine()
    try:
        names = re.findall(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
        cpu = names[0].strip() if names else cpu
    except OSError:
        pass
    try:
        import torch

        gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except Exception:  # noqa: BLE001 - a broken CUDA set-up still has a CPU to report
        gpu = None
    return {"cpu": cpu, "cores": os.cpu_count(), "gpu": gpu}


def git_commit(root: str | Path) -> dict:
    """HEAD's short hash and whether tracked code or parameters differ from it."""
    def git(*args):
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True).stdout.strip()

    changed = git("status", "--porcelain", "--untracked-files=no", "--", "lib", "notebooks", "params.yaml", "dvc.yaml")
    return {"commit": git("rev-parse", "--short", "HEAD") or "unknown", "uncommitted_changes": bool(changed)}


def provenance(params: dict, seconds: float) -> dict:
    """What the README states about a run: commit, machine, date, duration, test set and seeds."""
    from avguide.data.corpus import Corpus
    from avguide.params import project_root

    root = project_root()
    test = Corpus(root / params["prepare"]["out"]).split("test")
    return {**git_commit(root), "machine": machine(), "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
            "seconds": round(seconds), "test_utterances": len(test), "test_subjects": int(test["subject"].nunique()),
            "seeds": list(params["guide"]["seeds"]), "corpus": params["prepare"]["out"]}


def _number(metric: str, value: float) -> str:
    if metric in ("CER", "WER", "VER"):
        return f"{100 * value:.1f} %"
    if metric == "MVE":
        return f"{1000 * value:.2f}"
    return f"{value:.3e}"


def results_table(metrics: dict) -> str:
    """metrics.json as a Markdown table (± the standard deviation over seeds where there are several)."""
    head = "| model | LVE (m²) | MVE (mm) | FDD | judge CER | WER | VER |\n| --- | --- | --- | --- | --- | --- | --- |"
    lines = [head]
    for model, m in metrics.items():
        cells = [_number(k, m[k]) + (f" ± {_number(k, m[k + '_std'])}" if f"{k}_std" in m else "") for k in METRICS]
        lines.append(f"| `{model}` | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def readme_block(metrics: dict, run: dict, eval_dir: str = "data/eval", figures: list[str] | None = None,
                 block: str = "results", paired: pd.DataFrame | None = None) -> str:
    """The README's generated results block: where the numbers come from, the table, each guided model against
    its control (`paired`: paired_differences, when given), links to the figures (those of FIGURES named in
    `figures`; default: all). The "ablation" block has no figures."""
    start, end = markers(block)
    m = run["machine"]
    where = f"{m['cpu']}, {m['cores']} cores, " + (f"GPU {m['gpu']}" if m.get("gpu") else "no GPU")
    commit = f"`{run['commit']}`" + (" plus uncommitted changes" if run.get("uncommitted_changes") else "")
    seeds = run.get("seeds", [])
    shown = [(name, text) for name, text in FIGURES.items() if figures is None or name in figures]
    links = ", ".join(f"[{text}]({eval_dir}/figures/{name}.png)" for name, text in shown)
    command = "python -m avguide.report readme" + ("" if block == "results" else f" --block {block}")
    lines = [
        start,
        f"<!-- generated by `{command}` from {eval_dir}/metrics.json and run.json; do not edit by hand -->",
        textwrap.fill(
            f"From `{eval_dir}/metrics.json` of the evaluate stage run on {run['date']} at commit {commit}, on "
            f"{where} ({run['seconds'] / 60:.1f} min for the stage); {run['test_utterances']} test utterances of "
            f"{run['test_subjects']} unseen subjects; the guided and control models "
            + (f"over {len(seeds)} seeds (mean ± sd)." if len(seeds) > 1 else "with one seed."), 110),
        "",
        results_table(metrics),
    ]
    if paired is not None and len(paired):
        lines += ["", textwrap.fill("Each guided model against its control (the same baseline fine-tuned as long with "
                                    "the vertex MSE only), on the same test utterances and seeds: the difference "
                                    "(LVE in % of the control's, error rates in points) and its 95 % paired bootstrap "
                                    "interval over test utterances.", 110), "", paired_table(paired)]
    if block != "results":
        return "\n".join(lines + [end])
    lines.append("")
    if figures is None or "metrics" in figures:
        lines += [f"![metrics per model]({eval_dir}/figures/metrics.png)", ""]
    lines += [textwrap.fill(f"Figures: {links}. Side-by-side videos with sound (ground truth | baseline | AV-guided): "
                            f"`{eval_dir}/videos/` (DVC outputs), embedded in the executed notebook "
                            f"`data/notebooks/04_evaluate.ipynb`.", 110, break_long_words=False, break_on_hyphens=False),
              end]
    return "\n".join(lines)


def update_readme(readme: str | Path, text_block: str, block: str = "results") -> None:
    """Replace the text between the `block` markers of `readme` (markers included) with `text_block`."""
    path = Path(readme)
    text = path.read_text()
    opening, closing = markers(block)
    start, end = text.find(opening), text.find(closing)
    if start < 0 or end < start:
        raise ValueError(f"{path}: expected the markers {opening} ... {closing} around the {block} block; not found")
    path.write_text(text[:start] + text_block + text[end + len(closing):])


def main(argv: list[str] | None = None) -> int:
    from avguide.params import load_params, project_root

    parser = argparse.ArgumentParser(prog="python -m avguide.report", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    cmd = sub.add_parser("readme", help="rewrite README.md's results block from <eval.out>/metrics.json and run.json")
    cmd.add_argument("--params", default="params.yaml")
    cmd.add_argument("--readme", default=None, help="default: README.md of the project")
    cmd.add_argument("--block", default="results", choices=BLOCKS,
                     help="results: the main comparison, with figures; ablation: `make ablation`'s table")
    cmd.add_argument("--eval-dir", default=None, help="where metrics.json and run.json are; default: params eval.out")
    args = parser.parse_args(argv)
    params = load_params(args.params)
    root = project_root()
    out = Path(args.eval_dir or params["eval"]["out"])
    for name in ("metrics.json", "run.json"):
        if not (root / out / name).is_file():
            print(f"{root / out / name}: not found; run the evaluate stage first (dvc repro evaluate)", file=sys.stderr)
            return 1
    metrics = json.loads((root / out / "metrics.json").read_text())
    run = json.loads((root / out / "run.json").read_text())
    figures = [name for name in FIGURES if (root / out / "figures" / f"{name}.png").is_file()]
    paired = paired_differences(per_utterance(root / out)) if (root / out / "per_utterance.csv").is_file() else None
    update_readme(Path(args.readme) if args.readme else root / "README.md",
                  readme_block(metrics, run, str(out), figures, args.block, paired), args.block)
    return 0


if __name__ == "__main__":
    sys.exit(main())
