"""The animators by name, and rebuilding one from a checkpoint folder.

`ANIMATORS` maps the name params.yaml uses (`train.animators`: "faceformer") to (model class, config class); every
stage and command that builds or loads an animator takes it from here. Importing it needs torch and the models
(not Lightning). `load_animator` rebuilds whichever animator a folder holds (the class save_checkpoint records,
or for an older checkpoint the one whose config fields are config.json's keys).

Every animator has `predict(audio, audio_lengths, n_frames, templates, subject_ids) -> (B, T, V, 3)` and a `cfg`
with `n_vertices`, `n_subjects`, `fps` and `max_frames`.
"""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path

from safetensors import safe_open

from avguide.models.checkpoint import checkpoint_class, load_checkpoint
from avguide.models.codetalker import CodeTalker, CodeTalkerConfig
from avguide.models.faceformer import FaceFormer, FaceFormerConfig

ANIMATORS = {"faceformer": (FaceFormer, FaceFormerConfig), "codetalker": (CodeTalker, CodeTalkerConfig)}
BY_CLASS = {model_cls.__name__: (model_cls, cfg_cls) for model_cls, cfg_cls in ANIMATORS.values()}


class CheckpointError(ValueError):
    """A folder does not hold an animator this code can rebuild (the message names the file and the problem)."""


def _guess_class(folder: Path) -> str:
    """For a checkpoint written before classes were recorded: the one animator whose config dataclass has
    the keys of config.json (save_checkpoint writes every field but the optional ones left at their default)."""
    keys = set(json.loads((folder / "config.json").read_text()))

    def fits(cfg_cls) -> bool:
        required = {f.name for f in fields(cfg_cls) if not f.metadata.get("optional")}
        return required <= keys <= {f.name for f in fields(cfg_cls)}

    matches = [name for name, (_, cfg_cls) in BY_CLASS.items() if fits(cfg_cls)]
    if len(matches) != 1:
        raise CheckpointError(
            f"{folder / 'model.safetensors'}: the checkpoint does not record its class and "
            f"config.json fits {matches or 'none'} of the known animators {sorted(BY_CLASS)}"
        )
    return matches[0]


def load_animator(folder: str | Path, device: str = "cpu"):
    """The animator saved in `folder` (config.json + model.safetensors), in eval mode on `device`."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(
            f"{folder}: model folder not found; expected config.json and model.safetensors "
            f"as the train stage writes them (data/animators/<animator>/model), or pass --model"
        )
    for name in ("config.json", "model.safetensors"):
        if not (folder / name).is_file():
            raise CheckpointError(f"{folder}: no {name}; expected a checkpoint folder written by save_checkpoint")
    name = checkpoint_class(folder) or _guess_class(folder)
    if name not in BY_CLASS:
        raise CheckpointError(
            f"{folder / 'model.safetensors'}: holds a {name!r}, which is not a known animator "
            f"(known: {sorted(BY_CLASS)})"
        )
    model_cls, cfg_cls = BY_CLASS[name]
    try:
        model = load_checkpoint(model_cls, cfg_cls, folder, map_location=device)
    except TypeError as e:  # config.json has keys the config dataclass does not take
        raise CheckpointError(f"{folder / 'config.json'}: not a {cfg_cls.__name__}: {e}") from None
    except RuntimeError:  # the tensors are not this code's model: say which, briefly
        with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
            saved = set(f.keys())
        wanted = set(model_cls(cfg_cls(**json.loads((folder / "config.json").read_text()))).state_dict())
        missing, extra = sorted(wanted - saved), sorted(saved - wanted)
        if not missing and not extra:
            raise CheckpointError(
                f"{folder / 'model.safetensors'}: tensor shapes do not match the {name} that config.json describes"
            ) from None
        raise CheckpointError(
            f"{folder / 'model.safetensors'}: its tensors do not fit this version's {name} ({len(missing)} missing, "
            f"e.g. {missing[:1]}; {len(extra)} unexpected, e.g. {extra[:1]}); was it trained with older code? "
            f"Retrain it (dvc repro train)"
        ) from None
    return model.to(device).eval()
