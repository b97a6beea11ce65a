"""auto-AVSR's published readers (github.com/mpc001/auto_avsr: the audio-visual avsr_*.pth, the visual-only vsr_*.pth
and the audio-only asr_*.pth) -> an AutoAVSR reader folder of ours (avguide.models.autoavsr).

Two layouts were published. The release v1.0.0 (the one with the audio-visual reader) keeps each front end inside its
encoder: `encoder.frontend.*`, `encoder.embed.0.*` (the Linear 512 -> 768), `encoder.encoders.N.*`,
`encoder.after_norm.*`; the audio-visual reader adds the audio stream as `aux_encoder.*` and `fusion.*`. The later
code (main) moved the front end and the Linear out: `frontend.*`, `proj_encoder.*`, `encoder.*`. Both have
`decoder.*` and `ctc.ctc_lo.*`. Everything maps onto ours by prefixes (`RENAMES`); the sizes are read from the
checkpoint's shapes and every key is then checked against the architecture.

The outputs are numbered by the units file beside the SentencePiece model (spm/unigram/unigram5000_units.txt for
spm/unigram/unigram5000.model): blank, 5,047 units, sos/eos = 5,049. Both files are copied into the folder.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import torch

from avguide.convert import ConversionError, check_keys, read_state_dict
from avguide.data.text import SentencePieceVocabulary, units_beside
from avguide.models.autoavsr import RELEASE_DECODING, AutoAVSR, AutoAVSRConfig, save_autoavsr
from avguide.models.expert import MODES

log = logging.getLogger(__name__)

# (layout, modality) -> [(their prefix, our prefix)]; keys under no prefix listed keep their name (decoder, ctc, fusion)
RENAMES = {
    ("release", "av"): [("encoder.", "video_encoder."), ("aux_encoder.", "audio_encoder.")],
    ("release", "video"): [("encoder.", "video_encoder.")],
    ("release", "audio"): [("encoder.", "audio_encoder.")],
    ("later", "video"): [
        ("frontend.", "video_encoder.frontend."),
        ("proj_encoder.", "video_encoder.embed.0."),
        ("encoder.", "video_encoder."),
    ],
    ("later", "audio"): [
        ("frontend.", "audio_encoder.frontend."),
        ("proj_encoder.", "audio_encoder.embed.0."),
        ("encoder.", "audio_encoder."),
    ],
}
# the key telling each (layout, modality) apart: the first convolution of its (first) front end
SIGNS = {
    ("release", "av"): "aux_encoder.frontend.trunk.conv1.weight",
    ("release", "video"): "encoder.frontend.frontend3D.0.weight",
    ("release", "audio"): "encoder.frontend.trunk.conv1.weight",
    ("later", "video"): "frontend.frontend3D.0.weight",
    ("later", "audio"): "frontend.trunk.conv1.weight",
}
NAMES = {"av": "audio-visual", "video": "visual-only", "audio": "audio-only"}


def rename(state: dict, pairs: list[tuple[str, str]]) -> dict:
    """Keys under the first prefix of `pairs` that matches (longest first) -> the paired prefix; others as they are."""
    pairs = sorted(pairs, key=lambda p: -len(p[0]))
    out = {}
    for k, v in state.items():
        src, dst = next(((s, d) for s, d in pairs if k.startswith(s)), ("", ""))
        out[dst + k[len(src) :]] = v
    return out


def layout_of(state: dict, path) -> tuple[str, str]:
    """(layout, modality) of a checkpoint, from the keys of SIGNS."""
    found = [lm for lm, key in SIGNS.items() if key in state]
    if not found:
        raise ConversionError(
            f"{path}: not an auto-AVSR checkpoint: none of {sorted(SIGNS.values())} (its first keys: "
            f"{', '.join(list(state)[:3])})"
        )
    return found[0]  # the audio-visual sign comes first: its video stream has the visual-only sign too


def config_from(state: dict, layout: str, modality: str) -> AutoAVSRConfig:
    """The sizes of a release-layout checkpoint (missing keys: the release's sizes; check_keys names them later)."""
    base = AutoAVSRConfig()

    def dim(key, axis, default):
        return state[key].shape[axis] if key in state else default

    def count(prefix):
        return len({m.group(1) for k in state for m in [re.match(re.escape(prefix) + r"(\d+)\.", k)] if m})

    enc, front = "encoder.", ("encoder.frontend." if layout == "release" else "frontend.")
    channels, k = [], 1
    while f"{front}trunk.layer{k}.0.conv1.weight" in state:
        channels.append(state[f"{front}trunk.layer{k}.0.conv1.weight"].shape[0])
        k += 1
    return AutoAVSRConfig(
        mode=modality,
        vocab="sentencepiece",
        vocab_size=dim("ctc.ctc_lo.weight", 0, 5049),
        resnet_channels=tuple(channels) or base.resnet_channels,
        resnet_blocks=count(f"{front}trunk.layer1.") or base.resnet_blocks,
        d_model=dim("ctc.ctc_lo.weight", 1, base.d_model),
        n_heads=dim(f"{enc}encoders.0.self_attn.pos_bias_u", 0, base.n_heads),
        ffn_dim=dim(f"{enc}encoders.0.feed_forward.w_1.weight", 0, base.ffn_dim),
        encoder_layers=count(f"{enc}encoders.") or base.encoder_layers,
        conv_kernel=dim(f"{enc}encoders.0.conv_module.depthwise_conv.weight", 2, base.conv_kernel),
        fusion_dim=dim("fusion.fc1.weight", 0, base.fusion_dim),
        decoder_layers=count("decoder.decoders.") or base.decoder_layers,
    )


def read_vocabulary(spm: Path, units: Path | None) -> SentencePieceVocabulary:
    if not spm.is_file():
        raise ConversionError(f"{spm}: no SentencePiece model file (auto-AVSR's spm/unigram/unigram5000.model)")
    units = Path(units) if units is not None else units_beside(spm)
    try:
        vocab = SentencePieceVocabulary(spm, units)
    except (FileNotFoundError, ValueError) as e:
        raise ConversionError(f"{e} (the units of {spm.name}; pass units= where it is elsewhere)") from None
    try:
        import sentencepiece  # noqa: F401
    except ImportError:
        log.warning(f"{spm}: copied unchecked (no sentencepiece package); decoding needs only the units")
        return vocab
    try:
        sp = vocab.processor()
    except Exception as e:  # the package's own error for a file that is no SentencePiece model
        raise ConversionError(f"{spm}: not a SentencePiece model ({type(e).__name__}: {e})") from None
    units = vocab.tokens[1:-1]  # auto-AVSR's hold, besides the pieces, ~1 % strings its model left unknown ("46664")
    known = len(set(units) & {sp.id_to_piece(i) for i in range(sp.get_piece_size())})
    if known < 0.9 * len(units):
        raise ConversionError(f"{vocab.units}: {known} of its {len(units)} units are pieces of {spm}; not its units")
    return vocab


def convert_autoavsr(
    ckpt: str | Path, spm: str | Path, modality: str, out: str | Path, units: str | Path | None = None
) -> Path:
    """auto-AVSR's checkpoint `ckpt` of `modality` ("av" | "video" | "audio") with its SentencePiece model `spm` (and
    the units file, default beside it) -> the reader folder `out` (weights, config, decoding.json with the release's
    beam search: 40 hypotheses, CTC weight 0.1, and the tokenizer files), which avguide.models.autoavsr.load_autoavsr
    (and avguide.models.expert.load_expert) reads."""
    if modality not in MODES:
        raise ConversionError(f"modality {modality!r}: expected one of {MODES}")
    vocab = read_vocabulary(Path(spm), units)
    state = read_state_dict(ckpt)
    if state and all(k.startswith("model.") for k in state):  # a Lightning checkpoint of the training code
        state = {k.removeprefix("model."): v for k, v in state.items()}
    layout, found = layout_of(state, ckpt)
    if found != modality:
        raise ConversionError(
            f"{ckpt}: holds the {NAMES[found]} reader ({SIGNS[(layout, found)]}), not the {NAMES[modality]} one "
            f"asked for; convert it with modality {found!r}"
        )
    cfg = config_from(state, layout, modality)
    if len(vocab) != cfg.vocab_size:
        raise ConversionError(
            f"{vocab.units}: {len(vocab) - 2} units make {len(vocab)} outputs (with blank and sos/eos); the output "
            f"layer ctc.ctc_lo of {ckpt} has {cfg.vocab_size}"
        )
    with torch.device("meta"):
        model = AutoAVSR(cfg, vocab)
    back = [(ours, theirs) for theirs, ours in RENAMES[(layout, modality)]]
    check_keys(state, {k: tuple(v.shape) for k, v in rename(model.state_dict(), back).items()}, ckpt)
    ours = {k: v.float() if v.is_floating_point() else v for k, v in rename(state, RENAMES[(layout, modality)]).items()}
    model.load_state_dict(ours, assign=True)
    return save_autoavsr(model.eval(), out, RELEASE_DECODING)
