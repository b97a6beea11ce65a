"""Parameter files (params.yaml, params.smoke.yaml) and the project root."""
from __future__ import annotations

from pathlib import Path

import yaml


def project_root(start: str | Path | None = None) -> Path:
    """The nearest folder at or above `start` (default: the working directory) holding params.yaml."""
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "params.yaml").is_file():
            return folder
    raise FileNotFoundError(f"no params.yaml in {here} or any folder above it; run from the avguide project")


def load_params(path: str | Path) -> dict:
    """Read a parameter file; a relative path is taken from the project root."""
    path = Path(path)
    if not path.is_absolute():
        path = project_root() / path
    if not path.is_file():
        raise FileNotFoundError(f"{path}: parameter file not found")
    params = yaml.safe_load(path.read_text())
    if not isinstance(params, dict) or "seed" not in params:
        raise ValueError(f"{path}: expected a mapping with at least a top-level 'seed'")
    return params
