"""Profiles are overlays on params.yaml, composed one way: an overlay holds only what it changes, may only set
keys the default has, and `make reproduce PROFILE=...` writes the composition to params.yaml before `dvc repro`."""

import dataclasses
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from avguide import params as P
from avguide.params import keys, load_params, outputs

ROOT = Path(__file__).resolve().parents[1]
PROFILES = sorted(p.stem for p in (ROOT / "profiles").glob("*.yaml"))
PAPER = {"vocaset": (64, 30, 30), "biwi": (128, 25, 25)}


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A copy of params.yaml and profiles/ in a folder of its own, as the working directory."""
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    shutil.copytree(ROOT / "profiles", tmp_path / "profiles")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_the_profiles_are_smoke_vocaset_and_biwi():
    assert PROFILES == ["biwi", "smoke", "vocaset"]
    assert not list(ROOT.glob("params.*.yaml")), "the old full copies are gone"


@pytest.mark.parametrize("name", PROFILES)
def test_an_overlay_holds_only_what_differs(name):
    default = yaml.safe_load((ROOT / "params.yaml").read_text())
    overlay = yaml.safe_load((ROOT / "profiles" / f"{name}.yaml").read_text())
    assert keys(overlay) <= keys(default)

    def same(a, b, at=""):
        for k, v in a.items():
            if isinstance(v, dict):
                same(v, b[k], f"{at}{k}.")
            else:
                assert v != b[k] or k.endswith("_dir") or k == "root" or k == "faces_path", (
                    f"{name}: {at}{k} repeats the default"
                )

    same(overlay, default)
    composed = load_params(profile=name)
    assert keys(composed) == keys(default)


def test_smoke_writes_only_under_data_smoke():
    """The tests run every notebook on the smoke profile: none of its outputs may overwrite the default run's."""
    found = dict(outputs(load_params(profile="smoke")))
    assert found and all(v.startswith("data/smoke/") for v in found.values()), found


def test_an_unknown_key_names_the_key_and_the_file(project):
    (project / "profiles" / "typo.yaml").write_text("train:\n  batch_sise: 4\n")
    with pytest.raises(ValueError, match=r"profiles/typo.yaml: unknown key train.batch_sise"):
        load_params(profile="typo")
    (project / "profiles" / "flat.yaml").write_text("train: 4\n")
    with pytest.raises(ValueError, match=r"flat.yaml: key train is a section"):
        load_params(profile="flat")
    with pytest.raises(FileNotFoundError, match=r"no profile 'nope'; known profiles: .*smoke"):
        load_params(profile="nope")


def test_an_overlay_changes_only_its_keys():
    default, smoke = load_params(), load_params(profile="smoke")
    assert smoke["pretrain_expert"]["model"]["d_model"] == 32 and default["pretrain_expert"]["model"]["d_model"] == 128
    assert smoke["pretrain_expert"]["model"]["conv_kernel"] == default["pretrain_expert"]["model"]["conv_kernel"]
    assert smoke["seed"] == default["seed"]


@pytest.mark.parametrize("name", sorted(PAPER))
def test_paper_profiles_have_the_paper_values_and_build_valid_configs(name):
    from avguide.losses import LossSetting
    from avguide.models.codetalker import CodeTalkerConfig
    from avguide.models.faceformer import FaceFormerConfig
    from avguide.training.expert import reader_config

    params = load_params(profile=name)
    dim, period, fps = PAPER[name]
    assert params["prepare"]["source"] == name and params["prepare"][name]["fps"] == fps
    assert params["train"]["lr"] == 1e-4 and params["train"]["trainer"]["max_epochs"] == 100
    assert all(v.startswith((f"data/{name}/", "data/corpus/")) for _, v in outputs(params))
    for animator, cfg_cls in (("faceformer", FaceFormerConfig), ("codetalker", CodeTalkerConfig)):
        fields = {f.name for f in dataclasses.fields(cfg_cls)}
        assert set(params["train"][animator]) - fields <= {"epochs", "lr"}  # the trainer's keys, as build_animator
        settings = {k: v for k, v in params["train"][animator].items() if k in fields}
        cfg = cfg_cls(n_vertices=5023, n_subjects=8, fps=fps, **settings)
        assert cfg.period == period
    assert params["train"]["faceformer"]["feature_dim"] == dim
    reader_config(params["pretrain_expert"], "av", 25.0)
    assert set(params["guide"]["losses"]) <= set(params["guide"]["weights"])
    for setting in params["guide"]["weights"].values():
        LossSetting(**setting)


def test_check_lists_the_paths_to_fill_and_passes_once_filled(project, capsys):
    assert P.main(["check", "vocaset"]) == 1
    err = capsys.readouterr().err
    assert "prepare.vocaset.raw_dir is not set" in err and "train.faceformer.pretrained_audio" in err
    text = (project / "profiles" / "vocaset.yaml").read_text()
    filled = text.replace("raw_dir: null", f"raw_dir: {project}").replace("/path/to/wav2vec2-base-960h", str(project))
    for key in ("transcripts_dir", "regions_dir", "faces_path", "root"):
        filled = filled.replace(f"{key}: null", f"{key}: {project}")
    (project / "profiles" / "vocaset.yaml").write_text(filled)
    assert P.main(["check", "vocaset"]) == 0
    assert P.main(["check"]) == 0


def test_compose_writes_params_yaml_and_refuses_a_second_profile(project):
    default = (project / "params.yaml").read_text()
    assert P.main(["compose", "smoke"]) == 0
    text = (project / "params.yaml").read_text()
    assert text.startswith("# profile: smoke") and yaml.safe_load(text) == load_params(ROOT / "params.yaml", "smoke")
    assert P.main(["compose", "smoke"]) == 0 and (project / "params.yaml").read_text() == text  # idempotent
    assert P.main(["compose", "biwi"]) == 1 and (project / "params.yaml").read_text() == text
    assert P.main(["compose", "default"]) == 1
    (project / "params.yaml").write_text(default)
    assert P.main(["compose", "default"]) == 0 and (project / "params.yaml").read_text() == default
    assert P.main(["compose", "vocaset"]) == 1 and (project / "params.yaml").read_text() == default  # paths unset


def test_make_reproduce_composes_the_profile_before_running_the_pipeline():
    out = subprocess.run(
        ["make", "-n", "reproduce", "PROFILE=biwi"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    assert out.index("avguide.params compose biwi") < out.index("avguide.reproduce --lanes 2")
    default = subprocess.run(["make", "-n", "reproduce"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert "avguide.params compose default" in default
