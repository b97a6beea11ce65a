"""FaceFormer's published checkpoints (vocaset.pth, biwi.pth; the paper's AV-guided ones have the same layout)
-> a FaceFormer folder of ours.

The public model: wav2vec2-base-960h (`audio_encoder.*`), `audio_feature_map` (d, 768), `vertice_map` (d, 3V),
`vertice_map_r` (3V, d), `obj_vector` (a bias-free Linear over the one-hot training subject), `PPE.pe` (the
periodic positional encoding, a buffer), and one torch TransformerDecoderLayer (4 heads, feed-forward 2d, post-norm,
batch-first, packed in_proj). It works in metres, so the converted model has motion_scale 1, and the public audio
alignment of its dataset (FaceFormerConfig.audio_align).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from avguide.convert import ConversionError, check_keys, dataset_info, read_state_dict, wav2vec2_names
from avguide.models.checkpoint import save_checkpoint
from avguide.models.faceformer import BASE_WAV2VEC2, FaceFormer, FaceFormerConfig, periodic_positional_encoding

log = logging.getLogger(__name__)
SIZES = {"vocaset": {"feature_dim": 64, "period": 30}, "biwi": {"feature_dim": 128, "period": 25}}
PPE_LENGTH = 600  # the public PPE buffer: max_seq_len = 600 frames, as 600 // period + 1 whole periods

# ours <- the public decoder layer's (one layer: transformer_decoder.layers.0); in_proj splits into q, k, v
LAYER = {
    "self_attn.out": "self_attn.out_proj",
    "cross_attn.out": "multihead_attn.out_proj",
    "ff.0": "linear1",
    "ff.3": "linear2",
    "norms.0": "norm1",
    "norms.1": "norm2",
    "norms.2": "norm3",
}
PACKED = {"self_attn": "self_attn", "cross_attn": "multihead_attn"}  # ours <- public attention with in_proj
TOP = {"audio_encoder.map": "audio_feature_map", "motion_map": "vertice_map", "motion_out": "vertice_map_r"}


def official_state_dict(model: FaceFormer) -> dict[str, torch.Tensor]:
    """`model`'s weights under the public code's names and layouts (the inverse of the conversion): the shapes a
    published checkpoint must have, and what the tests feed the converter."""
    ours, out = model.state_dict(), {}
    for k, v in ours.items():
        if k.startswith("audio_encoder.wav2vec2."):
            out["audio_encoder." + k.removeprefix("audio_encoder.wav2vec2.")] = v
    for mine, theirs in TOP.items():
        for p in ("weight", "bias"):
            out[f"{theirs}.{p}"] = ours[f"{mine}.{p}"]
    out["obj_vector.weight"] = ours["style.weight"].T
    for i in range(len(model.layers)):
        src, dst = f"layers.{i}.", f"transformer_decoder.layers.{i}."
        for mine, theirs in PACKED.items():
            for p in ("weight", "bias"):
                out[f"{dst}{theirs}.in_proj_{p}"] = torch.cat([ours[f"{src}{mine}.{x}.{p}"] for x in "qkv"])
        for mine, theirs in LAYER.items():
            for p in ("weight", "bias"):
                out[f"{dst}{theirs}.{p}"] = ours[f"{src}{mine}.{p}"]
    n = (PPE_LENGTH // model.cfg.period + 1) * model.cfg.period
    out["PPE.pe"] = periodic_positional_encoding(n, model.cfg.feature_dim, model.cfg.period)[None]
    return out


def our_state_dict(official: dict[str, torch.Tensor], model: FaceFormer) -> dict[str, torch.Tensor]:
    """The public names and layouts -> ours (keys already checked)."""
    out = {}
    for k, v in official.items():
        if k.startswith("audio_encoder."):
            out["audio_encoder.wav2vec2." + k.removeprefix("audio_encoder.")] = v
    for mine, theirs in TOP.items():
        for p in ("weight", "bias"):
            out[f"{mine}.{p}"] = official[f"{theirs}.{p}"]
    out["style.weight"] = official["obj_vector.weight"].T.contiguous()
    for i in range(len(model.layers)):
        src, dst = f"transformer_decoder.layers.{i}.", f"layers.{i}."
        for mine, theirs in PACKED.items():
            for p in ("weight", "bias"):
                for x, part in zip("qkv", official[f"{src}{theirs}.in_proj_{p}"].chunk(3)):
                    out[f"{dst}{mine}.{x}.{p}"] = part.contiguous()
        for mine, theirs in LAYER.items():
            for p in ("weight", "bias"):
                out[f"{dst}{mine}.{p}"] = official[f"{src}{theirs}.{p}"]
    return out


def convert_faceformer(
    ckpt: str | Path,
    dataset: str,
    out: str | Path,
    subjects: list[str] | None = None,
    audio: dict | None = None,
    period: int | None = None,
) -> Path:
    """The public (or the paper's released) FaceFormer checkpoint `ckpt` for `dataset` ("vocaset" | "biwi") ->
    a model folder `out` (model.safetensors + config.json) that avguide.models.registry.load_animator rebuilds, its
    styles numbered as our datasets number the training subjects (sorted by name; config `subjects`).
    `subjects`: the training subjects in the public one-hot order (default: the public code's for the dataset); `audio`:
    the wav2vec 2.0 shape (default wav2vec2-base's); `period`: of the positional encoding (default the dataset's)."""
    info, sizes = dataset_info(dataset), SIZES[dataset]
    state = wav2vec2_names(read_state_dict(ckpt))
    for key in ("obj_vector.weight", "vertice_map_r.weight"):
        if key not in state:
            raise ConversionError(f"{ckpt}: no {key}; is this a FaceFormer checkpoint?")
    dim, n_subjects = state["obj_vector.weight"].shape
    names = list(subjects or info["subjects"])
    if len(names) != n_subjects:
        raise ConversionError(
            f"{ckpt}: the style layer obj_vector has {n_subjects} training subjects; "
            f"{len(names)} subject names given ({' '.join(names)})"
        )
    cfg = FaceFormerConfig(
        n_vertices=state["vertice_map_r.weight"].shape[0] // 3,
        n_subjects=n_subjects,
        fps=info["fps"],
        feature_dim=dim,
        period=period or sizes["period"],
        n_heads=4,
        n_layers=1,
        motion_scale=1.0,
        audio=dict(audio or BASE_WAV2VEC2),
        audio_align=dataset,
        subjects=names,
    )
    if cfg.n_vertices != info["n_vertices"] or dim != sizes["feature_dim"]:
        log.warning(
            f"{ckpt}: {cfg.n_vertices} vertices and width {dim}, where the public {dataset} model has "
            f"{info['n_vertices']} and {sizes['feature_dim']}; converting as found"
        )
    model = FaceFormer(cfg)
    expected = {k: tuple(v.shape) for k, v in official_state_dict(model).items()}
    expected["PPE.pe"] = (1, state["PPE.pe"].shape[1] if "PPE.pe" in state else 0, dim)  # its length: the period's
    check_keys(state, expected, ckpt)
    ppe = periodic_positional_encoding(state["PPE.pe"].shape[1], dim, cfg.period)[None]
    if not torch.allclose(state["PPE.pe"].float(), ppe, atol=1e-5):
        raise ConversionError(
            f"{ckpt}: PPE.pe is not the periodic encoding of period {cfg.period} and width {dim}; pass the period "
            f"the model was trained with"
        )
    ours = our_state_dict(state, model)
    order = sorted(range(n_subjects), key=names.__getitem__)  # our style i is the i-th training subject by name,
    ours["style.weight"] = ours["style.weight"][order]  # as the datasets number them (TalkingFaceDataset)
    model.cfg.subjects = [names[i] for i in order]
    model.load_state_dict(ours)
    return save_checkpoint(model, out)
