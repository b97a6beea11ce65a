"""The `prepare` stage: build the 3D corpus from the configured source into `prepare.out`."""
from __future__ import annotations

import shutil
from pathlib import Path

from avguide.data.biwi import prepare_biwi
from avguide.data.synthetic import SyntheticConfig, build_corpus
from avguide.data.vocaset import prepare_vocaset
from avguide.params import project_root

SOURCES = ("synthetic", "vocaset", "biwi")


def prepare(params: dict, progress: bool = True) -> Path:
    """Write the corpus named by params['prepare'] and return its folder (relative paths from the project root)."""
    cfg = params["prepare"]
    source = cfg["source"]
    if source not in SOURCES:
        raise ValueError(f"prepare.source must be one of {SOURCES}; found {source!r}")
    out = project_root() / cfg["out"]
    if out.exists():
        shutil.rmtree(out)  # a stage output is rebuilt whole, never patched
    if source == "synthetic":
        return build_corpus(out, SyntheticConfig.from_dict({"seed": params["seed"], **cfg["synthetic"]}), progress)
    paths = {k: v for k, v in cfg[source].items() if v is not None}
    if source == "vocaset":
        return prepare_vocaset(out, **paths)
    return prepare_biwi(out, **paths)
