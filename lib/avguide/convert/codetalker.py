"""CodeTalker's published checkpoints (vocaset_stage1.pth.tar + vocaset_stage2.pth.tar, biwi_stage1 + biwi_stage2)
-> a CodeTalker folder of ours with vq_arch "official" (see avguide.models.codetalker_official).

Two files: the public stage-2 trainer drops every `autoencoder.*` key when it saves (base/baseTrainer.py,
save_checkpoint(stage=2)), so the VQ-VAE is only in the stage-1 file (`encoder.*`, `decoder.*`, `quantize.*`, and
two sinusoid buffers `*_pos_embedding.pe`), and the stage-2 file holds the predictor: wav2vec2-base-960h
(`audio_encoder.*`), `audio_feature_map`, `vertice_map`, `learnable_style_emb` (an Embedding), the `PPE.pe` buffer,
torch TransformerDecoderLayers (4 heads, feed-forward 2d, post-norm, packed in_proj) and a bias-free `feat_map`.
Sizes (config/<dataset>/stage2.yaml): d = h = 1024; VQ-VAE 6 pre-norm blocks of 8 heads and MLP 1536 each side,
256 codes; VOCASET 16 codes of 64 per frame, period 30, 6 predictor layers; BIWI 8 codes of 128, period 25, 12 layers.
The public code works in metres, so the converted model has motion_scale 1 (exact: our offsets are divided by it).
"""

from __future__ import annotations

from pathlib import Path

import torch

from avguide.convert import ConversionError, check_keys, dataset_info, read_state_dict, wav2vec2_names
from avguide.convert.faceformer import LAYER, PACKED
from avguide.models.checkpoint import save_checkpoint
from avguide.models.codetalker import CodeTalker, CodeTalkerConfig
from avguide.models.faceformer import BASE_WAV2VEC2, periodic_positional_encoding

COMMON = dict(  # both public configs
    feature_dim=1024, n_heads=4, vq_dim=1024, vq_layers=6, vq_heads=8, vq_ff=1536, n_codes=256, max_frames=600
)
SIZES = {
    "vocaset": dict(COMMON, period=30, n_layers=6, codes_per_frame=16),
    "biwi": dict(COMMON, period=25, n_layers=12, codes_per_frame=8),
}
PPE_LENGTH = 600  # the public PPE buffer (and its biased mask): max_seq_len = 600 frames
PE_LENGTH = 5000  # the VQ-VAE's PositionalEncoding buffers: (5000, 1, h)

# ours <- the public stage-2 modules (the decoder layers: LAYER and PACKED, as FaceFormer's)
TOP = {
    "audio_encoder.map": "audio_feature_map",
    "motion_map": "vertice_map",
    "style": "learnable_style_emb",
    "feat_map": "feat_map",
}
# ours <- the public stage-1 modules (post and pre: BIWI only)
VQ = {
    "vq_encoder.vertex_map": "encoder.vertice_mapping.0",
    "vq_encoder.squash.0": "encoder.squasher.0.0",
    "vq_encoder.embed": "encoder.encoder_linear_embedding.net",
    "vq_encoder.post": "encoder.encoder_linear_embedding_post.net",
    "quantizer.codebook": "quantize.embedding",
    "vq_decoder.pre": "decoder.decoder_linear_embedding_pre.net",
    "vq_decoder.expand.0": "decoder.expander.0.0",
    "vq_decoder.embed": "decoder.decoder_linear_embedding.net",
    "vq_decoder.out": "decoder.vertice_map_reverse",
}
TRANSFORMERS = {"vq_encoder": "encoder.encoder_transformer.net", "vq_decoder": "decoder.decoder_transformer.net"}
# ours (blocks.i) <- the public Transformer's net.{a} = Residual(Norm(Attention)), net.{m} = Residual(Norm(MLP))
BLOCK = {
    "attn_norm": "{a}.fn.norm",
    "qkv": "{a}.fn.fn.to_qkv",
    "attn_out": "{a}.fn.fn.to_out",
    "ff_norm": "{m}.fn.norm",
    "ff.0": "{m}.fn.fn.l1",
    "ff.2": "{m}.fn.fn.l2",
}
POSITIONS = ("encoder.encoder_pos_embedding.pe", "decoder.decoder_pos_embedding.pe")  # not kept (see the model)


def module_names(model: CodeTalker) -> dict[str, str]:
    """ours -> public, module by module, for all but wav2vec 2.0 and the packed attention."""
    names = {**TOP, **VQ}
    for ours, net in TRANSFORMERS.items():
        for i in range(model.cfg.vq_layers):
            names.update(
                {f"{ours}.blocks.{i}.{k}": f"{net}.{v.format(a=2 * i, m=2 * i + 1)}" for k, v in BLOCK.items()}
            )
    for i in range(model.cfg.n_layers):
        names.update({f"layers.{i}.{k}": f"transformer_decoder.layers.{i}.{v}" for k, v in LAYER.items()})
    return names


