"""CodeTalker's published checkpoints: the converter's key checks, parity with the public model's behaviour, and the
public VQ decoder's dependence on future codes.

The reference below is written from torch modules following the public code (Doubiiu/CodeTalker: models/stage1_*.py,
models/lib/base_models.py, models/lib/quantizer.py, models/stage2.py, models/lib/wav2vec.py): its module names, its
data layouts (codes as (B, code_dim, T * codes_per_frame)), its attention scaled by the whole width, its position
encoding indexed by the batch axis, its alibi-style and alignment masks, and its prediction loop (the whole prefix
through the predictor and the VQ decoder every frame, frame 0 decoded as two equal frames, the whole code sequence
decoded at the end). No real weights are needed."""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import SMALL_BASE_AUDIO as AUDIO
from torch import nn
from transformers import Wav2Vec2Config, Wav2Vec2Model

from avguide.convert import DATASETS, ConversionError
from avguide.convert.codetalker import SIZES, convert_codetalker, convert_state, official_config
from avguide.models.faceformer import BASE_WAV2VEC2
from avguide.models.registry import load_animator

V = 40
SMALL = {  # the public structure at small widths (codes_per_frame and period as published)
    "vocaset": dict(n_vertices=V, feature_dim=32, n_layers=2, vq_dim=64, vq_layers=2, vq_ff=96, n_codes=32),
    "biwi": dict(n_vertices=V, feature_dim=32, n_layers=3, vq_dim=64, vq_layers=2, vq_ff=96, n_codes=32),
}


def sinusoids(n, d):
    """(n, d) sin / cos of position / 10000^(2i/d), interleaved, as the public encodings build them."""
    angle = torch.arange(n, dtype=torch.float64)[:, None] / 10000 ** (torch.arange(0, d, 2, dtype=torch.float64) / d)
    return torch.stack([angle.sin(), angle.cos()], -1).flatten(1).float()


class PositionalEncoding(nn.Module):
    def __init__(self, d, max_len=5000):
        super().__init__()
        self.register_buffer("pe", sinusoids(max_len, d)[:, None])  # (max_len, 1, d)

    def forward(self, x):  # the public indexing: by x.size(0), which is the batch of its batch-first input
        return x + self.pe[: x.size(0)]


class PPE(nn.Module):
    def __init__(self, d, period, max_len=600):
        super().__init__()
        self.register_buffer("pe", sinusoids(period, d).repeat(max_len // period + 1, 1)[None])


class Linear(nn.Module):  # the public LinearEmbedding: a Linear under `net`
    def __init__(self, i, o):
        super().__init__()
        self.net = nn.Linear(i, o)

    def forward(self, x):
        return self.net(x)


class SelfAttention(nn.Module):
    def __init__(self, d, heads):
        super().__init__()
        self.heads, self.to_qkv, self.to_out = heads, nn.Linear(d, 3 * d, bias=False), nn.Linear(d, d)

    def forward(self, x):
        b, n, d = x.shape
        q, k, v = (t.reshape(b, n, self.heads, -1).transpose(1, 2) for t in self.to_qkv(x).chunk(3, -1))
        w = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d), -1)  # 1/sqrt(d): the public scale
        return self.to_out((w @ v).transpose(1, 2).reshape(b, n, d))


class MLP(nn.Module):
    def __init__(self, d, ff):
        super().__init__()
        self.l1, self.l2 = nn.Linear(d, ff), nn.Linear(ff, d)

    def forward(self, x):
        h = self.l1(x)
        return self.l2(0.5 * h * (1 + torch.tanh(math.sqrt(2 / math.pi) * (h + 0.044715 * h**3))))


class Residual(nn.Module):  # the public Residual(Norm(fn)): keys fn.norm.*, fn.fn.*
    def __init__(self, fn, d):
        super().__init__()
        self.fn = nn.ModuleDict({"norm": nn.LayerNorm(d), "fn": fn})

    def forward(self, x):
        return x + self.fn["fn"](self.fn["norm"](x))


class Transformer(nn.Module):
    def __init__(self, d, layers, heads, ff):
        super().__init__()
        blocks = [[Residual(SelfAttention(d, heads), d), Residual(MLP(d, ff), d)] for _ in range(layers)]
        self.net = nn.Sequential(*sum(blocks, []))

    def forward(self, x):
        return self.net(x)


def conv_block(h):
    return nn.Sequential(
        nn.Conv1d(h, h, 5, padding=2, padding_mode="replicate"), nn.LeakyReLU(0.2), nn.InstanceNorm1d(h)
    )


