"""The auto-AVSR reader and its converter, without the published weights: checkpoints with the release's key names
and shapes (small widths, seeded values; the full size on the meta device) load strictly; relative-position
attention is its formula; the decoder is a torch pre-norm decoder; padding does not change the items' losses; an
over-fitted mini-batch decodes to its transcripts (characters, and word pieces when sentencepiece is installed);
the converter names what is wrong with a checkpoint or a vocabulary."""

import json
import math

import pytest
import torch
from torch import nn

from avguide.convert import ConversionError
from avguide.convert.autoavsr import RENAMES, config_from, convert_autoavsr, layout_of, rename
from avguide.data.text import VOCAB, SentencePieceVocabulary
from avguide.models.autoavsr import (
    AutoAVSR,
    AutoAVSRConfig,
    Decoder,
    RelPositionAttention,
    load_autoavsr,
    rel_shift,
)
from avguide.models.expert import Decoding, load_expert

try:
    import sentencepiece
except ImportError:
    sentencepiece = None

TINY = dict(
    d_model=16,
    n_heads=2,
    ffn_dim=32,
    encoder_layers=1,
    conv_kernel=3,
    decoder_layers=1,
    resnet_channels=(4, 8),
    resnet_blocks=1,
    fusion_dim=24,
    crop_size=16,
    dropout=0.0,
    attention_dropout=0.0,
)
SMALL = dict(d=16, heads=2, ffn=32, layers=2, kernel=3, dlayers=2, channels=(4, 4, 8, 8), blocks=2, fusion=24)
FULL = dict(
    d=768, heads=12, ffn=3072, layers=12, kernel=31, dlayers=6, channels=(64, 128, 256, 512), blocks=2, fusion=8192
)
SENTENCES = ["bin blue at f two now", "place red by g nine soon", "set white with p four again", "lay green in x"]


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---------------------------------------------------------------- the release's layout, written from its code


