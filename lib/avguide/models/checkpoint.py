"""Model checkpoints in safe formats: weights as safetensors, the config as JSON beside them."""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from safetensors.torch import load_file, save_file


def save_checkpoint(model, folder: str | Path) -> Path:
    """Write `folder`/model.safetensors and `folder`/config.json (the model's `cfg` dataclass)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, folder / "model.safetensors")
    (folder / "config.json").write_text(json.dumps(asdict(model.cfg), indent=1, default=list) + "\n")
    return folder


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
