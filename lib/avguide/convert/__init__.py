"""Published checkpoints -> model folders of ours (`avguide convert ...`), one module per source.

Each converter reads the public code's own checkpoint file (a pickle: read only from a path the user names, with
torch.load(weights_only=True), which unpickles tensors and plain containers and nothing else), checks every key
against the shapes the public architecture has (a missing, unexpected or misshapen key is an error naming it),
renames the keys to ours and writes a folder as save_checkpoint does. Nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path

import torch

# The public code's datasets: the training subjects in the order of their one-hot style vectors, and the sizes.
DATASETS = {
    "vocaset": {
        "subjects": [
            "FaceTalk_170728_03272_TA",
            "FaceTalk_170904_00128_TA",
            "FaceTalk_170725_00137_TA",
            "FaceTalk_170915_00223_TA",
            "FaceTalk_170811_03274_TA",
            "FaceTalk_170913_03279_TA",
            "FaceTalk_170904_03276_TA",
            "FaceTalk_170912_03278_TA",
        ],
        "n_vertices": 5023,
        "fps": 30.0,
    },
    "biwi": {"subjects": ["F2", "F3", "F4", "M3", "M4", "M5"], "n_vertices": 23370, "fps": 25.0},
}


class ConversionError(ValueError):
    """A checkpoint file is not what the converter expects (the message names the file and the keys)."""


def dataset_info(dataset: str) -> dict:
    if dataset not in DATASETS:
        raise ConversionError(f"--dataset {dataset!r}: expected one of {sorted(DATASETS)}")
    return DATASETS[dataset]


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a published checkpoint: a state dict, or one under 'state_dict' / 'model'; a 'module.' prefix
    (a model saved from DataParallel) is dropped."""
    path = Path(path)
    if not path.is_file():
        raise ConversionError(f"{path}: no such checkpoint file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # not a torch file, or one holding more than tensors
        raise ConversionError(
            f"{path}: not a checkpoint torch.load can read safely ({type(e).__name__}: {e})"
        ) from None
    for wrapper in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ConversionError(f"{path}: expected a state dict (names -> tensors), found {type(obj).__name__}")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def check_keys(state: dict[str, torch.Tensor], shapes: dict[str, tuple], path: str | Path, ignore=()) -> None:
    """Every key of `shapes` in `state` with that shape, and no other key (but those starting with `ignore`)."""
    missing = sorted(set(shapes) - set(state))
    unexpected = sorted(k for k in set(state) - set(shapes) if not k.startswith(tuple(ignore)))
    misshapen = [
        f"{k} {tuple(state[k].shape)} (expected {tuple(shapes[k])})"
        for k in sorted(set(shapes) & set(state))
        if tuple(state[k].shape) != tuple(shapes[k])
    ]
    problems = [
        f"{len(found)} {what}: {', '.join(found[:5])}{' ...' if len(found) > 5 else ''}"
        for what, found in (("missing", missing), ("unexpected", unexpected), ("misshapen", misshapen))
        if found
    ]
    if problems:
        raise ConversionError(f"{path}: not the checkpoint expected; " + "; ".join(problems))


def wav2vec2_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A wav2vec 2.0 state dict with the positional convolution's weight norm under today's names
    (transformers < 4.35 saved weight_g / weight_v; torch's parametrizations call them original0 / original1)."""
    renames = {
        "pos_conv_embed.conv.weight_g": "pos_conv_embed.conv.parametrizations.weight.original0",
        "pos_conv_embed.conv.weight_v": "pos_conv_embed.conv.parametrizations.weight.original1",
    }
    out = {}
    for k, v in state.items():
        for old, new in renames.items():
            if k.endswith(old):
                k = k[: -len(old)] + new
        out[k] = v
    return out
