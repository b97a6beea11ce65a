"""Lightning training of an animator: DDP over two CPU processes keeps the ranks identical; resume."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch.utils.data import DataLoader

from avguide.data.dataset import collate
from avguide.models.faceformer import FaceFormer, FaceFormerConfig
from avguide.training.animator import AnimatorModule, make_trainer

V = 30


def items(n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for k in range(n):
        frames = 8 + k % 4
        out.append(
            dict(
                utterance=f"u{k}",
                subject=f"s{k % 2}",
                subject_id=k % 2 - (k == n - 1),  # one unseen
                audio=0.1 * torch.randn(frames * 640, generator=g),
                vertices=0.01 * torch.randn(frames, V, 3, generator=g),
                template=torch.zeros(V, 3),
                text="a",
                tokens=torch.tensor([4]),
            )
        )
    return out


def tiny_model():
    torch.manual_seed(0)
    return FaceFormer(FaceFormerConfig(n_vertices=V, n_subjects=2, period=5, max_frames=50, dropout=0.0))


@pytest.mark.slow
def test_ddp_two_cpu_processes_end_with_identical_weights(tmp_path):
    """Two CPU processes, gloo: after a few steps both ranks hold the same weights, and they moved."""
    worker = Path(__file__).with_name("ddp_worker.py")
    run = subprocess.run(
        [sys.executable, str(worker), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    assert run.returncode == 0, run.stderr[-3000:]
    rank0, rank1 = (load_file(tmp_path / f"rank{r}.safetensors") for r in (0, 1))
    before = tiny_model().state_dict()
    assert rank0.keys() == rank1.keys()
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)
    assert any(not torch.equal(rank0[k], before[k]) for k in rank0)


def test_resume_continues_step_count_and_optimizer_state(tmp_path):
    loader = DataLoader(items(), batch_size=2, collate_fn=collate)
    common = dict(logger=False, enable_progress_bar=False)
    first = make_trainer({"accelerator": "cpu", "devices": 1, "max_steps": 4}, tmp_path, **common)
    first.fit(AnimatorModule(tiny_model(), lr=1e-3), loader)
    ckpt = next((tmp_path / "checkpoints").glob("*.ckpt"))
    second = make_trainer({"accelerator": "cpu", "devices": 1, "max_steps": 6}, tmp_path / "again", **common)
    module = AnimatorModule(tiny_model(), lr=1e-3)
    second.fit(module, loader, ckpt_path=ckpt)
    assert first.global_step == 4 and second.global_step == 6
    adam_step = next(iter(second.optimizers[0].state.values()))["step"]
    assert int(adam_step) == 6  # the optimizer's moments came back with the weights


@pytest.fixture(scope="module")
def tiny_corpus(tmp_path_factory):
    from avguide.data.synthetic import SyntheticConfig, build_corpus

    return build_corpus(
        tmp_path_factory.mktemp("corpus"),
        SyntheticConfig(seed=2, subjects={"train": 2, "val": 1, "test": 1}, sentences_per_subject=2),
        progress=False,
    )


def tiny_params(corpus, out):
    return {
        "seed": 0,
        "threads": 1,
        "prepare": {"out": str(corpus)},
        "train": {
            "out": str(out),
            "batch_size": 2,
            "lr": 1e-3,
            "trainer": {"accelerator": "cpu", "devices": 1, "max_epochs": 1, "log_every_n_steps": 1},
            "faceformer": {"feature_dim": 32, "period": 25},
            "codetalker": {"epochs": [1, 1], "feature_dim": 32, "vq_dim": 32, "n_codes": 16},
        },
    }


@pytest.mark.parametrize("animator", ["faceformer", "codetalker"])
def test_train_stage_writes_model_and_metrics(tiny_corpus, tmp_path, animator):
    from avguide.models.checkpoint import load_checkpoint
    from avguide.models.registry import ANIMATORS
    from avguide.training.run import train_animator

    metrics = train_animator(tiny_params(tiny_corpus, tmp_path / "models"), animator, progress=False)
    assert set(metrics) == {"LVE", "MVE", "FDD", "static_template_LVE", "train_s"}
    assert all(np.isfinite(v) for v in metrics.values()) and metrics["static_template_LVE"] > 0
    folder = tmp_path / "models" / animator
    assert json.loads((folder / "metrics.json").read_text()) == metrics
    model = load_checkpoint(*ANIMATORS[animator], folder / "model")
    assert model.cfg.n_subjects == 2 and model.cfg.feature_dim == 32
    if animator == "codetalker":  # both stages ran and logged
        assert (folder / "dvclive" / "stage1" / "plots" / "metrics" / "train" / "loss.tsv").is_file()
        assert (folder / "dvclive" / "plots" / "metrics" / "train" / "loss.tsv").is_file()


def test_guided_fine_tuning_from_the_baseline(tiny_corpus, tmp_path):
    """Stage 2 of the paper on a tiny corpus: the baseline fine-tuned with MSE + lip MSE + L_av through the
    renderer and a (tiny, untrained) expert; the model moves, the gradient diagnostics are logged."""
    from avguide.models.checkpoint import load_checkpoint, save_checkpoint
    from avguide.models.expert import Expert, ExpertConfig
    from avguide.models.registry import ANIMATORS
    from avguide.training.guide import guide_animator
    from avguide.training.run import train_animator

    params = tiny_params(tiny_corpus, tmp_path / "models")
    train_animator(params, "faceformer", progress=False)
    torch.manual_seed(0)
    save_checkpoint(
        Expert(
            ExpertConfig(
                d_model=32,
                n_heads=2,
                ffn_dim=64,
                conformer_layers=1,
                conv_kernel=5,
                stem_channels=8,
                resnet_channels=(8, 16),
            )
        ),
        tmp_path / "expert-3d" / "model",
    )
    params["guide"] = {
        "expert_out": str(tmp_path / "expert-3d"),
        "critic_out": str(tmp_path / "critic"),
        "epochs": 1,
        "lr": 1e-3,
        "expert_lr_joint": 1e-4,
        "calibration_batches": 1,
        "render_size": 44,
        "weights": {"avguide": {"rlv": 1.0, "term": "reader", "joint": True, "audio_mask": 0.5, "grad_ratio": 0.5}},
    }
    metrics = guide_animator(params, "faceformer", "avguide", seed=3, progress=False)
    assert np.isfinite(metrics["LVE"]) and metrics["static_template_LVE"] > 0
    assert metrics["weight"] == pytest.approx(0.5 * metrics["grad_lip_vertex"] / metrics["grad_lip_term_unit"])
    run = tmp_path / "models" / "faceformer-avguide-seed3"
    curves = run / "dvclive" / "plots" / "metrics" / "train"
    for name in (
        "loss",
        "mse",
        "rlv",
        "ctc",
        "ce",
        "term",
        "grad_lip_vertex",
        "grad_lip_term",
        "cos_term",
        "ratio_term",
    ):
        assert (curves / f"{name}.tsv").is_file(), name
    base = load_checkpoint(*ANIMATORS["faceformer"], tmp_path / "models" / "faceformer" / "model")
    tuned = load_checkpoint(*ANIMATORS["faceformer"], run / "model")
    assert not torch.equal(base.motion_out.weight, tuned.motion_out.weight)


def test_guided_fine_tuning_with_an_auto_avsr_reader(tiny_corpus, tmp_path):
    """guide.expert_out may hold a converted auto-AVSR reader (here a tiny one of that shape): the paper's term
    and the placebo read the renders with it as with our expert."""
    from avguide.models.autoavsr import AutoAVSR, AutoAVSRConfig, save_autoavsr
    from avguide.models.checkpoint import load_checkpoint
    from avguide.models.registry import ANIMATORS
    from avguide.training.guide import guide_animator
    from avguide.training.run import train_animator

    params = tiny_params(tiny_corpus, tmp_path / "models")
    train_animator(params, "faceformer", progress=False)
    torch.manual_seed(0)
    tiny = dict(d_model=16, n_heads=2, ffn_dim=32, encoder_layers=1, conv_kernel=3, decoder_layers=1)
    reader = AutoAVSR(AutoAVSRConfig(mode="av", resnet_channels=(4, 8), resnet_blocks=1, fusion_dim=24, **tiny))
    save_autoavsr(reader, tmp_path / "expert-3d" / "model")
    reading = {"rlv": 1.0, "term": "reader", "audio_mask": 0.5, "grad_ratio": 0.5}
    params["guide"] = {
        "expert_out": str(tmp_path / "expert-3d"),
        "epochs": 1,
        "lr": 1e-3,
        "expert_lr_joint": 1e-4,
        "calibration_batches": 1,
        "render_size": 88,  # the release reads 88 px crops unpooled
        "weights": {"avguide": {**reading, "joint": True}, "placebo": {**reading, "reader": "random"}},
    }
    base = load_checkpoint(*ANIMATORS["faceformer"], tmp_path / "models" / "faceformer" / "model")
    for loss in ("avguide", "placebo"):
        metrics = guide_animator(params, "faceformer", loss, seed=3, progress=False)
        assert np.isfinite(metrics["LVE"]) and metrics["weight"] > 0, loss
        tuned = load_checkpoint(*ANIMATORS["faceformer"], tmp_path / "models" / f"faceformer-{loss}-seed3" / "model")
        assert not torch.equal(base.motion_out.weight, tuned.motion_out.weight), loss


def test_finetune_expert_starts_from_guide_expert_start(tiny_corpus, tmp_path):
    """guide.expert_start: the reader finetune_expert fine-tunes on 3D renders (e.g. a converted auto-AVSR reader)
    instead of pretrain_expert's; the result is a reader folder of the same kind."""
    from avguide.models.autoavsr import AutoAVSR, AutoAVSRConfig
    from avguide.models.expert import load_expert, save_reader
    from avguide.training.guide import finetune_expert

    torch.manual_seed(0)
    tiny = dict(d_model=16, n_heads=2, ffn_dim=32, encoder_layers=1, conv_kernel=3, decoder_layers=1)
    reader = AutoAVSR(AutoAVSRConfig(mode="av", resnet_channels=(4, 8), resnet_blocks=1, fusion_dim=24, **tiny))
    save_reader(reader, tmp_path / "avsr")
    params = tiny_params(tiny_corpus, tmp_path / "models")
    params["pretrain_expert"] = {
        "out": str(tmp_path / "nowhere"),  # not read
        "batch_size": 2,
        "augment": {},
        "trainer": {"accelerator": "cpu", "devices": 1, "log_every_n_steps": 1},
        "eval": {"masked_audio_fraction": 0.7},
    }
    params["guide"] = {
        "expert_out": str(tmp_path / "expert-3d"),
        "expert_start": str(tmp_path / "avsr"),
        "expert_epochs": 1,
        "expert_lr": 1e-3,
        "expert_warmup_steps": 1,
        "render_size": 88,
    }
    metrics = finetune_expert(params, progress=False)
    assert "before_cer" in metrics and "after_cer" in metrics
    tuned = load_expert(tmp_path / "expert-3d" / "model", "cpu")
    assert isinstance(tuned, AutoAVSR)
    assert not torch.equal(tuned.ctc.ctc_lo.weight, reader.ctc.ctc_lo.weight)


