"""Statistics of the evaluation report: per-utterance tables, metrics pooled per model, seed and subject, error
bars, guided-minus-control paired differences, the per-model metrics files and the judge's viseme confusion."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from avguide.face.visemes import load_table
from avguide.metrics import GAP, align, to_visemes
from avguide.scoring import METRICS, ROOT_POOLED, error_counts, pooled, pooling_parts

# how each metric is drawn: label and factor from the stored unit (m², m, m², fraction)
UNITS = {
    "LVE": ("LVE (mm²)", 1e6),
    "MVE": ("MVE (mm)", 1e3),
    "FDD": ("FDD (mm²)", 1e6),
    "CER": ("judge CER (%)", 100),
    "WER": ("judge WER (%)", 100),
    "VER": ("judge VER (%)", 100),
}


# ---------------------------------------------------------------- per-utterance tables


def per_utterance(eval_dir: str | Path) -> pd.DataFrame:
    """`per_utterance.csv` with error counts (avguide.scoring.error_counts), so that any group of rows pools
    (avguide.scoring.pooled) into the metrics of avguide.scoring.score."""
    return error_counts(pd.read_csv(Path(eval_dir) / "per_utterance.csv", keep_default_na=False))


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
            parts = pooling_parts(group)
            boot = pd.DataFrame({m: num[pick].sum(1) / den[pick].sum(1) for m, (num, den) in parts.items()})
            lo, hi, bar = boot.quantile(0.025), boot.quantile(0.975), f"95 % bootstrap CI over {len(group)} utterances"
        rows += [{"model": model, "metric": m, "mean": mean[m], "lo": lo[m], "hi": hi[m], "bar": bar} for m in METRICS]
    return pd.DataFrame(rows)


PAIRED = ("LVE", "CER", "VER")  # the guided-minus-control differences the README's results block states
RELATIVE = ("LVE", "MVE", "FDD", "lip_mve_mm", "aperture_rmse_mm")  # differences in % of the control's
RATES = ("CER", "WER", "VER", "CER_judge2", "WER_judge2", "VER_judge2", "closure_rate")  # in points; MTM_ms in ms


def paired_differences(
    table: pd.DataFrame, control: str = "mse+rlv", metrics=PAIRED, n_boot: int = 2000, seed: int = 0
) -> pd.DataFrame:
    """Each guided model against its control, `<animator>-<loss>` minus `<animator>-<control>`, on the same test
    utterances and seeds: the difference of each pooled metric (RELATIVE ones in % of the control's, RATES in
    points, MTM in ms), with a 95 % paired bootstrap interval: utterances are resampled (each with all its seeds)
    and the same draw scores both models, so what the two share (hard utterances, the subject) cancels out.
    Metrics the rows do not have are left out."""
    metrics = [m for m in metrics if m in pooling_parts(table.head(1))]

    def sums(name):  # per utterance, each metric's numerator and denominator summed over seeds
        rows = table[table["model"] == name]
        parts = pooling_parts(rows)
        frame = pd.DataFrame({f"{m}_{k}": parts[m][k] for m in metrics for k in (0, 1)})
        return frame.assign(utterance=rows["utterance"].to_numpy()).groupby("utterance").sum()

    def rate(frame, m, index):
        value = frame[f"{m}_0"].to_numpy()[index].sum(-1) / frame[f"{m}_1"].to_numpy()[index].sum(-1)
        return np.sqrt(value) if m in ROOT_POOLED else value

    models = list(dict.fromkeys(table["model"]))
    rows, rng = [], np.random.default_rng(seed)
    for model in models:
        animator, _, loss = model.partition("-")
        reference = f"{animator}-{control}"
        if loss in ("", "baseline", control) or reference not in models:
            continue
        a, b = sums(model), sums(reference)
        if set(a.index) != set(b.index):
            raise ValueError(f"{model} and {reference} were scored on different utterances")
        b = b.loc[a.index]
        everything, pick = np.arange(len(a)), rng.integers(len(a), size=(n_boot, len(a)))
        for m in metrics:

            def diff(index, a=a, b=b, m=m):  # bound now: called in this iteration only
                mine, theirs = rate(a, m, index), rate(b, m, index)
                if m in RELATIVE:
                    return 100 * (mine / theirs - 1)
                return 100 * (mine - theirs) if m in RATES else mine - theirs

            boot = diff(pick)
            rows.append(
                {
                    "model": model,
                    "control": reference,
                    "metric": m,
                    "diff": float(diff(everything)),
                    "lo": float(np.nanquantile(boot, 0.025)),
                    "hi": float(np.nanquantile(boot, 0.975)),
                }
            )
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


# ---------------------------------------------------------------- viseme confusion of the judge


def viseme_confusion(refs: list[str], hyps: list[str]) -> pd.DataFrame:
    """Counts of (reference viseme, judge viseme) over aligned transcripts; the GAP column counts
    deletions, the GAP row insertions. Row v sums to the number of v in the references."""
    labels = load_table().visemes + [GAP]
    counts = pd.DataFrame(0, index=pd.Index(labels, name="reference"), columns=pd.Index(labels, name="judge"))
    visemes = to_visemes(list(refs) + list(hyps))
    for r, h in zip(visemes[: len(refs)], visemes[len(refs) :]):
        for a, b in align(r, h):
            counts.loc[a, b] += 1
    return counts
