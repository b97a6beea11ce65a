"""The conda environment and the pip project name the same pinned dependencies; the layout is complete."""
import tomllib
from pathlib import Path

import yaml

from avguide.params import keys, outputs

ROOT = Path(__file__).resolve().parents[1]


def test_environment_yml_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    assert sorted(p for p in pip if not p.startswith("-e")) == sorted(project)
    assert "-e ." in pip
    assert all("==" in p for p in project), "every dependency is pinned"


def test_torchaudio_matches_torch():
    deps = dict(p.split("==") for p in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"])
    assert deps["torch"] == deps["torchaudio"]


def test_smoke_profile_has_the_default_profile_keys():
    default = yaml.safe_load((ROOT / "params.yaml").read_text())
    smoke = yaml.safe_load((ROOT / "params.smoke.yaml").read_text())
    assert keys(default) == keys(smoke)


def test_smoke_profile_writes_only_under_data_smoke():
    """The tests run every notebook on the smoke profile: none of its outputs may overwrite the default run's."""
    smoke = yaml.safe_load((ROOT / "params.smoke.yaml").read_text())
    found = dict(outputs(smoke))
    assert found and all(v.startswith("data/smoke/") for v in found.values()), found
