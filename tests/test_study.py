"""The loss-setting study's plan, its resumption and its diagnostics summary (avguide.study)."""

import json

import pandas as pd
import pytest
import yaml

from avguide.params import load_params
from avguide.study import CONTROL, GUIDE_KEYS, diagnostics, done, pipeline_run, plan


def test_the_plan_runs_every_setting_and_seed_controls_first_and_the_sweep():
    params = load_params()
    runs = plan(params)
    s = params["study"]
    n = sum(len(v) for v in s["runs"].values()) * len(s["seeds"])
    assert len(runs) == n + len(s["sweep"]["settings"]) * len(s["sweep"]["grad_ratios"])
    assert len({r["name"] for r in runs}) == len(runs)
    ff = [r for r in runs if r["animator"] == "faceformer" and "@" not in r["loss"]]
    assert ff[0]["loss"] == CONTROL and {r["seed"] for r in ff} == set(s["seeds"])
    sweep = [r for r in runs if "@" in r["loss"]]
    first = sweep[0]
    setting, ratio = first["loss"].split("@")
    assert first["setting"] == {**params["guide"]["weights"][setting], "grad_ratio": float(ratio)}
    assert first["name"] == f"faceformer-{setting}@{ratio}-seed{s['seeds'][0]}"


def test_an_unknown_setting_is_named():
    params = load_params()
    params["study"]["runs"]["faceformer"].append("telepathy")
    with pytest.raises(ValueError, match="telepathy"):
        plan(params)


def test_a_run_is_done_only_with_the_same_key(tmp_path):
    key = {"setting": {"rlv": 1.0, "term": "critic", "grad_ratio": 0.5}, "epochs": 2, "inputs": {"a": "1"}}
    assert not done(tmp_path, key)
    (tmp_path / "metrics.json").write_text(json.dumps({"LVE": 1.0, "key": key}))
    assert done(tmp_path, key)
    assert not done(tmp_path, {**key, "epochs": 3})
    assert not done(tmp_path, {**key, "inputs": {"a": "2"}})  # the baseline or a reader changed


def test_a_run_is_keyed_on_the_models_it_reads_not_their_timings(tmp_path):
    """input_hashes: the model folders of the stages a run reads; a stage run again whose models came out the same
    (its metrics.json and notebook hold new times) leaves every run of the study done."""
    from avguide.study import input_hashes

    def lock(times):
        outs = [
            {"path": "data/models/critic/model", "md5": "aa.dir"},
            {"path": "data/models/critic/metrics.json", "md5": f"{times}"},
            {"path": "data/notebooks/02c_pretrain_critic.ipynb", "md5": f"n{times}"},
            {"path": "data/models/expert/dvclive/model", "md5": f"d{times}.dir"},
        ]
        stages = {"pretrain_critic": {"outs": outs}, "evaluate": {"outs": [{"path": "e", "md5": "e.dir"}]}}
        (tmp_path / "dvc.lock").write_text(yaml.safe_dump({"stages": stages}))
        return input_hashes(tmp_path)

    assert lock("1") == lock("2") == {"data/models/critic/model": "aa.dir"}


def test_diagnostics_are_the_means_of_the_logged_curves(tmp_path):
    curves = tmp_path / "plots" / "metrics" / "train"
    curves.mkdir(parents=True)
    for name, values in (("cos_term", [0.1, 0.3]), ("ratio_term", [0.5, 0.5]), ("loss", [9.0, 9.0])):
        pd.DataFrame({"step": [0, 10], name: values}).to_csv(curves / f"{name}.tsv", sep="\t", index=False)
    assert diagnostics(tmp_path) == pytest.approx({"cos_term": 0.2, "ratio_term": 0.5})


def test_a_run_the_guide_stage_trained_is_taken_only_when_the_lock_matches(tmp_path, monkeypatch):
    params = load_params()
    run = next(r for r in plan(params) if r["loss"] == "critic")
    (tmp_path / "params.yaml").write_text("seed: 0\n")
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / params["train"]["out"] / run["name"]
    (folder / "model").mkdir(parents=True)
    (folder / "metrics.json").write_text("{}")
    recorded = {
        "guide.weights": {run["loss"]: run["setting"]},
        **{f"guide.{k}": params["guide"][k] for k in GUIDE_KEYS},
        "guide.expert_lr_joint": str(params["guide"]["expert_lr_joint"]),  # as dvc.lock may write it
        "train.trainer": params["train"]["trainer"],
        "train.batch_size": params["train"]["batch_size"],
        "threads": params["threads"],
    }
    baseline = f"{params['train']['out']}/{run['animator']}/model"

    def lock(recorded, md5):
        stage = {"params": {"params.yaml": recorded}, "deps": [{"path": baseline, "md5": md5}]}
        name = f"guide@{run['animator']}-{run['loss']}-{run['seed']}"
        (tmp_path / "dvc.lock").write_text(yaml.safe_dump({"stages": {name: stage}}))

    inputs = {baseline: "abc.dir"}
    lock(recorded, "abc.dir")
    assert pipeline_run(params, run, inputs) == folder
    lock(recorded, "old.dir")  # trained from another baseline
    assert pipeline_run(params, run, inputs) is None
    lock({**recorded, "guide.lr": 1.0}, "abc.dir")
    assert pipeline_run(params, run, inputs) is None
    lock({**recorded, "threads": params["threads"] + 1}, "abc.dir")  # other sums, other floats
    assert pipeline_run(params, run, inputs) is None
    lock({**recorded, "guide.weights": {run["loss"]: {**run["setting"], "grad_ratio": 2.0}}}, "abc.dir")
    assert pipeline_run(params, run, inputs) is None
    lock(recorded, "abc.dir")
    assert pipeline_run(params, {**run, "seed": run["seed"] + 1}, inputs) is None  # no such stage