def test_a_converted_faceformer_is_fine_tuned_with_guidance(tiny_corpus, tmp_path):
    """A published FaceFormer after `avguide convert` (here BIWI's layout and audio alignment: two audio features
    a frame) trains under the guide stage from guide.start: its weights move and it still predicts every frame."""
    from avguide.convert.faceformer import convert_faceformer, official_state_dict
    from avguide.data.corpus import Corpus
    from avguide.data.dataset import TalkingFaceDataset
    from avguide.models.faceformer import FaceFormer, FaceFormerConfig
    from avguide.models.registry import load_animator
    from avguide.training.guide import guide_animator

    corpus = Corpus(tiny_corpus)
    subjects = TalkingFaceDataset(corpus, "train").train_subjects
    from conftest import SMALL_BASE_AUDIO as audio

    torch.manual_seed(0)
    n_vertices = len(corpus.templates[subjects[0]])
    public = FaceFormer(FaceFormerConfig(n_vertices, len(subjects), feature_dim=128, audio=audio))
    torch.save(official_state_dict(public), tmp_path / "biwi.pth")
    convert_faceformer(tmp_path / "biwi.pth", "biwi", tmp_path / "converted", subjects=subjects[::-1], audio=audio)
    params = tiny_params(tiny_corpus, tmp_path / "models")
    params["guide"] = {
        "start": {"faceformer": str(tmp_path / "converted")},
        "epochs": 1,
        "lr": 1e-3,
        "expert_lr_joint": 1e-4,
        "calibration_batches": 1,
        "weights": {"mse+rlv": {"mse": 1.0, "rlv": 1.0}},
    }
    metrics = guide_animator(params, "faceformer", "mse+rlv", seed=0, progress=False)
    tuned = load_animator(tmp_path / "models" / "faceformer-mse+rlv-seed0" / "model")
    start = load_animator(tmp_path / "converted")
    assert tuned.cfg.audio_align == "biwi" and np.isfinite(metrics["LVE"])
    assert not torch.equal(tuned.motion_out.weight, start.motion_out.weight)