def official_state_dicts(model: CodeTalker) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """`model`'s weights under the public names and layouts, as (stage-1 file, stage-2 file): the inverse of the
    conversion, so the shapes a published pair must have (and what the tests can feed the converter)."""
    ours, names, stage1, stage2 = model.state_dict(), module_names(model), {}, {}
    for k, v in ours.items():
        module, _, param = k.rpartition(".")
        if k.startswith("audio_encoder.wav2vec2."):
            stage2["audio_encoder." + k.removeprefix("audio_encoder.wav2vec2.")] = v
        elif module in names:
            (stage2 if module in TOP or module.startswith("layers.") else stage1)[f"{names[module]}.{param}"] = v
    for i in range(model.cfg.n_layers):
        for mine, theirs in PACKED.items():
            for p in ("weight", "bias"):
                parts = [ours[f"layers.{i}.{mine}.{x}.{p}"] for x in "qkv"]
                stage2[f"transformer_decoder.layers.{i}.{theirs}.in_proj_{p}"] = torch.cat(parts)
    n, d, h = (PPE_LENGTH // model.cfg.period + 1) * model.cfg.period, model.cfg.feature_dim, model.cfg.vq_dim
    stage2["PPE.pe"] = periodic_positional_encoding(n, d, model.cfg.period)[None]
    for key in POSITIONS:
        stage1[key] = periodic_positional_encoding(PE_LENGTH, h, PE_LENGTH)[:, None]  # one period: plain sinusoids
    return stage1, stage2


def our_state_dict(stage1: dict, stage2: dict, model: CodeTalker) -> dict[str, torch.Tensor]:
    """The public names and layouts -> ours (keys already checked)."""
    official, names, out = {**stage1, **stage2}, module_names(model), {}
    for k in model.state_dict():
        module, _, param = k.rpartition(".")
        if k.startswith("audio_encoder.wav2vec2."):
            out[k] = official["audio_encoder." + k.removeprefix("audio_encoder.wav2vec2.")]
        elif module in names:
            out[k] = official[f"{names[module]}.{param}"]
    for i in range(model.cfg.n_layers):
        for mine, theirs in PACKED.items():
            for p in ("weight", "bias"):
                for x, part in zip("qkv", official[f"transformer_decoder.layers.{i}.{theirs}.in_proj_{p}"].chunk(3)):
                    out[f"layers.{i}.{mine}.{x}.{p}"] = part.contiguous()
    return out


def official_config(dataset: str, subjects: list[str], audio: dict | None = None, sizes: dict | None = None):
    """The converted model's config: the public sizes for `dataset` (or `sizes` over them), its vertices and fps."""
    info = dataset_info(dataset)
    sizes = {"n_vertices": info["n_vertices"], **SIZES[dataset], **(sizes or {})}
    return CodeTalkerConfig(
        n_subjects=len(subjects),
        fps=info["fps"],
        motion_scale=1.0,
        audio=dict(audio or BASE_WAV2VEC2),
        vq_arch="official",
        vq_variant=dataset,
        audio_align=dataset,
        subjects=list(subjects),
        **sizes,
    )


def convert_state(stage1: dict, stage2: dict, cfg: CodeTalkerConfig, paths=("stage 1", "stage 2")) -> CodeTalker:
    """Check both files' keys and shapes strictly against `cfg`'s public model and load them into ours (built on the
    meta device, so nothing is allocated twice; the weights are the checkpoint's own tensors)."""
    with torch.device("meta"):
        model = CodeTalker(cfg)
    expected1, expected2 = ({k: tuple(v.shape) for k, v in s.items()} for s in official_state_dicts(model))
    if "PPE.pe" in stage2:  # its length is the period's (whole periods covering 600 frames): checked by value below
        expected2["PPE.pe"] = (1, stage2["PPE.pe"].shape[1], cfg.feature_dim)
    check_keys(stage1, expected1, paths[0])
    check_keys(stage2, expected2, paths[1])
    if stage2["PPE.pe"].device.type != "meta":  # buffers the public model loads from its files: check what we assume
        ppe = periodic_positional_encoding(expected2["PPE.pe"][1], cfg.feature_dim, cfg.period)[None]
        if not torch.allclose(stage2["PPE.pe"].float(), ppe, atol=1e-5):
            raise ConversionError(f"{paths[1]}: PPE.pe is not the periodic encoding of period {cfg.period}")
        for key in POSITIONS:  # the public VQ-VAE adds row 0 only (see avguide.models.codetalker_official)
            if not torch.equal(stage1[key][0, 0].float(), (torch.arange(cfg.vq_dim) % 2).float()):
                raise ConversionError(
                    f"{paths[0]}: {key} does not start with the sinusoid of position 0 (0, 1, 0, 1...)"
                )
    model.load_state_dict(our_state_dict(stage1, stage2, model), assign=True)
    return model


def convert_codetalker(
    stage1: str | Path,
    stage2: str | Path,
    dataset: str,
    out: str | Path,
    subjects: list[str] | None = None,
    audio: dict | None = None,
    sizes: dict | None = None,
) -> Path:
    """The public CodeTalker pair for `dataset` ("vocaset" | "biwi"): `stage1` (the VQ-VAE) and `stage2` (the
    predictor) -> a model folder `out` (model.safetensors + config.json) that avguide.models.registry.load_animator
    rebuilds. `subjects`: the training subjects in one-hot order (default: the public code's for the dataset);
    `audio`: the wav2vec 2.0 shape (default wav2vec2-base's); `sizes`: CodeTalkerConfig fields over the public ones."""
    names = list(subjects or dataset_info(dataset)["subjects"])
    s1, s2 = read_state_dict(stage1), wav2vec2_names(read_state_dict(stage2))
    if "quantize.embedding.weight" not in s1:
        raise ConversionError(
            f"{stage1}: no quantize.embedding.weight; is this CodeTalker's stage-1 (VQ-VAE) checkpoint?"
        )
    if "learnable_style_emb.weight" not in s2:
        raise ConversionError(f"{stage2}: no learnable_style_emb.weight; is this CodeTalker's stage-2 checkpoint?")
    n_subjects = s2["learnable_style_emb.weight"].shape[0]
    if len(names) != n_subjects:
        raise ConversionError(
            f"{stage2}: the style embedding learnable_style_emb has {n_subjects} training subjects; "
            f"{len(names)} subject names given ({' '.join(names)})"
        )
    model = convert_state(s1, s2, official_config(dataset, names, audio, sizes), (stage1, stage2))
    return save_checkpoint(model, out)
