"""Figures of the evaluation report (seaborn/matplotlib, written as PNG by `save`): metrics per model and per
subject, the judge's viseme confusion, lip aperture and mouth-frame strips, t-SNE of the expert's features of
lip-alike words, training curves, and the loss-setting study's Pareto and gradient-diagnostics figures; with the
colours and line styles of the models."""

from __future__ import annotations

import difflib
import sys
from functools import cache
from pathlib import Path

import matplotlib

if "ipykernel" not in sys.modules:  # scripts and tests draw off screen; notebooks keep their inline backend
    matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from avguide.data.corpus import Corpus  # noqa: E402
from avguide.data.speech import synthesize  # noqa: E402
from avguide.data.synthetic import load_grammar  # noqa: E402
from avguide.face.template import lip_opening  # noqa: E402
from avguide.face.visemes import load_table  # noqa: E402
from avguide.metrics import GAP  # noqa: E402
from avguide.models.expert import load_expert  # noqa: E402
from avguide.params import project_root  # noqa: E402
from avguide.render.mouth import MouthView  # noqa: E402
from avguide.report.stats import UNITS  # noqa: E402
from avguide.scoring import METRICS  # noqa: E402

BOUNDS = ("ground_truth", "static_template", "oracle")


# ---------------------------------------------------------------- model colours


def model_colours(models) -> dict[str, tuple]:
    """Bounds in black and grey; each animator its own hue, a darker shade for each later variant."""
    models = list(dict.fromkeys(models))
    animators = list(dict.fromkeys(m.split("-")[0] for m in models if m not in BOUNDS))
    hues = dict(zip(animators, sns.color_palette("colorblind", max(len(animators), 1))))
    colours = {"ground_truth": (0.1, 0.1, 0.1), "static_template": (0.65, 0.65, 0.65), "oracle": (0.4, 0.4, 0.4)}
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
        ax.errorbar(
            rows["mean"] * k,
            np.arange(len(models)),
            xerr=[(rows["mean"] - rows["lo"]) * k, (rows["hi"] - rows["mean"]) * k],
            fmt="none",
            ecolor="0.2",
            capsize=3,
            lw=1,
        )
        ax.set_xlabel(label)
        ax.set_title(m)
        ax.axvline(0, color="0.3", lw=0.8)
    fig.suptitle(f"Test subjects; lower is better (FDD: nearer 0). Error bars: {bars['bar'].iloc[-1]}", y=1.0)
    fig.tight_layout()
    return fig


def plot_subjects(subjects: pd.DataFrame, metrics=("LVE", "CER", "VER")):
    """Per-subject breakdown: one panel per metric, a bar per model and test subject."""
    axes = plt.subplots(
        1,
        len(metrics),
        figsize=(4.2 * len(metrics), 0.45 * subjects["model"].nunique() + 1.8),
        sharey=True,
        squeeze=False,
    )[1][0]
    for ax, m in zip(axes, metrics):
        label, k = UNITS[m]
        sns.barplot(
            data=subjects.assign(value=subjects[m] * k),
            x="value",
            y="model",
            hue="subject",
            ax=ax,
            orient="h",
            palette="muted",
        )
        ax.set_xlabel(label)
        ax.set_ylabel("")
        handles, names = ax.get_legend_handles_labels()
        ax.get_legend().remove()
    fig = axes[0].figure
    fig.legend(
        handles,
        names,
        title="test subject",
        loc="lower center",
        bbox_to_anchor=(0.5, 1.0),
        ncol=len(names),
        frameon=False,
    )
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------- figures: viseme confusion of the judge


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
        sns.heatmap(
            share,
            ax=ax,
            cmap="rocket_r",
            vmin=0,
            vmax=100,
            square=True,
            mask=~(share > 0),
            cbar=k == n - 1,
            cbar_ax=axes[-1] if k == n - 1 else None,
            cbar_kws={"label": "% of the reference viseme"},
            linewidths=0.3,
            linecolor="0.92",
        )
        errors = counts.values.sum() - np.trace(counts.drop(index=GAP, columns=GAP, errors="ignore").values)
        ax.set_title(f"{name}: VER {100 * errors / max(rows.values.sum(), 1):.1f} %", fontsize=10)
        ax.tick_params(labelsize=8)
        ax.set_facecolor("white")
    fig.suptitle(
        f"What the judge reads (columns; {GAP}: nothing, deleted) for each viseme said (rows); "
        "insertions count in the VER, not drawn",
        y=1.0,
    )
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------- figures: lip aperture and frame strips


