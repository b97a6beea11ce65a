"""The `prepare` and `prepare_2d` stages: build the 3D and the 2D audio-visual corpora from their sources."""

from __future__ import annotations

import shutil
from pathlib import Path

from avguide.data.avcorpus import index_lrs3
from avguide.data.biwi import prepare_biwi
from avguide.data.synthetic import SyntheticConfig, build_corpus
from avguide.data.synthetic2d import Synthetic2DConfig, build_av_corpus
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


def prepare_2d(params: dict, progress: bool = True) -> Path:
    """Write (synthetic) or index (LRS3) the 2D audio-visual corpus named by params['prepare_2d']."""
    cfg = params["prepare_2d"]
    if cfg["source"] not in ("synthetic", "lrs3"):
        raise ValueError(f"prepare_2d.source must be synthetic or lrs3; found {cfg['source']!r}")
    out = project_root() / cfg["out"]
    if out.exists():
        shutil.rmtree(out)
    if cfg["source"] == "lrs3":
        if not cfg["lrs3"]["root"]:
            raise ValueError("prepare_2d.source is lrs3 but prepare_2d.lrs3.root is not set")
        index_lrs3(cfg["lrs3"]["root"], out, val_fraction=cfg["lrs3"]["val_fraction"])
        return out
    return build_av_corpus(out, Synthetic2DConfig.from_dict({"seed": params["seed"], **cfg["synthetic"]}), progress)