def test_guide_start_fine_tunes_the_given_folder(tiny_corpus, tmp_path):
    """guide.start: the guide stage fine-tunes the model folder given (e.g. a converted published checkpoint)
    instead of the baseline; one whose styles are other subjects than the corpus' is refused, naming both."""
    from avguide.data.corpus import Corpus
    from avguide.data.dataset import TalkingFaceDataset
    from avguide.models.checkpoint import load_checkpoint, save_checkpoint
    from avguide.models.registry import ANIMATORS
    from avguide.training.guide import guide_animator
    from avguide.training.run import train_animator

    params = tiny_params(tiny_corpus, tmp_path / "models")
    train_animator(params, "faceformer", progress=False)
    start = load_checkpoint(*ANIMATORS["faceformer"], tmp_path / "models" / "faceformer" / "model")
    with torch.no_grad():
        start.motion_out.bias.add_(0.01)
    start.cfg.subjects = TalkingFaceDataset(Corpus(tiny_corpus), "train").train_subjects
    save_checkpoint(start, tmp_path / "converted")
    params["guide"] = {
        "start": {"faceformer": str(tmp_path / "converted")},
        "epochs": 1,
        "lr": 0.0,  # no step: the result is the starting model
        "expert_lr_joint": 1e-4,
        "calibration_batches": 1,
        "weights": {"mse": {"mse": 1.0}},
    }
    guide_animator(params, "faceformer", "mse", seed=0, progress=False)
    tuned = load_checkpoint(*ANIMATORS["faceformer"], tmp_path / "models" / "faceformer-mse-seed0" / "model")
    assert torch.equal(tuned.motion_out.bias, start.motion_out.bias)
    start.cfg.subjects = ["x", "y"]
    save_checkpoint(start, tmp_path / "converted")
    with pytest.raises(ValueError, match=r"converted: the model's styles are the subjects \['x', 'y'\]"):
        guide_animator(params, "faceformer", "mse", seed=0, progress=False)