def lip_aperture(vertices: np.ndarray) -> np.ndarray:
    """Inner-lip opening at the mouth's midline over time, in mm, of (T, V, 3) or (T, V·3) vertices of the
    project's template topology (avguide.face.template)."""
    v = np.asarray(vertices, np.float64)
    return 1000 * lip_opening(v.reshape(len(v), -1, 3))


def shade_phonemes(ax, phonemes: pd.DataFrame, labels: bool = True) -> None:
    """Bilabials (red) and open vowels (blue) as spans behind a time plot, phonemes written on top."""
    for row in phonemes.itertuples():
        if row.viseme == "PP" or row.viseme.startswith("aa"):
            ax.axvspan(row.start_s, row.end_s, color="tab:red" if row.viseme == "PP" else "tab:blue", alpha=0.12, lw=0)
        if labels and row.viseme != "sil":
            ax.text(
                (row.start_s + row.end_s) / 2,
                1.01,
                row.phoneme,
                transform=ax.get_xaxis_transform(),
                ha="center",
                va="bottom",
                fontsize=7,
            )


def plot_aperture(apertures: dict[str, np.ndarray], fps: float, phonemes: pd.DataFrame, title: str = ""):
    """Lip aperture over time of one utterance, ground truth against each model."""
    colours = model_colours(apertures)
    fig, ax = plt.subplots(figsize=(11, 4))
    shade_phonemes(ax, phonemes)
    for name, a in apertures.items():
        ax.plot(
            np.arange(len(a)) / fps,
            a,
            color=colours[name],
            ls=line_style(name) if name not in BOUNDS else "-",
            lw=2.4 if name == "ground_truth" else 1.4,
            label=name,
        )
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
    for found in picks.values():
        keep = np.unique(np.linspace(0, len(found) - 1, min(n, len(found))).round().astype(int)) if found else []
        out += [found[k] for k in keep]
    return sorted(out)


def mouth_crops(view, sequence: np.ndarray, template: np.ndarray, frames: list[int]) -> np.ndarray:
    """(len(frames), H, W) mouth renders (the judge's view) of the given frames of one sequence."""
    import torch

    v = torch.as_tensor(np.array(np.asarray(sequence)[frames], np.float32)).reshape(len(frames), -1, 3)
    with torch.no_grad():
        return view.clip(v, template).numpy()


def plot_strips(
    crops: dict[str, np.ndarray], labels: list[str], title: str = "", notes: dict[str, list[str]] | None = None
):
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
                ax.text(
                    0.03,
                    0.04,
                    notes[name][c],
                    transform=ax.transAxes,
                    fontsize=7,
                    color="white",
                    bbox={"facecolor": "black", "alpha": 0.55, "pad": 1.5, "lw": 0},
                )
        axes[r, 0].set_ylabel(name, fontsize=8, rotation=0, ha="right", va="center")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------- figure: t-SNE of the expert's features


@cache
def word_visemes(word: str) -> tuple[str, ...]:
    """The visemes of the phonemes espeak-ng says for a word on its own (pauses dropped), as phonemes.csv
    writes them ("E+ih" for a diphthong)."""
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


def word_features(
    expert, video: np.ndarray, audio: np.ndarray, spans: list[tuple[str, float, float]], fps: float
) -> dict[str, list[np.ndarray]]:
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
            out[name] = [
                enc[0, int(s * rate) : max(int(np.ceil(e * rate)), int(s * rate) + 1)].mean(0).numpy()
                for _, s, e in spans
            ]
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
            ax.set_title(
                f"{name}: {pair}\n1-NN word accuracy {100 * nearest_neighbour_accuracy(x, y):.0f} % (n={len(y)})",
                fontsize=9,
            )
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

    root = project_root()
    corpus = Corpus(root / params["prepare"]["out"])
    phonemes = pd.read_csv(corpus.root / "phonemes.csv", keep_default_na=False)
    folder = root / params["guide"]["expert_out"] / "model"
    expert = load_expert(
        folder if (folder / "config.json").is_file() else root / params["pretrain_expert"]["out"] / "model", "cpu"
    )
    pairs = pairs or [p for p in load_grammar()["lip_alike"] if all(len(w) > 1 for w in p)]
    words = {w: " / ".join(p) for p in pairs for w in p}
    view, rows = MouthView(corpus.topology), []
    for row in corpus.manifest[corpus.manifest["split"].isin(splits)].itertuples():
        spans = [
            s for s in word_spans(phonemes[phonemes["utterance"] == row.utterance], row.text) if s and s[0] in words
        ]
        if not spans:
            continue
        audio, vertices = corpus.load(row.utterance)
        with torch.no_grad():
            video = view.clip(torch.as_tensor(vertices), corpus.templates[row.subject]).clamp(0, 1).numpy()
        video = np.round(video * 255) / 255  # as the expert reads renders (uint8 frames)
        for name, feats in word_features(expert, video, audio, spans, row.fps).items():
            rows += [
                {"pair": words[w], "input": name, "word": w, "utterance": row.utterance, "x": f}
                for (w, _, _), f in zip(spans, feats)
            ]
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
        raise FileNotFoundError(
            f"no DVCLive loss curves (dvclive/**/plots/metrics/*/loss.tsv) under {list(map(str, folders))}"
        )
    return pd.concat(rows, ignore_index=True)[["run", "split", "step", "loss"]]


