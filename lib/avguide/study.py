"""The loss-setting study (`make study`): which guidance makes lips easier to read, by a fair test.

Every run fine-tunes a trained baseline of the default pipeline (train.out/<animator>) with one loss setting of
guide.weights and one seed, exactly as the guide stage does (avguide.training.guide.guide_animator), into
study.out/models/<run>/ (not kept in git); a run the guide stage has already trained (dvc.lock records it with
the same setting, training settings and inputs) is taken from train.out instead of trained again. Each run is
scored as the evaluate stage does (avguide.evaluate.TestScorer) into study.out/runs/<run>/: metrics.json (the
figures, the setting and its calibrated λ, the training time, the mean of each gradient diagnostic) and
per_utterance.csv. A run whose metrics.json records the same setting, epochs, learning rates and inputs (the
dvc.lock hashes of the baseline, the expert, the critic and the judge) is not run again, so the study resumes
where it stopped; `--force` runs everything again.

Runs: study.runs[<animator>] × study.seeds, and for the Pareto figure every setting of study.sweep.settings at
each of study.sweep.grad_ratios (FaceFormer, the first seed), named `<setting>@<ratio>`. Then the summary:
study.out/metrics.json (per model: the mean over seeds), paired.json (every guided model against
`<animator>-mse+rlv`, and one trained from the start also against `<animator>-mse+rlv-start`: the paired
difference of each metric with its 95 % bootstrap interval over test utterances and seeds), pareto.png and
diagnostics.png, and the study block of the README. The bounds (ground truth, static template, oracle) are
scored once, into study.out/runs/<bound>/.

`--lanes N` trains and scores N runs at a time, each in its own process with params' `threads` (the figures do not
depend on N; `make study` passes the Makefile's LANES, 2), the runs trained from the start first.

    python -m avguide.study [--lanes 2] [--only faceformer-critic] [--force] [--summary-only]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import pandas as pd
import yaml

from avguide.evaluate import TestScorer
from avguide.params import load_params, project_root, set_threads
from avguide.report.figures import plot_diagnostics, plot_pareto
from avguide.report.readme import study_block, update_readme
from avguide.report.stats import paired_differences
from avguide.scoring import error_counts
from avguide.training.guide import guide_animator, run_name

CONTROL = "mse+rlv"
START_CONTROL = "mse+rlv-start"  # the control of a setting trained from the start (from_start)
BOUNDS = ("ground_truth", "static_template", "oracle")
PAIRED = ("LVE", "lip_mve_mm", "CER", "CER_judge2", "VER", "closure_rate", "MTM_ms", "aperture_rmse_mm")
INPUTS = ("train", "finetune_expert", "pretrain_critic", "pretrain_expert", "pretrain_judge")  # what a run reads
GUIDE_KEYS = ("epochs", "lr", "expert_lr_joint", "calibration_batches", "render_size")  # a run's guide settings


def plan(params: dict) -> list[dict]:
    """Every run of the study: {name, animator, loss, seed, setting} in order (controls first)."""
    s, weights = params["study"], params["guide"]["weights"]
    unknown = sorted({*(x for v in s["runs"].values() for x in v), *s["sweep"]["settings"]} - set(weights))
    if unknown:
        raise ValueError(f"params.yaml study: loss settings {unknown} are not in guide.weights")
    runs = []
    for animator, losses in s["runs"].items():
        for loss in sorted(losses, key=lambda name: name != CONTROL):
            for seed in s["seeds"]:
                runs.append({"animator": animator, "loss": loss, "seed": seed, "setting": dict(weights[loss])})
    for loss in s["sweep"]["settings"]:
        for ratio in s["sweep"]["grad_ratios"]:
            setting = {**weights[loss], "grad_ratio": ratio}
            runs.append(
                {"animator": "faceformer", "loss": f"{loss}@{ratio:g}", "seed": s["seeds"][0], "setting": setting}
            )
    for r in runs:
        r["name"] = f"{r['animator']}-{r['loss']}-seed{r['seed']}"
    return runs


def input_hashes(root: Path) -> dict:
    """The md5 of every model folder of the stages a run reads, from dvc.lock (what the study was run on). Not their
    metrics, logs or executed notebooks: those record training times, so a stage run again with the same models
    would otherwise make every run of the study look out of date."""
    lock = yaml.safe_load((root / "dvc.lock").read_text())["stages"]
    return {
        out["path"]: out.get("md5")
        for name, stage in sorted(lock.items())
        if name.split("@")[0] in INPUTS
        for out in stage.get("outs", [])
        if str(out.get("md5", "")).endswith(".dir") and "dvclive" not in out["path"]
    }


def run_key(params: dict, run: dict, inputs: dict) -> dict:
    key = {"setting": run["setting"], **{k: params["guide"][k] for k in GUIDE_KEYS}, "threads": params["threads"]}
    key["inputs"] = inputs
    if params["guide"].get("start", {}).get(run["animator"]):  # fine-tuned from a folder other than the baseline
        key["start"] = params["guide"]["start"][run["animator"]]
    if any((params["eval"].get("judges") or {}).values()):  # judged by readers other than pretrain_judge's
        key["judges"] = params["eval"]["judges"]
    if run["setting"].get("from_start"):  # trained on train's schedule, not guide's
        t = params["train"]
        key["train"] = {"lr": t["lr"], "max_epochs": t["trainer"]["max_epochs"], run["animator"]: t[run["animator"]]}
    return key


def diagnostics(live: Path) -> dict:
    """The mean over training of each logged gradient diagnostic of a run (its dvclive/ curves)."""
    out = {}
    for path in sorted((live / "plots" / "metrics" / "train").glob("*.tsv")):
        if path.stem.startswith(("grad_lip_", "cos_", "ratio_")):
            out[path.stem] = float(pd.read_csv(path, sep="\t")[path.stem].mean())
    return out


def _plain(x):
    """Parameters as numbers where dvc.lock writes them as text (3e-05 is a string to YAML 1.1)."""
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_plain(v) for v in x]
    if isinstance(x, str):
        try:
            return float(x)
        except ValueError:
            return x
    return x


def pipeline_run(params: dict, run: dict, inputs: dict) -> Path | None:
    """The guide stage's folder of the same run (train.out/<animator>-<loss>-seed<seed>/), when dvc.lock records
    it trained with the run's setting, the same training settings and the same inputs: the study scores it instead
    of training it again."""
    root = project_root()
    stage = yaml.safe_load((root / "dvc.lock").read_text())["stages"].get(
        f"guide@{run['animator']}-{run['loss']}-{run['seed']}"
    )
    if stage is None:
        return None
    recorded, g, t = _plain(stage["params"]["params.yaml"]), _plain(params["guide"]), _plain(params["train"])
    same = (
        recorded.get("guide.weights", {}).get(run["loss"]) == _plain(run["setting"])
        and all(recorded.get(f"guide.{k}") == g[k] for k in GUIDE_KEYS)
        and recorded.get("train.trainer") == t["trainer"]
        and recorded.get("train.batch_size") == t["batch_size"]
        and recorded.get("threads") == params["threads"]
        and all(inputs.get(d["path"], d.get("md5")) == d.get("md5") for d in stage["deps"])
    )
    folder = root / t["out"] / run_name(run["animator"], run["loss"], run["seed"])
    return folder if same and (folder / "model").is_dir() and (folder / "metrics.json").is_file() else None


def run_one(params: dict, run: dict, key: dict, scorer, progress: bool = False) -> dict:
    out = project_root() / params["study"]["out"]
    run_dir = out / "runs" / run["name"]
    start = time.perf_counter()
    model_dir = pipeline_run(params, run, key["inputs"])
    if model_dir is not None:
        trained = json.loads((model_dir / "metrics.json").read_text())
    else:
        model_dir = out / "models" / run["name"]
        p = {**params, "guide": {**params["guide"], "weights": {run["loss"]: run["setting"]}}}
        trained = guide_animator(p, run["animator"], run["loss"], run["seed"], progress, out=model_dir)
    figures, rows = scorer(scorer.predict(run["animator"], model_dir / "model"))
    result = {
        **figures,
        "weight": trained["weight"],
        "train_s": trained["train_s"],
        "run_s": round(time.perf_counter() - start, 1),
        "trained_by": "guide stage" if model_dir.parent != out / "models" else "study",
        "diagnostics": diagnostics(model_dir / "dvclive"),
        "key": key,
    }
    run_dir.mkdir(parents=True, exist_ok=True)
    rows.assign(model=f"{run['animator']}-{run['loss']}", seed=run["seed"]).to_csv(
        run_dir / "per_utterance.csv", index=False
    )
    (run_dir / "metrics.json").write_text(json.dumps(result, indent=1) + "\n")
    return result


def score_bounds(params: dict, scorer, inputs: dict) -> None:
    """The bounds (ground truth, static template, oracle) scored like the runs, into study.out/runs/<bound>/."""
    out = project_root() / params["study"]["out"] / "runs"
    for bound, pred in scorer.bounds().items():
        figures, rows = scorer(pred)
        (out / bound).mkdir(parents=True, exist_ok=True)
        rows.assign(model=bound, seed=params["seed"]).to_csv(out / bound / "per_utterance.csv", index=False)
        (out / bound / "metrics.json").write_text(json.dumps({**figures, "key": {"inputs": inputs}}, indent=1) + "\n")


def done(run_dir: Path, key: dict) -> bool:
    path = run_dir / "metrics.json"
    return path.is_file() and json.loads(path.read_text()).get("key") == key


def summarize(params: dict) -> dict:
    """study.out/metrics.json, paired.json, the figures and the README block, from the runs done so far with the
    current settings and inputs (a run made from other pipeline outputs is left out until it is run again)."""
    root = project_root()
    out, inputs = root / params["study"]["out"], input_hashes(root)
    bounds = [{"name": b, "model": b} for b in BOUNDS if done(out / "runs" / b, {"inputs": inputs})]
    runs = bounds + [  # only runs made with the current settings and inputs
        {**r, "model": f"{r['animator']}-{r['loss']}"}
        for r in plan(params)
        if done(out / "runs" / r["name"], run_key(params, r, inputs))
    ]
    results = {r["name"]: json.loads((out / "runs" / r["name"] / "metrics.json").read_text()) for r in runs}
    table = error_counts(
        pd.concat([pd.read_csv(out / "runs" / r["name"] / "per_utterance.csv", keep_default_na=False) for r in runs])
    )
    models = {}
    for r in runs:
        models.setdefault(r["model"], []).append(results[r["name"]])
    summary = {}
    for model, per_seed in models.items():
        numbers = pd.DataFrame([{k: v for k, v in m.items() if isinstance(v, (int, float))} for m in per_seed])
        numbers = numbers.drop(columns=[c for c in ("train_s", "run_s") if c in numbers])
        summary[model] = {**numbers.mean().to_dict(), "n_seeds": len(per_seed)}
    paired = paired_differences(table, control=CONTROL, metrics=PAIRED)
    start = table[table["model"].str.endswith("-start")]  # trained from the start: against the same, unguided
    if len(start):
        paired = pd.concat([paired, paired_differences(start, control=START_CONTROL, metrics=PAIRED)])
    (out / "metrics.json").write_text(json.dumps(summary, indent=1) + "\n")
    (out / "paired.json").write_text(
        json.dumps(
            paired.rename(columns={"model": "guided"}).to_dict(orient="records"),
            indent=1,
        )
        + "\n"
    )
    plot_pareto(summary).savefig(out / "pareto.png", dpi=120, bbox_inches="tight")
    plot_diagnostics({name: res.get("diagnostics", {}) for name, res in results.items()}).savefig(
        out / "diagnostics.png", dpi=120, bbox_inches="tight"
    )
    update_readme(project_root() / "README.md", study_block(summary, paired, params), "study")
    return summary


_worker: dict = {}  # a lane's own params, scorer and inputs (--lanes > 1)


def _start_worker(params: dict, inputs: dict) -> None:
    set_threads(params)
    _worker.update(params=params, inputs=inputs, scorer=TestScorer(params, progress=False))


def _run_in_worker(run: dict) -> tuple[dict, dict]:
    params = _worker["params"]
    return run, run_one(params, run, run_key(params, run, _worker["inputs"]), _worker["scorer"])


def report(k: int, n: int, run: dict, result: dict) -> None:
    lve, cer, minutes = result["LVE"] * 1e6, 100 * result["CER"], result["run_s"] / 60
    print(f"[{k}/{n}] {run['name']}: LVE {lve:.2f} mm², CER {cer:.1f} % ({minutes:.1f} min)", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m avguide.study", description=__doc__.split("\n")[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--only", default=None, help="comma-separated run names or prefixes (e.g. faceformer-critic)")
    parser.add_argument("--force", action="store_true", help="run again even what is done")
    parser.add_argument("--summary-only", action="store_true", help="only the summary of the runs done so far")
    parser.add_argument("--lanes", type=int, default=1, help="runs at a time, each in its own process")
    args = parser.parse_args(argv)
    params = load_params(args.params)
    set_threads(params)
    root = project_root()
    runs = plan(params)
    if args.only:
        prefixes = args.only.split(",")
        runs = [r for r in runs if r["name"].startswith(tuple(prefixes))]
    if not args.summary_only:
        inputs, scorer = input_hashes(root), None
        if not all(done(root / params["study"]["out"] / "runs" / b, {"inputs": inputs}) for b in BOUNDS[:2]):
            scorer = TestScorer(params, progress=False)
            score_bounds(params, scorer, inputs)
        out = root / params["study"]["out"] / "runs"
        todo = [r for r in runs if args.force or not done(out / r["name"], run_key(params, r, inputs))]
        print(f"{len(runs) - len(todo)} of {len(runs)} runs done; {len(todo)} to run", flush=True)
        if args.lanes > 1 and len(todo) > 1:
            from concurrent.futures import ProcessPoolExecutor, as_completed
            from multiprocessing import get_context

            todo.sort(key=lambda r: not r["setting"].get("from_start"))  # the longest first: the lanes end together
            context, lanes = get_context("spawn"), min(args.lanes, len(todo))
            with ProcessPoolExecutor(
                lanes, mp_context=context, initializer=_start_worker, initargs=(params, inputs)
            ) as pool:
                futures = [pool.submit(_run_in_worker, run) for run in todo]
                for k, future in enumerate(as_completed(futures)):
                    report(k + 1, len(todo), *future.result())
        else:
            for k, run in enumerate(todo):
                scorer = scorer or TestScorer(params, progress=False)
                report(k + 1, len(todo), run, run_one(params, run, run_key(params, run, inputs), scorer))
    summarize(params)
    return 0


if __name__ == "__main__":
    sys.exit(main())
