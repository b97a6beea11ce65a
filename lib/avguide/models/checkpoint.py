"""Model checkpoints in safe formats: weights as safetensors, the config as JSON beside them.

The model's class name is recorded in the safetensors header metadata (`class`), so a tool handed a
folder (the `avguide` command line) knows what to rebuild; config.json stays the config dataclass
alone. One key only: safetensors writes metadata keys in no fixed order, so two keys would make the
same weights different bytes. Checkpoints written before the class was recorded still load.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from safetensors import safe_open
from safetensors.torch import load_file, save_file


def save_checkpoint(model, folder: str | Path) -> Path:
    """Write `folder`/model.safetensors and `folder`/config.json (the model's `cfg` dataclass)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, folder / "model.safetensors", metadata={"class": type(model).__name__})
    (folder / "config.json").write_text(json.dumps(asdict(model.cfg), indent=1, default=list) + "\n")
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