@pytest.mark.parametrize("animator", ["faceformer", "codetalker"])
def test_guidance_from_the_start_trains_as_the_train_stage(tiny_corpus, tmp_path, animator):
    """A `from_start` setting trains the animator from its initialisation on train's schedule (CodeTalker's
    VQ-VAE first, without the term): with the vertex loss alone and the train stage's seed it gives the baseline's
    weights exactly, not the baseline fine-tuned."""
    from avguide.models.checkpoint import load_checkpoint
    from avguide.models.registry import ANIMATORS
    from avguide.training.guide import guide_animator
    from avguide.training.run import train_animator

    params = tiny_params(tiny_corpus, tmp_path / "models")
    train_animator(params, animator, progress=False)
    params["guide"] = {
        "epochs": 1,
        "lr": 1e-3,
        "expert_lr_joint": 1e-4,
        "calibration_batches": 1,
        "weights": {"mse-start": {"mse": 1.0, "from_start": True}, "mse": {"mse": 1.0}},
    }
    base = load_checkpoint(*ANIMATORS[animator], tmp_path / "models" / animator / "model").state_dict()
    for loss, same in (("mse-start", True), ("mse", False)):
        guide_animator(params, animator, loss, seed=params["seed"], progress=False)
        run = tmp_path / "models" / f"{animator}-{loss}-seed{params['seed']}" / "model"
        tuned = load_checkpoint(*ANIMATORS[animator], run).state_dict()
        assert all(torch.equal(base[k], tuned[k]) for k in base) == same, loss