def plot_curves(curves: pd.DataFrame, cols: int = 4):
    """Training and validation loss of every run, one panel each (log scale: the losses differ in unit)."""
    grid = sns.relplot(
        data=curves,
        x="step",
        y="loss",
        hue="split",
        col="run",
        col_wrap=min(cols, curves["run"].nunique()),
        kind="line",
        height=2.3,
        aspect=1.35,
        facet_kws={"sharex": False, "sharey": False},
        palette={"train": "tab:blue", "val": "tab:orange"},
        marker=".",
        markersize=5,
        markeredgewidth=0,
        errorbar=None,
    )
    for ax in grid.axes.flat:
        y = np.concatenate([line.get_ydata() for line in ax.get_lines()] or [[1.0]])
        y = y[np.isfinite(y) & (y > 0)]
        if len(y) and y.max() / y.min() > 10:  # log scale where the loss falls by more than a decade
            ax.set_yscale("log")
            ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.yaxis.set_major_locator(
            matplotlib.ticker.MaxNLocator(4)
            if ax.get_yscale() == "linear"
            else matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 5.0))
        )
        ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:.3g}"))
    grid.set_titles("{col_name}", size=9)
    grid.figure.suptitle("Training curves (DVCLive), every stage", y=1.02)
    return grid.figure


# ---------------------------------------------------------------- the loss-setting study


def plot_pareto(summary: dict, animator: str = "faceformer"):
    """LVE against the judge's CER of one animator's models (avguide.study's metrics.json): one curve per loss
    setting over its grad_ratio sweep (`<setting>@<ratio>`, the setting's own ratio included), controls as points."""
    fig, ax = plt.subplots(figsize=(6, 4))
    groups: dict[str, list] = {}
    for model, m in summary.items():
        name, _, loss = model.partition("-")
        if name == animator:
            groups.setdefault(loss.split("@")[0], []).append((m["CER"] * 100, m["LVE"] * 1e6))
    for (setting, points), colour in zip(groups.items(), sns.color_palette("tab10", len(groups))):
        points = sorted(points)
        ax.plot(*zip(*points), "o-" if len(points) > 1 else "o", color=colour, label=setting)
    ax.set_xlabel("judge CER (%)")
    ax.set_ylabel("LVE (mm²)")
    ax.set_title(f"{animator}: each loss setting over its gradient ratio")
    ax.legend(fontsize=7, ncol=2)
    return fig


def plot_diagnostics(diagnostics: dict[str, dict]):
    """Per run, the mean over training of the perceptual term's cosine to the error and its lip-gradient ratio to the
    vertex terms' (avguide.losses.gradient_diagnostics): what the term does to the lips."""
    rows = [
        {"run": run, "cosine": d["cos_term"], "ratio": d.get("ratio_term", np.nan)}
        for run, d in diagnostics.items()
        if "cos_term" in d
    ]
    table = pd.DataFrame(rows, columns=["run", "cosine", "ratio"]).sort_values("run")
    fig, axes = plt.subplots(1, 2, figsize=(10, 0.3 * max(len(table), 4) + 1), sharey=True)
    axes[0].barh(table["run"], table["cosine"], color="tab:blue")
    axes[0].axvline(0, color="k", lw=0.5)
    axes[0].set_xlabel("cos(-dL_term/dv, truth - prediction) on the lips")
    axes[1].barh(table["run"], table["ratio"], color="tab:orange")
    axes[1].set_xlabel("lip gradient: term / vertex terms")
    fig.tight_layout()
    return fig
