"""The conda environment and the pip project name the same pinned dependencies; the layout is complete."""

from pathlib import Path

import tomllib
import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_environment_yml_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert sorted(p for p in pip if not p.startswith("-e")) == sorted(project)
    assert f"-e .[{','.join(sorted(extras))}]" in pip
    assert all("==" in p for p in project), "every dependency is pinned"


def test_torchaudio_matches_torch():
    deps = dict(p.split("==") for p in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"])
    assert deps["torch"] == deps["torchaudio"]
