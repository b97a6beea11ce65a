"""Model checkpoints in safe formats: weights as safetensors, the config as JSON beside them.

The model's class name is recorded in the safetensors header metadata (`class`), so a tool handed a
folder (the `avguide` command line) knows what to rebuild; config.json stays the config dataclass
alone. One key only: safetensors writes metadata keys in no fixed order, so two keys would make the
same weights different bytes. Checkpoints written before the class was recorded still load.

A config field marked `OPTIONAL` (the settings of converted published checkpoints) is written only when it is
not its default, so a model trained here writes the same config.json as before that field existed.
"""

from __future__ import annotations

import json
from dataclasses import asdict, field, fields
from pathlib import Path

from safetensors import safe_open
from safetensors.torch import load_file, save_file

OPTIONAL = {"optional": True}  # dataclasses.field metadata: config.json holds the field only when it is set


def optional(default):
    """A config field written to config.json only when it is not `default` (see the module's docstring)."""
    return field(default=default, metadata=OPTIONAL)


def config_dict(cfg) -> dict:
    """`cfg` as config.json holds it: every field but the optional ones that keep their default."""
    out = asdict(cfg)
    for f in fields(cfg):
        if f.metadata.get("optional") and out[f.name] == f.default:
            del out[f.name]
    return out


def save_checkpoint(model, folder: str | Path) -> Path:
    """Write `folder`/model.safetensors and `folder`/config.json (the model's `cfg` dataclass)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, folder / "model.safetensors", metadata={"class": type(model).__name__})
    (folder / "config.json").write_text(json.dumps(config_dict(model.cfg), indent=1, default=list) + "\n")
    return folder


def checkpoint_class(folder: str | Path) -> str | None:
    """The class name save_checkpoint recorded for the model in `folder`, or None for an older checkpoint."""
    path = Path(folder) / "model.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint file not found")
    with safe_open(str(path), framework="pt") as f:
        return (f.metadata() or {}).get("class")


def load_checkpoint(model_cls, config_cls, folder: str | Path, map_location: str = "cpu"):
    """Rebuild a model from its config.json and load its weights (strictly: every tensor must match)."""
    folder = Path(folder)
    for name in ("config.json", "model.safetensors"):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"{folder / name}: checkpoint file not found")
    cfg = config_cls(**json.loads((folder / "config.json").read_text()))
    model = model_cls(cfg)
    model.load_state_dict(load_file(folder / "model.safetensors", device=map_location))
    return model
