"""FaceFormer's published checkpoints: the converter's key checks, and parity with the public model's behaviour.

The reference below is written from torch's own modules following the public code's behaviour (its names, its
packed attention, its alibi-style and alignment masks, its PPE buffer, its prediction loop that decodes the whole
prefix every frame, and its audio alignment per dataset); no real weights are needed."""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import SMALL_BASE_AUDIO as AUDIO
from torch import nn
from transformers import Wav2Vec2Config, Wav2Vec2Model

from avguide.convert import ConversionError
from avguide.convert.faceformer import convert_faceformer
from avguide.models.registry import load_animator

SETUP = {"vocaset": dict(d=64, period=30, subjects=8), "biwi": dict(d=128, period=25, subjects=6)}


class PPE(nn.Module):
    def __init__(self, d, period, max_len=600):
        super().__init__()
        pe = torch.tensor(
            [
                [(math.sin if i % 2 == 0 else math.cos)(p / 10000 ** ((i - i % 2) / d)) for i in range(d)]
                for p in range(period)
            ]
        )
        self.register_buffer("pe", pe.repeat(max_len // period + 1, 1)[None])


class Reference(nn.Module):
    """The public FaceFormer's inference, from torch modules, with the public parameter names."""

    def __init__(self, dataset, n_vertices):
        super().__init__()
        s = SETUP[dataset]
        self.dataset, self.period, d = dataset, s["period"], s["d"]
        self.audio_encoder = Wav2Vec2Model(Wav2Vec2Config(**AUDIO))
        self.audio_feature_map = nn.Linear(AUDIO["hidden_size"], d)
        self.vertice_map = nn.Linear(3 * n_vertices, d)
        self.PPE = PPE(d, s["period"])
        layer = nn.TransformerDecoderLayer(d_model=d, nhead=4, dim_feedforward=2 * d, batch_first=True)
        self.transformer_decoder = nn.TransformerDecoder(layer, num_layers=1)
        self.vertice_map_r = nn.Linear(d, 3 * n_vertices)
        self.obj_vector = nn.Linear(s["subjects"], d, bias=False)

    def self_mask(self, t):
        slopes = [0.25 ** (h + 1) for h in range(4)]  # alibi's slopes for 4 heads
        m = torch.full((4, t, t), float("-inf"))
        for h in range(4):
            for i in range(t):
                for j in range(i + 1):
                    m[h, i, j] = -slopes[h] * ((i - j) // self.period)
        return m

    def cross_mask(self, t, s):  # True: not attended
        mask = torch.ones(t, s, dtype=torch.bool)
        for i in range(t):
            if self.dataset == "biwi":
                mask[i, 2 * i : 2 * i + 2] = False
            else:
                mask[i, i] = False
        return mask

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
        style = self.obj_vector(one_hot)[:, None]
        emb = style
        for _ in range(frames):
            x = emb + self.PPE.pe[:, : emb.shape[1]]
            t = x.shape[1]
            out = self.transformer_decoder(x, h, tgt_mask=self.self_mask(t), memory_mask=self.cross_mask(t, h.shape[1]))
            out = self.vertice_map_r(out)
            emb = torch.cat([emb, self.vertice_map(out[:, -1])[:, None] + style], 1)
        return out + template[:, None]


def reference(dataset, n_vertices=40, seed=0):
    torch.manual_seed(seed)
    ref = Reference(dataset, n_vertices).eval()
    with torch.no_grad():  # the public init zeroes the output map: random here, so the parity is not trivial
        ref.vertice_map_r.weight.normal_(0, 0.02)
        ref.vertice_map_r.bias.normal_(0, 0.01)
        ref.obj_vector.weight.normal_(0, 1.0)
    return ref


def save_official(ref, path, rename=None, drop=None):
    state = dict(ref.state_dict())
    if rename:
        state[rename[1]] = state.pop(rename[0])
    if drop:
        del state[drop]
    torch.save(state, path)
    return path


@pytest.mark.parametrize("dataset", ["vocaset", "biwi"])
def test_converted_faceformer_predicts_as_the_public_model(dataset, tmp_path):
    torch.set_num_threads(1)
    ref = reference(dataset)
    folder = convert_faceformer(save_official(ref, tmp_path / "ckpt.pth"), dataset, tmp_path / "model", audio=AUDIO)
    model = load_animator(folder)
    assert model.cfg.audio_align == dataset and model.cfg.subjects == sorted(model.cfg.subjects)
    g = torch.Generator().manual_seed(1)
    audio = torch.randn(1, 16000 * 3 // 2, generator=g) * 0.1  # 1.5 s
    template = torch.randn(1, 40 * 3, generator=g) * 0.05
    one_hot = torch.zeros(1, SETUP[dataset]["subjects"])
    one_hot[0, 2] = 1
    with torch.no_grad():
        expected = ref.predict(audio, template, one_hot)
    n = torch.tensor([expected.shape[1]])
    for cache in (True, False):
        style = torch.tensor([model.cfg.subjects.index(("FaceTalk_170725_00137_TA", "F4")[dataset == "biwi"])])
        got = model.predict(audio, torch.tensor([audio.shape[1]]), n, template.view(1, 40, 3), style, cache)
        assert (got.flatten(2) - expected).abs().max() < 1e-5
    assert expected.std(1).mean() > 1e-3  # the frames differ: the audio drives the output


@pytest.mark.parametrize("dataset, n_vertices", [("vocaset", 5023), ("biwi", 23370)])
def test_full_size_checkpoints_load_strictly_and_bad_keys_are_named(dataset, n_vertices, tmp_path):
    ref = Reference(dataset, n_vertices)
    folder = convert_faceformer(save_official(ref, tmp_path / "ok.pth"), dataset, tmp_path / "m", audio=AUDIO)
    assert load_animator(folder).cfg.n_vertices == n_vertices
    bad = save_official(ref, tmp_path / "renamed.pth", rename=("vertice_map.weight", "vertex_map.weight"))
    with pytest.raises(ConversionError, match=r"renamed.pth.*missing: vertice_map.weight.*unexpected: vertex_map"):
        convert_faceformer(bad, dataset, tmp_path / "x", audio=AUDIO)
    bad = save_official(ref, tmp_path / "missing.pth", drop="transformer_decoder.layers.0.norm3.bias")
    with pytest.raises(ConversionError, match=r"missing.pth.*missing: transformer_decoder.layers.0.norm3.bias"):
        convert_faceformer(bad, dataset, tmp_path / "x", audio=AUDIO)


def test_wrong_sizes_and_subjects_are_errors(tmp_path):
    ref = Reference("vocaset", 40)
    path = save_official(ref, tmp_path / "v.pth")
    with pytest.raises(ConversionError, match="misshapen: audio_encoder"):  # the base encoder is expected
        convert_faceformer(path, "vocaset", tmp_path / "x")
    with pytest.raises(ConversionError, match="PPE.pe is not the periodic encoding of period 25"):
        convert_faceformer(path, "vocaset", tmp_path / "x", audio=AUDIO, period=25)
    with pytest.raises(ConversionError, match="8 training subjects; 2 subject names"):
        convert_faceformer(path, "vocaset", tmp_path / "x", audio=AUDIO, subjects=["a", "b"])
    (tmp_path / "junk.pth").write_text("not a checkpoint")
    with pytest.raises(ConversionError, match="junk.pth: not a checkpoint"):
        convert_faceformer(tmp_path / "junk.pth", "vocaset", tmp_path / "x")


def test_models_trained_here_keep_their_config_json(tmp_path):
    """The converters' fields (audio_align, subjects) are written only when set: a model trained here writes the
    config.json it wrote before they existed, and a converted one records them."""
    from avguide.models.checkpoint import save_checkpoint
    from avguide.models.faceformer import FaceFormer, FaceFormerConfig

    model = FaceFormer(FaceFormerConfig(n_vertices=10, n_subjects=2))
    keys = set(json.loads((save_checkpoint(model, tmp_path / "m") / "config.json").read_text()))
    assert "audio_align" not in keys and "subjects" not in keys and "motion_scale" in keys
    assert load_animator(tmp_path / "m").cfg.audio_align == "ours"
    model.cfg.subjects = ["a", "b"]
    assert json.loads((save_checkpoint(model, tmp_path / "n") / "config.json").read_text())["subjects"] == ["a", "b"]


@pytest.mark.slow
def test_avguide_convert_faceformer_command(tmp_path, capsys):
    """The command on a checkpoint of the public size (wav2vec2-base encoder, 5,023 vertices), and its error."""
    from avguide.cli import main
    from avguide.convert.faceformer import official_state_dict
    from avguide.models.faceformer import BASE_WAV2VEC2, FaceFormer, FaceFormerConfig

    torch.manual_seed(0)
    cfg = FaceFormerConfig(n_vertices=5023, n_subjects=8, fps=30, period=30, audio=BASE_WAV2VEC2)
    torch.save(official_state_dict(FaceFormer(cfg)), tmp_path / "vocaset.pth")
    command = ["convert", "faceformer", str(tmp_path / "vocaset.pth"), "--out"]
    assert main([*command, str(tmp_path / "m"), "--dataset", "vocaset"]) == 0
    model = load_animator(tmp_path / "m")
    assert model.cfg.subjects[0] == "FaceTalk_170725_00137_TA" and model.cfg.audio["hidden_size"] == 768
    assert main([*command, str(tmp_path / "b"), "--dataset", "biwi"]) == 1
    assert "8 training subjects; 6 subject names" in capsys.readouterr().err
