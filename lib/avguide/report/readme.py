"""The README's generated blocks: the results of the evaluate stage (from its metrics.json and run.json) and the
loss-setting study's (avguide.study).

`provenance` says what a run states (commit, machine, date, duration, test set, seeds); `readme_block` and
`study_block` write the blocks and `update_readme` puts one between its markers; `main` is
`python -m avguide.report readme`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import textwrap
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from avguide.data.corpus import Corpus
from avguide.params import load_params, project_root
from avguide.report.stats import paired_differences, paired_table, per_utterance
from avguide.scoring import METRICS

BLOCKS = ("results", "study")  # README blocks: the main comparison (with figures), the loss-setting study


def markers(block: str = "results") -> tuple[str, str]:
    if block not in BLOCKS:
        raise ValueError(f"README block must be one of {BLOCKS}; found {block!r}")
    return f"<!-- {block}:start -->", f"<!-- {block}:end -->"


START, END = markers("results")
FIGURES = {
    "metrics": "metrics per model",
    "subjects": "per test subject",
    "visemes": "viseme confusion of the judge",
    "aperture": "lip aperture of one test utterance",
    "strips": "mouth frames at closures and open vowels",
    "tsne": "t-SNE of the expert's features for lip-alike words",
    "curves": "training curves",
}


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
    root = project_root()
    test = Corpus(root / params["prepare"]["out"]).split("test")
    return {
        **git_commit(root),
        "machine": machine(),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
        "seconds": round(seconds),
        "test_utterances": len(test),
        "test_subjects": int(test["subject"].nunique()),
        "seeds": list(params["guide"]["seeds"]),
        "corpus": params["prepare"]["out"],
    }


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


def readme_block(
    metrics: dict,
    run: dict,
    eval_dir: str = "data/eval",
    figures: list[str] | None = None,
    paired: pd.DataFrame | None = None,
) -> str:
    """The README's generated results block: where the numbers come from, the table, each guided model against
    its control (`paired`: paired_differences, when given), links to the figures (those of FIGURES named in
    `figures`; default: all)."""
    start, end = markers("results")
    m = run["machine"]
    where = f"{m['cpu']}, {m['cores']} cores, " + (f"GPU {m['gpu']}" if m.get("gpu") else "no GPU")
    commit = f"`{run['commit']}`" + (" plus uncommitted changes" if run.get("uncommitted_changes") else "")
    seeds = run.get("seeds", [])
    shown = [(name, text) for name, text in FIGURES.items() if figures is None or name in figures]
    links = ", ".join(f"[{text}]({eval_dir}/figures/{name}.png)" for name, text in shown)
    command = "python -m avguide.report readme"
    lines = [
        start,
        f"<!-- generated by `{command}` from {eval_dir}/metrics.json and run.json; do not edit by hand -->",
        textwrap.fill(
            f"From `{eval_dir}/metrics.json` of the evaluate stage run on {run['date']} at commit {commit}, on "
            f"{where} ({run['seconds'] / 60:.1f} min for the stage); {run['test_utterances']} test utterances of "
            f"{run['test_subjects']} unseen subjects; the guided and control models "
            + (f"over {len(seeds)} seeds (mean ± sd)." if len(seeds) > 1 else "with one seed."),
            110,
        ),
        "",
        results_table(metrics),
    ]
    if paired is not None and len(paired):
        lines += [
            "",
            textwrap.fill(
                "Each guided model against its control (the same baseline fine-tuned as long with "
                "the vertex and lip-vertex MSE only: mse+rlv), on the same test utterances and seeds: the difference "
                "(LVE in % of the control's, error rates in points) and its 95 % paired bootstrap "
                "interval over test utterances.",
                110,
            ),
            "",
            paired_table(paired),
        ]
    lines.append("")
    if figures is None or "metrics" in figures:
        lines += [f"![metrics per model]({eval_dir}/figures/metrics.png)", ""]
    lines += [
        textwrap.fill(
            f"Figures: {links}. Side-by-side videos with sound (ground truth | baseline | AV-guided): "
            f"`{eval_dir}/videos/` (DVC outputs), embedded in the executed notebook "
            f"`data/notebooks/04_evaluate.ipynb`.",
            110,
            break_long_words=False,
            break_on_hyphens=False,
        ),
        end,
    ]
    return "\n".join(lines)


STUDY_COLUMNS = {  # column: (header, factor, format)
    "LVE": ("LVE (mm²)", 1e6, ".2f"),
    "lip_mve_mm": ("lip MVE (mm)", 1, ".2f"),
    "CER": ("judge CER (%)", 100, ".1f"),
    "CER_judge2": ("judge 2 CER (%)", 100, ".1f"),
    "VER": ("VER (%)", 100, ".1f"),
    "closure_rate": ("p/b/m closed (%)", 100, ".0f"),
    "MTM_ms": ("MTM (ms)", 1, ".0f"),
    "weight": ("λ", 1, ".2g"),
    "n_seeds": ("seeds", 1, "d"),
}
STUDY_PAIRED = {  # metric: its paired-difference column (avguide.report.stats: relative, points or ms)
    "LVE": "LVE (%)",
    "CER": "judge CER (points)",
    "CER_judge2": "judge 2 CER (points)",
    "closure_rate": "p/b/m closed (points)",
    "MTM_ms": "MTM (ms)",
}


def study_block(summary: dict, paired: pd.DataFrame, params: dict) -> str:
    """The README's study block: every model of the loss-setting study (mean over seeds) and every guided model
    against its control (paired difference [95 % interval]: LVE in %, CER and closures in points, MTM in
    ms)."""
    start, end = markers("study")
    head = "| model | " + " | ".join(h for h, _, _ in STUDY_COLUMNS.values()) + " |"
    lines = [
        start,
        "<!-- generated by `python -m avguide.study` from results/study/; do not edit by hand -->",
        textwrap.fill(
            f"The bounds and every model of the study, each guided run {params['guide']['epochs']} epochs from the "
            f"same baseline (a `-start` run: trained from its initialisation on the baseline's schedule); the mean "
            f"over seeds (`results/study/metrics.json`).",
            110,
        ),
        "",
        head,
        "| --- " * (len(STUDY_COLUMNS) + 1) + "|",
    ]
    for model, m in summary.items():
        cells = []
        for key, (_, factor, fmt) in STUDY_COLUMNS.items():
            value = m.get(key)
            cells.append(
                "" if value is None or value != value else format(value * factor if factor != 1 else value, fmt)
            )
        lines.append(f"| `{model}` | " + " | ".join(cells) + " |")
    if len(paired):
        lines += [
            "",
            "Each guided model against its control (`results/study/paired.json`): difference [95 % paired "
            "bootstrap interval].",
            "",
        ]
        shown = [m for m in STUDY_PAIRED if m in set(paired["metric"])]
        lines += [
            "| guided | control | " + " | ".join(STUDY_PAIRED[m] for m in shown) + " |",
            "| --- " * (len(shown) + 2) + "|",
        ]
        for (model, control), group in paired.groupby(["model", "control"], sort=False):
            by = group.set_index("metric")
            cells = [f"{by.loc[m, 'diff']:+.1f} [{by.loc[m, 'lo']:+.1f}, {by.loc[m, 'hi']:+.1f}]" for m in shown]
            lines.append(f"| `{model}` | `{control}` | " + " | ".join(cells) + " |")
    lines += ["", "![Pareto](results/study/pareto.png) ![diagnostics](results/study/diagnostics.png)", end]
    return "\n".join(lines)


def update_readme(readme: str | Path, text_block: str, block: str = "results") -> None:
    """Replace the text between the `block` markers of `readme` (markers included) with `text_block`."""
    path = Path(readme)
    text = path.read_text()
    opening, closing = markers(block)
    start, end = text.find(opening), text.find(closing)
    if start < 0 or end < start:
        raise ValueError(f"{path}: expected the markers {opening} ... {closing} around the {block} block; not found")
    path.write_text(text[:start] + text_block + text[end + len(closing) :])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m avguide.report", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    cmd = sub.add_parser("readme", help="rewrite README.md's results block from <eval.out>/metrics.json and run.json")
    cmd.add_argument("--params", default="params.yaml")
    cmd.add_argument("--readme", default=None, help="default: README.md of the project")
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
    update_readme(
        Path(args.readme) if args.readme else root / "README.md",
        readme_block(metrics, run, str(out), figures, paired),
    )
    return 0