@pytest.mark.slow
def test_training_is_exact_on_one_processor_and_close_across_processors(tmp_path):
    """The same seed trains the same weights byte for byte on one machine. Across processors it cannot: MKL's
    matrix products and vector maths, oneDNN's convolutions and torch's vector kernels each take a code path per
    processor, rounding differently (the corpora pin MKL; training would pay for it in every product). Emulating
    an AVX2-only processor and MKL's compatible path here, five Adam steps (lr 1e-3, so a weight moves by up to
    5e-3) leave every weight within 1e-4 of this processor's (3.2e-5 measured)."""
    probe = Path(__file__).parent / "train_probe.py"
    settings = {
        "here": {},
        "again": {},
        "avx2": {"MKL_ENABLE_INSTRUCTIONS": "AVX2", "ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"},
        "mkl_compatible": {"MKL_CBWR": "COMPATIBLE"},
    }
    weights = {}
    for name, env in settings.items():
        subprocess.run([sys.executable, str(probe), str(tmp_path / name)], env={**os.environ, **env}, check=True)
        weights[name] = load_file(tmp_path / name)
    here = weights.pop("here")
    assert all(torch.equal(here[k], weights["again"][k]) for k in here)
    for name in ("avx2", "mkl_compatible"):
        assert max((here[k] - weights[name][k]).abs().max().item() for k in here) < 1e-4, name


@pytest.mark.parametrize("animator", ["faceformer", "codetalker"])
def test_a_saved_animator_records_its_speech_encoder_folder_as_params_give_it(
    tiny_corpus, tmp_path, monkeypatch, animator
):
    """train.<animator>.pretrained_audio, relative to the project root as every params path: the encoder's weights
    come from that folder, and the saved config records the relative path, not where the project happens to be, so
    the same training writes the same bytes in any checkout."""
    import avguide.training.run as run
    from avguide.data.corpus import Corpus
    from avguide.models.checkpoint import save_checkpoint
    from avguide.training.audio import speech_model

    torch.manual_seed(1)
    ctc = speech_model({"hidden_size": 32, "intermediate_size": 64})
    ctc.save_pretrained(tmp_path / "models" / "audio", safe_serialization=True)
    monkeypatch.setattr(run, "project_root", lambda: tmp_path)
    settings = dict(tiny_params(tiny_corpus, tmp_path)["train"][animator], pretrained_audio="models/audio")
    model = run.build_animator(animator, settings, Corpus(tiny_corpus))
    q = model.audio_encoder.wav2vec2.encoder.layers[0].attention.q_proj.weight
    assert torch.equal(q, ctc.wav2vec2.encoder.layers[0].attention.q_proj.weight)
    save_checkpoint(model, tmp_path / "saved")
    assert json.loads((tmp_path / "saved" / "config.json").read_text())["pretrained_audio"] == "models/audio"