class Encoder(nn.Module):
    def __init__(self, v3, h, layers, heads, ff, biwi):
        super().__init__()
        self.vertice_mapping = nn.Sequential(nn.Linear(v3, h), nn.LeakyReLU(0.2))
        self.squasher = nn.Sequential(conv_block(h))
        self.encoder_transformer = Transformer(h, layers, heads, ff)
        self.encoder_pos_embedding = PositionalEncoding(h)
        self.encoder_linear_embedding = Linear(h, h)
        if biwi:
            self.encoder_linear_embedding_post = Linear(h, h)


class Decoder(nn.Module):
    def __init__(self, v3, h, layers, heads, ff, biwi):
        super().__init__()
        self.expander = nn.ModuleList([conv_block(h)])
        self.decoder_transformer = Transformer(h, layers, heads, ff)
        self.decoder_pos_embedding = PositionalEncoding(h)
        self.decoder_linear_embedding = Linear(h, h)
        if biwi:
            self.decoder_linear_embedding_pre = Linear(h, h)
        self.vertice_map_reverse = nn.Linear(h, v3, bias=not biwi)
        self.biwi = biwi

    def forward(self, quant, codes_per_frame):  # (B, code_dim, T * codes_per_frame) -> (B, T, V*3)
        b, c, n = quant.shape
        x = quant.transpose(1, 2).reshape(b, n // codes_per_frame, codes_per_frame * c)
        if self.biwi:
            x = self.decoder_linear_embedding_pre(x)
        x = self.expander[0](x.transpose(1, 2)).transpose(1, 2)
        x = self.decoder_pos_embedding(self.decoder_linear_embedding(x))
        return self.vertice_map_reverse(self.decoder_transformer(x))


class Quantizer(nn.Module):
    def __init__(self, n, dim):
        super().__init__()
        self.embedding = nn.Embedding(n, dim)

    def forward(self, z):  # (B, N, dim) -> (B, dim, N), as the public code returns it
        e = self.embedding.weight
        self.codes = ((z**2).sum(-1, keepdim=True) + (e**2).sum(-1) - 2 * z @ e.T).argmin(-1)
        return (F.one_hot(self.codes, len(e)).to(z.dtype) @ e).transpose(1, 2)


class Autoencoder(nn.Module):
    def __init__(self, s, heads=8):
        super().__init__()
        args = (3 * s["n_vertices"], s["vq_dim"], s["vq_layers"], heads, s["vq_ff"], s["biwi"])
        self.encoder, self.decoder = Encoder(*args), Decoder(*args)
        self.quantize = Quantizer(s["n_codes"], s["vq_dim"] // s["codes_per_frame"])


class Reference(nn.Module):
    """The public CodeTalker (stage 2 with its stage-1 autoencoder) with the public parameter names."""

    def __init__(self, dataset, sizes, audio=AUDIO):
        super().__init__()
        s = self.s = {**SIZES[dataset], **sizes, "biwi": dataset == "biwi"}
        self.dataset, d = dataset, s["feature_dim"]
        self.audio_encoder = Wav2Vec2Model(Wav2Vec2Config(**audio))
        self.audio_feature_map = nn.Linear(audio["hidden_size"], d)
        self.vertice_map = nn.Linear(3 * s["n_vertices"], d)
        self.PPE = PPE(d, s["period"])
        layer = nn.TransformerDecoderLayer(d_model=d, nhead=4, dim_feedforward=2 * d, batch_first=True)
        self.transformer_decoder = nn.TransformerDecoder(layer, num_layers=s["n_layers"])
        self.feat_map = nn.Linear(d, s["vq_dim"], bias=False)
        self.learnable_style_emb = nn.Embedding(len(DATASETS[dataset]["subjects"]), d)
        self.autoencoder = Autoencoder(s)

    def files(self):
        """(stage-1 file, stage-2 file) as the public trainers save them (stage 2 without `autoencoder.*`)."""
        state = self.state_dict()
        stage1 = {k.removeprefix("autoencoder."): v for k, v in state.items() if k.startswith("autoencoder.")}
        return stage1, {k: v for k, v in state.items() if not k.startswith("autoencoder.")}

    def self_mask(self, t):
        slopes = [0.25 ** (h + 1) for h in range(4)]  # alibi's slopes for 4 heads
        m = torch.full((4, t, t), float("-inf"))
        for i in range(t):
            for j in range(i + 1):
                m[:, i, j] = torch.tensor([-s * ((i - j) // self.s["period"]) for s in slopes])
        return m

    def cross_mask(self, t, s):  # True: not attended
        mask = torch.ones(t, s, dtype=torch.bool)
        for i in range(t):
            if self.dataset == "biwi":
                mask[i, 2 * i : 2 * i + 2] = False
            else:
                mask[i, i] = False
        return mask

    def decode(self, quant):
        return self.autoencoder.decoder(quant, self.s["codes_per_frame"])

    def predict(self, audio, template, one_hot):
        w = self.audio_encoder
        audio = (audio - audio.mean()) / torch.sqrt(audio.var(unbiased=False) + 1e-7)  # the processor's
        h = w.feature_extractor(audio).transpose(1, 2)
        if self.dataset == "biwi":
            h = h[:, : h.shape[1] // 2 * 2]
        else:
            n = int(h.shape[1] / 50 * 30)
            h = F.interpolate(h.transpose(1, 2), size=n, align_corners=True, mode="linear").transpose(1, 2)
        h = self.audio_feature_map(w.encoder(w.feature_projection(h)[0]).last_hidden_state)
        frames = h.shape[1] // 2 if self.dataset == "biwi" else h.shape[1]
        style = self.learnable_style_emb(one_hot.argmax(1))[:, None]
        emb, self.fed_back = style, []
        for i in range(frames):
            x = emb + self.PPE.pe[:, : emb.shape[1]]
            t = x.shape[1]
            feat = self.transformer_decoder(
                x, h, tgt_mask=self.self_mask(t), memory_mask=self.cross_mask(t, h.shape[1])
            )
            feat = self.feat_map(feat).reshape(1, t * self.s["codes_per_frame"], -1)
            quant = self.autoencoder.quantize(feat)
            out = self.decode(torch.cat([quant, quant], -1))[:, :1] if i == 0 else self.decode(quant)
            self.fed_back.append(out[:, -1])
            if i != frames - 1:
                emb = torch.cat([emb, self.vertice_map(out[:, -1])[:, None] + style], 1)
        return self.decode(self.autoencoder.quantize(feat)) + template[:, None]


def reference(dataset, seed=0):
    torch.manual_seed(seed)
    ref = Reference(dataset, SMALL[dataset]).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # trained-looking scales: offsets of millimetres to centimetres, codes spread out
        ref.autoencoder.quantize.embedding.weight.copy_(
            torch.randn(ref.autoencoder.quantize.embedding.weight.shape, generator=g)
        )
        ref.feat_map.weight.normal_(0, 1.0, generator=g)
        ref.autoencoder.decoder.vertice_map_reverse.weight.normal_(0, 0.003, generator=g)
        ref.vertice_map.weight.normal_(0, 1.0, generator=g)
        ref.learnable_style_emb.weight.normal_(0, 1.0, generator=g)
    return ref


OLD_NAMES = {"parametrizations.weight.original0": "weight_g", "parametrizations.weight.original1": "weight_v"}


def save_files(ref, folder):
    """The public files, wav2vec 2.0's positional weight norm named as transformers 4.6 saved it (the public pin)."""
    stage1, stage2 = ref.files()
    for new, old in OLD_NAMES.items():
        stage2 = {k.replace(new, old): v for k, v in stage2.items()}
    torch.save({"state_dict": stage1}, folder / "stage1.pth.tar")
    torch.save({"state_dict": stage2}, folder / "stage2.pth.tar")
    return folder / "stage1.pth.tar", folder / "stage2.pth.tar"


def audio_clip(seconds=1.5, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, int(16000 * seconds), generator=g) * 0.1


@pytest.mark.parametrize("dataset", ["vocaset", "biwi"])
def test_converted_codetalker_predicts_as_the_public_model(dataset, tmp_path):
    torch.set_num_threads(1)
    ref = reference(dataset)
    stage1, stage2 = save_files(ref, tmp_path)
    folder = convert_codetalker(stage1, stage2, dataset, tmp_path / "model", audio=AUDIO, sizes=SMALL[dataset])
    model = load_animator(folder)
    assert model.cfg.vq_arch == "official" and model.cfg.motion_scale == 1.0
    assert model.cfg.subjects == DATASETS[dataset]["subjects"]
    audio = audio_clip()
    template = torch.randn(1, V * 3, generator=torch.Generator().manual_seed(2)) * 0.05
    one_hot = torch.zeros(1, len(DATASETS[dataset]["subjects"]))
    one_hot[0, 2] = 1
    with torch.no_grad():
        expected = ref.predict(audio, template, one_hot)
    n = torch.tensor([expected.shape[1]])
    assert n.item() == (44 if dataset == "vocaset" else 37)  # 74 CNN features: 50 -> 30 Hz, or two per frame
    for cache in (True, False):
        got = model.predict(audio, torch.tensor([audio.shape[1]]), n, template.view(1, V, 3), torch.tensor([2]), cache)
        assert (got.flatten(2) - expected).abs().max() < 1e-5
    assert expected.std(1).mean() > 1e-3  # the frames differ: the audio drives the output
    assert ref.autoencoder.quantize.codes.unique().numel() > 8  # many codes in use
    fed_back = torch.cat(ref.fed_back) + template  # the frames fed back are not the output's: it saw the later codes
    assert (fed_back[1:-1] - expected[0, 1:-1]).abs().amax(1).min() > 1e-4  # (the last step decodes them all)


def test_batches_are_predicted_item_by_item(tmp_path):
    ref = reference("biwi", seed=3)
    folder = convert_codetalker(*save_files(ref, tmp_path), "biwi", tmp_path / "m", audio=AUDIO, sizes=SMALL["biwi"])
    model = load_animator(folder)
    audio = torch.cat([audio_clip(1.0, 4), audio_clip(1.0, 5)])
    lengths, n, ids = torch.tensor([16000, 12000]), torch.tensor([24, 18]), torch.tensor([0, 5])
    together = model.predict(audio, lengths, n, torch.zeros(2, V, 3), ids)
    alone = model.predict(audio[1:, :12000], lengths[1:], n[1:], torch.zeros(1, V, 3), ids[1:])
    assert torch.allclose(together[1, :18], alone[0], atol=1e-6) and together[1, 18:].abs().max() == 0


def test_the_public_vq_decoder_sees_the_future_and_not_a_single_frame():
    """The public decoder is not causal: an early frame changes with the last frame's codes (attention over the whole
    sequence, 5-tap convolutions, instance statistics over the sequence). And a sequence of one frame (or two equal
    frames, the public loop's first step) decodes to the same output whatever its code: instance norm zeroes it."""
    from avguide.models.codetalker import CodeTalker

    torch.manual_seed(0)
    for dataset in ("vocaset", "biwi"):
        with torch.no_grad():
            model = CodeTalker(official_config(dataset, DATASETS[dataset]["subjects"], AUDIO, SMALL[dataset])).eval()
            codes = torch.randn(1, 12, model.cfg.codes_per_frame, model.cfg.vq_dim // model.cfg.codes_per_frame)
            changed = codes.clone()
            changed[:, -1] += 1.0
            a, b = model.vq_decoder(codes), model.vq_decoder(changed)
            assert (a[:, 0] - b[:, 0]).abs().max() > 1e-4  # frame 0 depends on frame 11's codes
            one, other = (
                model.vq_decoder(codes[:, :1].repeat(1, 2, 1, 1)),
                model.vq_decoder(codes[:, 5:6].repeat(1, 2, 1, 1)),
            )
            assert (one - other).abs().max() < 1e-4 < one.abs().max()  # (rounding in the norm's mean, x 1/sqrt(eps))


@pytest.mark.parametrize("dataset, n_vertices", [("vocaset", 5023), ("biwi", 23370)])
def test_full_size_checkpoints_load_strictly_and_bad_keys_are_named(dataset, n_vertices):
    """The public sizes (d = h = 1024, 6 + 6 VQ blocks, 6 or 12 predictor layers, wav2vec2-base), as shapes only (on
    the meta device): they load strictly; a renamed and a missing key are named."""
    with torch.device("meta"):
        stage1, stage2 = Reference(dataset, {"n_vertices": n_vertices}, BASE_WAV2VEC2).files()
    cfg = official_config(dataset, DATASETS[dataset]["subjects"])
    model = convert_state(stage1, stage2, cfg, ("s1.pth", "s2.pth"))
    assert model.cfg.n_vertices == n_vertices and model.cfg.n_layers == (6 if dataset == "vocaset" else 12)
    assert model.style.weight.shape == (len(DATASETS[dataset]["subjects"]), 1024)
    last = (
        "transformer_decoder.layers.11.norm3.bias" if dataset == "biwi" else "transformer_decoder.layers.5.norm3.bias"
    )
    assert last in stage2 and "decoder.decoder_transformer.net.11.fn.fn.l2.weight" in stage1
    renamed = dict(stage1)
    renamed["decoder.vertex_map_reverse.weight"] = renamed.pop("decoder.vertice_map_reverse.weight")
    with pytest.raises(
        ConversionError, match=r"s1.pth.*missing: decoder.vertice_map_reverse.weight.*unexpected: decoder.vertex_map"
    ):
        convert_state(renamed, stage2, cfg, ("s1.pth", "s2.pth"))
    missing = {k: v for k, v in stage2.items() if k != last}
    with pytest.raises(ConversionError, match=rf"s2.pth.*missing: {last}"):
        convert_state(stage1, missing, cfg, ("s1.pth", "s2.pth"))
    other = "biwi" if dataset == "vocaset" else "vocaset"  # the other variant's layers are unexpected or missing
    with pytest.raises(ConversionError, match="stage 1: .*(missing|unexpected): .*linear_embedding_(post|pre)"):
        convert_state(
            stage1, stage2, official_config(other, DATASETS[dataset]["subjects"], sizes={"n_vertices": n_vertices})
        )


def test_wrong_files_and_subjects_are_errors(tmp_path):
    ref = reference("vocaset")
    stage1, stage2 = save_files(ref, tmp_path)
    args = dict(audio=AUDIO, sizes=SMALL["vocaset"])
    with pytest.raises(ConversionError, match="stage2.pth.tar: no quantize.embedding.weight"):
        convert_codetalker(stage2, stage1, "vocaset", tmp_path / "x", **args)
    with pytest.raises(ConversionError, match="8 training subjects; 2 subject names"):
        convert_codetalker(stage1, stage2, "vocaset", tmp_path / "x", subjects=["a", "b"], **args)
    with pytest.raises(ConversionError, match="misshapen: audio_encoder"):  # the base encoder is the default
        convert_codetalker(stage1, stage2, "vocaset", tmp_path / "x", sizes=SMALL["vocaset"])
    with pytest.raises(ConversionError, match="PPE.pe is not the periodic encoding of period 25"):
        convert_codetalker(
            stage1, stage2, "vocaset", tmp_path / "x", audio=AUDIO, sizes={**SMALL["vocaset"], "period": 25}
        )
    names = [f"s{i}" for i in range(8)]
    folder = convert_codetalker(stage1, stage2, "vocaset", tmp_path / "m", subjects=names, **args)
    assert load_animator(folder).cfg.subjects == names


def test_models_trained_here_keep_their_config_json(tmp_path):
    """The converters' fields are written only when set: a CodeTalker trained here writes the config.json it wrote
    before they existed, and cannot be mistaken for a converted one."""
    from avguide.models.checkpoint import save_checkpoint
    from avguide.models.codetalker import CodeTalker, CodeTalkerConfig

    model = CodeTalker(CodeTalkerConfig(n_vertices=10, n_subjects=2))
    keys = set(json.loads((save_checkpoint(model, tmp_path / "m") / "config.json").read_text()))
    assert not keys & {"vq_arch", "vq_variant", "vq_heads", "vq_ff", "audio_align", "subjects"}
    assert "vq_in.0.weight" in model.state_dict() and "feat_map.bias" in model.state_dict()
    assert load_animator(tmp_path / "m").cfg.vq_arch == "ours"


@pytest.mark.slow
def test_avguide_convert_codetalker_command_at_the_public_size(tmp_path, capsys):
    """The command on a VOCASET pair of the public size (wav2vec2-base, 5,023 vertices), filled from a seeded
    generator, rebuilt by load_animator; and its error for the wrong dataset."""
    from avguide.cli import main

    torch.manual_seed(0)
    ref = Reference("vocaset", {"n_vertices": 5023}, BASE_WAV2VEC2)
    stage1, stage2 = save_files(ref, tmp_path)
    del ref
    out = tmp_path / "m"
    assert main(["convert", "codetalker", str(stage1), str(stage2), "--dataset", "vocaset", "--out", str(out)]) == 0
    model = load_animator(out)
    assert model.cfg.subjects[5] == "FaceTalk_170913_03279_TA" and model.cfg.audio["hidden_size"] == 768
    saved = torch.load(stage1, weights_only=True)["state_dict"]
    assert torch.equal(model.vq_decoder.out.weight, saved["decoder.vertice_map_reverse.weight"])
    assert (
        main(["convert", "codetalker", str(stage1), str(stage2), "--dataset", "biwi", "--out", str(tmp_path / "b")])
        == 1
    )
    assert "8 training subjects; 6 subject names" in capsys.readouterr().err