def release_shapes(modality, layout="release", vocab=5049, d=768, heads=12, ffn=3072, layers=12, kernel=31, dlayers=6,
                   channels=(64, 128, 256, 512), blocks=2, fusion=8192):  # fmt: skip
    """Key -> shape of an auto-AVSR checkpoint (ESPnet Encoder/Decoder, Conv3dResNet/Conv1dResNet, MLPHead, CTC)."""
    s = {}

    def bn(p, c):
        s.update({f"{p}.{n}": (c,) for n in ("weight", "bias", "running_mean", "running_var")})
        s[f"{p}.num_batches_tracked"] = ()

    def linear(p, o, i, bias=True):
        s[f"{p}.weight"] = (o, i)
        if bias:
            s[f"{p}.bias"] = (o,)

    def trunk(p, k2):
        cin = channels[0]
        for k, c in enumerate(channels):
            for b in range(blocks):
                q = f"{p}layer{k + 1}.{b}."
                s[q + "conv1.weight"], s[q + "conv2.weight"] = (c, cin, *k2), (c, c, *k2)
                bn(q + "bn1", c), bn(q + "bn2", c)
                if b == 0 and (k > 0 or cin != c):
                    s[q + "downsample.0.weight"] = (c, cin, *[1] * len(k2))
                    bn(q + "downsample.1", c)
                cin = c

    def front(p, kind):
        if kind == "video":
            s[p + "frontend3D.0.weight"] = (channels[0], 1, 5, 7, 7)
            bn(p + "frontend3D.1", channels[0])
            trunk(p + "trunk.", (3, 3))
        else:
            s[p + "trunk.conv1.weight"] = (channels[0], 1, 80)
            bn(p + "trunk.bn1", channels[0])
            trunk(p + "trunk.", (3,))

    def conformer(p):
        for i in range(layers):
            q = f"{p}encoders.{i}."
            for n in "qkv":
                linear(f"{q}self_attn.linear_{n}", d, d)
            linear(f"{q}self_attn.linear_out", d, d)
            linear(f"{q}self_attn.linear_pos", d, d, bias=False)
            s[q + "self_attn.pos_bias_u"] = s[q + "self_attn.pos_bias_v"] = (heads, d // heads)
            for ff in ("feed_forward", "feed_forward_macaron"):
                linear(f"{q}{ff}.w_1", ffn, d), linear(f"{q}{ff}.w_2", d, ffn)
            s[q + "conv_module.pointwise_cov1.weight"], s[q + "conv_module.pointwise_cov1.bias"] = (
                (2 * d, d, 1),
                (2 * d,),
            )
            s[q + "conv_module.depthwise_conv.weight"], s[q + "conv_module.depthwise_conv.bias"] = (d, 1, kernel), (d,)
            bn(q + "conv_module.norm", d)
            s[q + "conv_module.pointwise_cov2.weight"], s[q + "conv_module.pointwise_cov2.bias"] = (d, d, 1), (d,)
            for n in ("norm_ff", "norm_mha", "norm_ff_macaron", "norm_conv", "norm_final"):
                s[f"{q}{n}.weight"] = s[f"{q}{n}.bias"] = (d,)
        s[p + "after_norm.weight"] = s[p + "after_norm.bias"] = (d,)

    streams = {"av": [("encoder.", "video"), ("aux_encoder.", "audio")]}.get(modality, [("encoder.", modality)])
    for p, kind in streams:
        if layout == "release":
            front(p + "frontend.", kind)
            linear(p + "embed.0", d, channels[-1])
        else:
            front("frontend.", kind)
            linear("proj_encoder", d, channels[-1])
        conformer(p)
    if modality == "av":
        linear("fusion.fc1", fusion, 2 * d), linear("fusion.fc2", d, fusion)
        bn("fusion.bn1", fusion)
    s["decoder.embed.0.weight"] = (vocab, d)
    for i in range(dlayers):
        q = f"decoder.decoders.{i}."
        for att in ("self_attn", "src_attn"):
            for n in ("q", "k", "v", "out"):
                linear(f"{q}{att}.linear_{n}", d, d)
        linear(q + "feed_forward.w_1", ffn, d), linear(q + "feed_forward.w_2", d, ffn)
        for n in ("norm1", "norm2", "norm3"):
            s[f"{q}{n}.weight"] = s[f"{q}{n}.bias"] = (d,)
    s["decoder.after_norm.weight"] = s["decoder.after_norm.bias"] = (d,)
    linear("decoder.output_layer", vocab, d)
    linear("ctc.ctc_lo", vocab, d)
    return s


def release_state(modality, layout="release", vocab=40, seed=0, **sizes):
    """Seeded tensors of release_shapes (running variances positive, counters integers)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, shape in release_shapes(modality, layout, vocab, **{**SMALL, **sizes}).items():
        if k.endswith("num_batches_tracked"):
            out[k] = torch.tensor(7)
        elif k.endswith("running_var"):
            out[k] = 0.5 + torch.rand(shape, generator=g)
        else:
            out[k] = 0.1 * torch.randn(shape, generator=g)
    return out


@pytest.fixture
def spm_files(tmp_path):
    """A SentencePiece model and its units file as auto-AVSR's spm/train.sh writes them ("<unk> 1", then the sorted
    pieces of the encoded training text numbered from 2). A real model trained on SENTENCES when sentencepiece is
    installed; without it, units spelled out by hand and a .model the converter cannot check (decoding needs only
    the units)."""
    model, units = tmp_path / "spm" / "unigram40.model", tmp_path / "spm" / "unigram40_units.txt"
    model.parent.mkdir()
    if sentencepiece is not None:
        text = tmp_path / "input.txt"
        text.write_text("\n".join(s.upper() for s in SENTENCES * 20) + "\n")
        sentencepiece.SentencePieceTrainer.train(
            input=str(text), model_prefix=str(model.with_suffix("")), vocab_size=40, model_type="unigram",
            character_coverage=1.0, hard_vocab_limit=False,
        )  # fmt: skip
        sp = sentencepiece.SentencePieceProcessor(model_file=str(model))
        pieces = sorted({p for s in SENTENCES for p in sp.encode(s.upper(), out_type=str)})
    else:
        model.write_bytes(b"not checked without the sentencepiece package")
        pieces = sorted({"\u2581" + w.upper() for s in SENTENCES for w in s.split()})
    units.write_text("<unk> 1\n" + "".join(f"{p} {i}\n" for i, p in enumerate(pieces, 2)))
    return model, units


def save(state, path):
    torch.save(state, path)
    return path


# ---------------------------------------------------------------- loading the release's checkpoints


@pytest.mark.parametrize(
    "modality,layout",
    [("av", "release"), ("video", "release"), ("audio", "release"), ("video", "later"), ("audio", "later")],
)
def test_a_release_checkpoint_loads_strictly_at_a_small_width(tmp_path, spm_files, modality, layout):
    model_file, units = spm_files
    vocab = SentencePieceVocabulary(model_file, units)
    state = release_state(modality, layout, vocab=len(vocab))
    folder = convert_autoavsr(save(state, tmp_path / "ckpt.pth"), model_file, modality, tmp_path / "reader")
    reader = load_autoavsr(folder, map_location="cpu")
    ours = reader.state_dict()
    renamed = rename(state, RENAMES[(layout, modality)])
    assert set(ours) == set(renamed)
    assert all(torch.equal(ours[k], v) for k, v in renamed.items())
    assert reader.cfg.mode == modality and reader.cfg.d_model == 16 and reader.cfg.resnet_channels == (4, 4, 8, 8)
    assert reader.cfg.encoder_layers == 2 and reader.cfg.decoder_layers == 2 and reader.cfg.conv_kernel == 3
    assert isinstance(reader.vocab, SentencePieceVocabulary) and len(reader.vocab) == reader.cfg.vocab_size
    assert reader.decoding == Decoding(beam_size=40, ctc_weight=0.1)  # the release's eval.py
    assert {"tokenizer.model", "tokenizer_units.txt", "decoding.json"} <= {p.name for p in folder.iterdir()}
    assert json.loads((folder / "config.json").read_text())["vocab"] == "sentencepiece"
    again = load_expert(folder, map_location="cpu")  # the pipeline's one loader knows converted readers
    assert type(again) is AutoAVSR and again.decoding == reader.decoding


@pytest.mark.parametrize("modality,millions", [("video", 250.4), ("audio", 243.0), ("av", 444.0)])
def test_full_size_is_the_release_shape(modality, millions):
    """Every key and shape of the full-size release (on the meta device: nothing allocated); the README's sizes:
    250 M parameters visual-only, 243 M audio-only."""
    for layout in ("release", "later") if modality != "av" else ("release",):
        shapes = release_shapes(modality, layout, **FULL)
        state = {k: torch.empty(v, device="meta") for k, v in shapes.items()}
        assert layout_of(state, "x") == (layout, modality)
        cfg = config_from(state, layout, modality)
        assert cfg == AutoAVSRConfig(mode=modality, vocab="sentencepiece", vocab_size=5049)
        with torch.device("meta"):
            model = AutoAVSR(cfg)
        ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        assert ours == {k: tuple(v) for k, v in rename(shapes, RENAMES[(layout, modality)]).items()}
    assert round(sum(p.numel() for p in model.parameters()) / 1e6, 1) == millions


# ---------------------------------------------------------------- the parts against their definitions


def test_relative_position_attention_is_its_formula():
    torch.manual_seed(0)
    h, d, t = 2, 8, 5
    att = RelPositionAttention(h, d, 0.0).eval()
    x, lengths = torch.randn(2, t, d), torch.tensor([5, 3])
    valid = torch.arange(t)[None] < lengths[:, None]
    pos = torch.tensor([[math.sin(r / 10000 ** (2 * (m // 2) / d)) if m % 2 == 0 else
                         math.cos(r / 10000 ** (2 * (m // 2) / d)) for m in range(d)]
                        for r in range(t - 1, -t, -1)])  # fmt: skip
    got = att(x, pos, valid[:, None, None, :])
    dk = d // h
    q, k, v = att.linear_q(x), att.linear_k(x), att.linear_v(x)
    want = torch.zeros(2, t, d)
    for b in range(2):
        for i in range(t):
            heads = []
            for n in range(h):
                part = slice(n * dk, (n + 1) * dk)
                scores = []
                for j in range(int(lengths[b])):
                    rel = att.linear_pos(pos[t - 1 - (i - j)])[part]  # p_{i-j}
                    content = (q[b, i, part] + att.pos_bias_u[n]) @ k[b, j, part]
                    position = (q[b, i, part] + att.pos_bias_v[n]) @ rel
                    scores.append((content + position) / math.sqrt(dk))
                w = torch.softmax(torch.stack(scores), 0)
                heads.append((w[:, None] * v[b, : int(lengths[b]), part]).sum(0))
            want[b, i] = att.linear_out(torch.cat(heads))
    assert torch.allclose(got, want, atol=1e-5)
    x = torch.arange(4 * 7.0).view(4, 7)
    assert all(rel_shift(x)[i, j] == x[i, 3 - i + j] for i in range(4) for j in range(4))


def test_the_decoder_is_a_torch_pre_norm_decoder():
    torch.manual_seed(0)
    cfg = AutoAVSRConfig(**{**TINY, "decoder_layers": 2, "vocab_size": 11})
    ours = Decoder(cfg).eval()
    d = cfg.d_model
    layer = nn.TransformerDecoderLayer(d, cfg.n_heads, cfg.ffn_dim, 0.0, batch_first=True, norm_first=True,
                                       layer_norm_eps=1e-12)  # fmt: skip
    ref = nn.TransformerDecoder(layer, 2, norm=nn.LayerNorm(d, eps=1e-12)).eval()
    with torch.no_grad():
        for mine, theirs in zip(ours.decoders, ref.layers):
            for a, b in (("self_attn", theirs.self_attn), ("src_attn", theirs.multihead_attn)):
                att = getattr(mine, a)
                b.in_proj_weight.copy_(torch.cat([att.linear_q.weight, att.linear_k.weight, att.linear_v.weight]))
                b.in_proj_bias.copy_(torch.cat([att.linear_q.bias, att.linear_k.bias, att.linear_v.bias]))
                b.out_proj.load_state_dict(att.linear_out.state_dict())
            theirs.linear1.load_state_dict(mine.feed_forward.w_1.state_dict())
            theirs.linear2.load_state_dict(mine.feed_forward.w_2.state_dict())
            for n in ("norm1", "norm2", "norm3"):
                getattr(theirs, n).load_state_dict(getattr(mine, n).state_dict())
        ref.norm.load_state_dict(ours.after_norm.state_dict())
    ys, memory, lengths = torch.randint(0, 11, (2, 6)), torch.randn(2, 9, d), torch.tensor([9, 4])
    pe = torch.zeros(6, d)
    for p in range(6):
        for m in range(0, d, 2):
            pe[p, m], pe[p, m + 1] = math.sin(p / 10000 ** (m / d)), math.cos(p / 10000 ** (m / d))
    x = ours.embed[0](ys) * math.sqrt(d) + pe
    causal = torch.triu(torch.ones(6, 6, dtype=torch.bool), 1)
    h = ref(x, memory, tgt_mask=causal, memory_key_padding_mask=torch.arange(9)[None] >= lengths[:, None])
    assert torch.allclose(ours(ys, memory, lengths), ours.output_layer(h), atol=1e-5)


# ---------------------------------------------------------------- the whole reader


def tiny(mode="av", **kw):
    torch.manual_seed(0)
    return AutoAVSR(AutoAVSRConfig(mode=mode, **{**TINY, **kw}))


def batch(texts, frames, size=20, seed=0, extra=0):
    """Random clips of frames[k] frames (640 samples each), padded `extra` frames beyond the longest."""
    g = torch.Generator().manual_seed(seed)
    t = max(frames) + extra
    video, audio = torch.zeros(len(texts), t, size, size), torch.zeros(len(texts), t * 640)
    for b, n in enumerate(frames):
        video[b, :n] = torch.rand(n, size, size, generator=g)
        audio[b, : n * 640] = 0.1 * torch.randn(n * 640, generator=g)
    ids = [VOCAB.encode(s) for s in texts]
    tokens = torch.full((len(texts), max(map(len, ids))), VOCAB.pad)
    for b, s in enumerate(ids):
        tokens[b, : len(s)] = torch.tensor(s)
    n = torch.tensor(frames)
    return dict(video=video, video_lengths=n, audio=audio, audio_lengths=n * 640, tokens=tokens,
                token_lengths=torch.tensor([len(s) for s in ids]))  # fmt: skip


def item(b, k):
    n, m = int(b["video_lengths"][k]), int(b["token_lengths"][k])
    out = {key: v[k : k + 1] for key, v in b.items()}
    return {**out, "video": out["video"][:, :n], "audio": out["audio"][:, : n * 640], "tokens": out["tokens"][:, :m]}


@pytest.mark.parametrize("mode", ["av", "video", "audio"])
def test_padding_does_not_change_item_losses(mode):
    model = tiny(mode).eval()
    texts = ["bin blue", "a", "place red now"]
    b = batch(texts, [14, 9, 20])
    full = model.loss(**b, reduction="none")
    assert all(torch.isfinite(x).all() for x in full)
    for k in range(3):
        alone = model.loss(**item(b, k), reduction="none")
        for part in ("loss", "ctc", "ce"):
            assert torch.allclose(getattr(full, part)[k], getattr(alone, part)[0], atol=1e-5), (part, k)
    model.train()  # BatchNorm statistics over the valid positions only: more padding, the same training loss
    more = batch(texts, [14, 9, 20], extra=7)
    assert torch.allclose(model.loss(**b).loss, model.loss(**more).loss, atol=1e-5)


def test_gradient_reaches_the_video_and_not_its_padding():
    model = tiny("av").eval()
    b = batch(["bin blue", "set"], [12, 7])
    b["video"].requires_grad_(True)
    model.loss(**b).loss.backward()
    g = b["video"].grad
    assert torch.isfinite(g).all() and g[0].abs().sum() > 0 and g[1, :7].abs().sum() > 0 and g[1, 7:].abs().sum() == 0


def test_video_of_another_size_is_cropped_or_resized():
    model = tiny("video").eval()
    v = torch.rand(1, 6, 24, 24)
    centre = v[:, :, 4:20, 4:20]
    assert torch.allclose(model.video_features(v, torch.tensor([6])), model.video_features(centre, torch.tensor([6])))
    assert torch.isfinite(model.video_features(torch.rand(1, 6, 10, 10), torch.tensor([6]))).all()


def overfit(model, b, steps):
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        out = model.loss(**b)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    return model.eval()


def test_overfitted_minibatch_decodes_its_transcripts_in_characters():
    texts = ["bin blue", "set red at", "pin"]
    b = batch(texts, [16, 18, 10])
    model = overfit(tiny("video", ctc_weight=0.3), b, 110)
    inputs = {k: b[k] for k in ("video", "video_lengths", "audio", "audio_lengths")}
    assert model.transcribe(**inputs, beam_size=1) == texts
    assert model.transcribe(**inputs, beam_size=4) == texts


@pytest.mark.skipif(sentencepiece is None, reason="the sentencepiece package is not installed")
def test_overfitted_minibatch_decodes_its_transcripts_in_word_pieces(spm_files):
    vocab = SentencePieceVocabulary(*spm_files)
    assert vocab.decode(vocab.encode(SENTENCES[0])) == SENTENCES[0]
    texts = SENTENCES[:3]
    b = batch(texts, [30, 34, 36])  # frames for CTC: more than the pieces (and their repeats) of each text
    torch.manual_seed(0)
    model = AutoAVSR(
        AutoAVSRConfig(mode="video", vocab="sentencepiece", vocab_size=len(vocab), ctc_weight=0.3, **TINY), vocab
    )
    other = spm_files[1].with_name("other_units.txt")  # units that are not this model's pieces
    other.write_text("".join(f"{p.lower()} {i}\n" for i, p in enumerate(vocab.tokens[1:-1], 1)))
    with pytest.raises(ConversionError, match="not its units"):
        convert_autoavsr(spm_files[0].with_name("none.pth"), spm_files[0], "video", spm_files[0].parent, units=other)
    ids, lengths = model.retokenize(b["tokens"], b["token_lengths"])
    assert [vocab.decode(s[:n]) for s, n in zip(ids.tolist(), lengths.tolist())] == texts
    model = overfit(model, b, 110)
    inputs = {k: b[k] for k in ("video", "video_lengths", "audio", "audio_lengths")}
    assert model.transcribe(**inputs, beam_size=1) == texts
    assert model.transcribe(**inputs, beam_size=4) == texts


def test_word_pieces_decode_without_the_sentencepiece_package(tmp_path):
    units = tmp_path / "u_units.txt"
    units.write_text("<unk> 1\n' 2\nLD 3\n\u2581HELLO 4\n\u2581WOR 5\n")
    vocab = SentencePieceVocabulary(tmp_path / "u.model", units)
    assert len(vocab) == 7 and (vocab.blank, vocab.unk, vocab.sos, vocab.eos) == (0, 1, 6, 6) and vocab.upper
    assert vocab.decode([4, 1, 5, 3, 0, 6]) == "hello world"
    if sentencepiece is None:
        with pytest.raises(ImportError, match="pip install sentencepiece"):
            vocab.encode("hello")
    units.write_text("<unk> 1\nA 3\n")
    with pytest.raises(ValueError, match="line 2: expected 'piece 2'"):
        SentencePieceVocabulary(tmp_path / "u.model", units)


# ---------------------------------------------------------------- the converter's errors


def test_the_converter_names_what_is_wrong(tmp_path, spm_files):
    model_file, units = spm_files
    n = len(SentencePieceVocabulary(model_file, units))
    state = release_state("video", vocab=n)
    out = tmp_path / "reader"

    def convert(s, modality="video", spm=model_file, **kw):
        return convert_autoavsr(save(s, tmp_path / "ckpt.pth"), spm, modality, out, **kw)

    missing = dict(state)
    del missing["encoder.encoders.1.self_attn.pos_bias_v"]
    with pytest.raises(ConversionError, match=r"1 missing: encoder\.encoders\.1\.self_attn\.pos_bias_v"):
        convert(missing)
    with pytest.raises(ConversionError, match=r"1 unexpected: encoder\.extra"):
        convert({**state, "encoder.extra": torch.zeros(1)})
    bad = {**state, "decoder.decoders.0.norm2.weight": torch.zeros(5)}
    with pytest.raises(
        ConversionError, match=r"misshapen: decoder\.decoders\.0\.norm2\.weight \(5,\) \(expected \(16,\)\)"
    ):
        convert(bad)
    with pytest.raises(ConversionError, match="holds the visual-only reader .* not the audio-visual one"):
        convert(state, "av")
    with pytest.raises(ConversionError, match="holds the audio-visual reader .* not the audio-only one"):
        convert(release_state("av", vocab=n), "audio")
    with pytest.raises(ConversionError, match="no SentencePiece model file"):
        convert(state, spm=tmp_path / "nowhere.model")
    with pytest.raises(ConversionError, match="no units file"):
        convert(state, units=tmp_path / "nowhere_units.txt")
    with pytest.raises(ConversionError, match=f"make {n} outputs .* has {n + 3}"):
        convert(release_state("video", vocab=n + 3))
    with pytest.raises(ConversionError, match="not an auto-AVSR checkpoint"):
        convert({"w": torch.zeros(2)})
    with pytest.raises(ConversionError, match="modality 'lips'"):
        convert(state, "lips")
    assert not out.exists()
    lightning = {"state_dict": {"model." + k: v for k, v in state.items()}}  # the training code's own checkpoint
    assert load_autoavsr(convert(lightning), "cpu").cfg.mode == "video"


def test_avguide_convert_autoavsr_command(tmp_path, spm_files, capsys):
    from avguide.cli import main

    model_file, units = spm_files
    ckpt = save(release_state("video", vocab=len(SentencePieceVocabulary(model_file, units))), tmp_path / "vsr.pth")
    command = ["convert", "autoavsr", str(ckpt), "--spm", str(model_file), "--out", str(tmp_path / "judge")]
    assert main([*command, "--modality", "av"]) == 1
    assert "holds the visual-only reader" in capsys.readouterr().err
    assert main([*command, "--modality", "video"]) == 0
    assert load_autoavsr(tmp_path / "judge", "cpu").cfg.mode == "video"


@pytest.mark.slow
def test_the_pretrain_stage_trains_the_autoavsr_shaped_reader(tmp_path):
    """pretrain_expert.arch autoavsr: the pretrain_expert stage trains an AutoAVSR of params' `autoavsr` sizes on the
    2D corpus (augmentation, schedule, decoding settings as the expert's) and writes a reader folder that
    load_expert reads back as one, with a lower loss on the training clips than the same reader untrained; the
    judges stay of our architecture. A misspelt arch is an error naming the key."""
    from avguide.data.avcorpus import AVCorpus
    from avguide.data.avdataset import AVDataset, collate_av
    from avguide.data.synthetic2d import Synthetic2DConfig, build_av_corpus
    from avguide.models.expert import ExpertConfig
    from avguide.params import load_params
    from avguide.training.expert import _judge_settings, pretrain_expert, reader_config

    corpus = build_av_corpus(
        tmp_path / "synth2d",
        Synthetic2DConfig(seed=3, identities={"train": 2, "val": 1, "test": 1}, sentences_per_identity=2),
        progress=False,
    )
    params = load_params(profile="smoke")
    params["threads"] = 1
    params["prepare_2d"]["out"] = str(corpus)
    s = params["pretrain_expert"]
    s.update(out=str(tmp_path / "expert"), arch="autoavsr", warmup_steps=2, lr=1e-2, batch_size=2)
    s["autoavsr"] = {**TINY, "crop_size": 80, "dropout": 0.1}
    s["trainer"] = {**s["trainer"], "accelerator": "cpu", "max_epochs": 8}
    s["augment"] = {**s["augment"], "drop_audio_prob": 0.0, "drop_video_prob": 0.0, "noise_prob": 0.0}
    metrics = pretrain_expert(params, progress=False)
    assert {"av_cer", "audio_only_cer", "masked_audio_cer_true_video"} <= set(metrics)

    reader = load_expert(tmp_path / "expert" / "model", "cpu")
    assert isinstance(reader, AutoAVSR) and reader.cfg.mode == "av" and reader.cfg.d_model == TINY["d_model"]
    assert reader.decoding == Decoding(s["beam_size"], s["decode_ctc_weight"])
    torch.manual_seed(params["seed"])
    untrained = AutoAVSR(reader_config(s, "av", reader.cfg.fps)).eval()
    batch = collate_av([AVDataset(AVCorpus(corpus), "train")[k] for k in range(4)])
    inputs = (batch["video"], batch["video_lengths"], batch["audio"], batch["audio_lengths"])
    with torch.no_grad():
        trained = reader.loss(*inputs, batch["tokens"], batch["token_lengths"]).loss
        before = untrained.loss(*inputs, batch["tokens"], batch["token_lengths"]).loss
    assert trained < 0.8 * before, (float(trained), float(before))

    assert isinstance(reader_config(_judge_settings(s, "judge"), "video", 25.0), ExpertConfig)
    with pytest.raises(ValueError, match="pretrain_expert.arch"):
        reader_config({**s, "arch": "auto-avsr"}, "av", 25.0)
