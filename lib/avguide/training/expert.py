"""The `pretrain_expert` and `pretrain_judge` stages: the AV lip-reading expert and the visual-only judges, each
trained on the 2D corpus in its own stage (so that the pipeline can run them side by side, one core each).

They write `pretrain_expert.out` (data/models/expert)::

    model/            the AV expert (safetensors + config.json + decoding.json: beam_size, decode_ctc_weight)
    judge/, judge2/   the visual-only judges (each its own seed and size, the same decoding), for evaluation only
    checkpoints/      Lightning checkpoints (last.ckpt per model): an interrupted run resumes from them
    dvclive/<name>/   train/val loss and val CER curves of model, judge, judge2
    metrics.json      the expert's CER / WER on the held-out test identities (see `evaluate_readers`)
    metrics_<name>.json   a judge's (see `pretrain_judge`)

"audio-only" in the metrics is the AV expert with the video zeroed (it is trained with modality
dropout, so zeroed video is a state it knows), not a separate model.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import math
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader

from avguide.data.avcorpus import AVCorpus
from avguide.data.avdataset import AVDataset, collate_av, decode_corpus
from avguide.data.corpus import Corpus
from avguide.metrics import cer, wer
from avguide.models.augment import AugmentConfig, augment_av, mask_chunks
from avguide.models.autoavsr import AutoAVSR, AutoAVSRConfig
from avguide.models.expert import Decoding, Expert, ExpertConfig, Reader, ctc_greedy_decode, save_reader
from avguide.params import project_root, set_threads
from avguide.render.mouth import MouthView
from avguide.training.animator import make_trainer


class ExpertModule(pl.LightningModule):
    """Trains a reader (an Expert or an AutoAVSR) on collate_av batches: augmentation (training only), joint
    CTC/attention loss, AdamW with linear warm-up and cosine decay; logs train/{loss,ctc,ce}, val/{loss,ctc,ce},
    val/cer (greedy CTC)."""

    def __init__(
        self,
        model: Reader,
        lr: float = 1e-3,
        weight_decay: float = 0.01,
        warmup_steps: int = 100,
        augment: AugmentConfig | None = None,
        seed: int = 0,
    ):
        super().__init__()
        self.model, self.lr, self.weight_decay, self.warmup_steps = model, lr, weight_decay, warmup_steps
        self.augment = augment
        self.seed = seed
        self._val_refs: list[str] = []
        self._val_hyps: list[str] = []

    def _inputs(self, batch: dict, train: bool):
        mode = self.model.cfg.mode
        video = batch["video"] if mode != "audio" else None
        audio = batch["audio"] if mode != "video" else None
        if train and self.augment is not None:
            video, audio = augment_av(video, batch["video_lengths"], audio, batch["audio_lengths"], self.augment)
        return video, batch["video_lengths"], audio, batch["audio_lengths"]

    def training_step(self, batch, batch_idx):
        out = self.model.loss(*self._inputs(batch, True), batch["tokens"], batch["token_lengths"])
        n = len(batch["texts"])
        self.log("train/loss", out.loss, batch_size=n, prog_bar=True)
        self.log("train/ctc", out.ctc, batch_size=n)
        self.log("train/ce", out.ce, batch_size=n)
        return out.loss

    def validation_step(self, batch, batch_idx):
        inputs = self._inputs(batch, False)
        enc, n_enc = self.model.encode(*inputs)
        out = self.model.loss_of_encoding(enc, n_enc, batch["tokens"], batch["token_lengths"])
        n = len(batch["texts"])
        self.log("val/loss", out.loss, batch_size=n, prog_bar=True)
        self.log("val/ctc", out.ctc, batch_size=n)
        self.log("val/ce", out.ce, batch_size=n)
        self._val_hyps += ctc_greedy_decode(self.model.ctc_log_probs(enc), n_enc, self.model.vocab)
        self._val_refs += batch["texts"]

    def on_validation_epoch_end(self):
        if self._val_refs:
            self.log("val/cer", cer(self._val_refs, self._val_hyps), prog_bar=True)
        self._val_refs, self._val_hyps = [], []

    def configure_optimizers(self):
        opt = torch.optim.AdamW(self.model.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        warm = min(self.warmup_steps, total // 2)

        def factor(step):
            if step < warm:
                return (step + 1) / warm
            return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total - warm)))) * 0.95 + 0.05

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def _loaders(train: AVDataset, val: AVDataset | None, batch_size: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    tl = DataLoader(
        train,
        batch_size=batch_size,
        shuffle=True,
        collate_fn=collate_av,
        generator=g,
        drop_last=len(train) > batch_size,
    )
    vl = DataLoader(val, batch_size=batch_size, collate_fn=collate_av) if val is not None else None
    return tl, vl


def data_stamp(dataset: AVDataset) -> str:
    """A digest of the split's files (path, size, modification time): a checkpoint resumes only on the data
    it was trained on, so a rebuilt corpus starts afresh."""
    h = hashlib.sha256()
    for col in ("video", "wav"):
        for rel in dataset.rows[col]:
            st = (dataset.corpus.root / rel).stat()
            h.update(f"{rel}:{st.st_size}:{st.st_mtime_ns};".encode())
    return h.hexdigest()


EVAL_ONLY = ("beam_size", "decode_ctc_weight", "eval")  # settings that change no weight
TRAINING_CODE = (
    "avguide.models.expert",
    "avguide.models.autoavsr",
    "avguide.models.augment",
    "avguide.data.avdataset",
    "avguide.training.expert",
)  # the modules whose source decides what training does


def code_stamp() -> str:
    """A digest of the source of TRAINING_CODE: after a change to the code (DVC re-runs the stage) a checkpoint of
    the old code, even a finished one, is not resumed."""
    h = hashlib.sha256()
    for name in TRAINING_CODE:
        h.update(Path(importlib.import_module(name).__file__).read_bytes())
    return h.hexdigest()


def resume_stamp(
    cfg: ExpertConfig | AutoAVSRConfig, settings: dict, trainer_cfg: dict, seed: int, train: AVDataset
) -> str:
    """What a checkpoint must have been trained with to be resumed: the model, the training settings (not the
    evaluation's: changing the beam re-decodes, it does not retrain), the trainer, the seed, the data and the code."""
    training = {k: v for k, v in settings.items() if k not in EVAL_ONLY}
    return json.dumps(
        {
            "model": asdict(cfg),
            "settings": training,
            "trainer": trainer_cfg,
            "seed": seed,
            "data": data_stamp(train),
            "code": code_stamp(),
        },
        sort_keys=True,
        default=list,
    )


def reader_decoding(settings: dict) -> Decoding:
    """The decoding a reader trained with `settings` (params' pretrain_expert) is saved with."""
    return Decoding(beam_size=settings["beam_size"], ctc_weight=settings["decode_ctc_weight"])


def fit_reader(
    name: str,
    cfg: ExpertConfig | AutoAVSRConfig,
    settings: dict,
    train: AVDataset,
    val: AVDataset | None,
    out: Path,
    seed: int,
    trainer_cfg: dict,
    progress: bool = True,
    callbacks: list | None = None,
) -> Reader:
    """Train one reader (`cfg.mode`; an AutoAVSR for an AutoAVSRConfig, else an Expert) and write out/<name>/
    (weights, config, decoding settings). Resumes from
    out/checkpoints/<name>/last.ckpt when it was written with the same settings; other settings start afresh."""
    from dvclive.lightning import DVCLiveLogger

    pl.seed_everything(seed, workers=True)
    model = AutoAVSR(cfg) if isinstance(cfg, AutoAVSRConfig) else Expert(cfg)
    ckpt_dir = out / "checkpoints" / name
    fingerprint = resume_stamp(cfg, settings, trainer_cfg, seed, train)
    stamp = ckpt_dir / "settings.json"
    if ckpt_dir.exists() and (not stamp.is_file() or stamp.read_text() != fingerprint):
        shutil.rmtree(ckpt_dir)  # written for other settings: not resumable
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    stamp.write_text(fingerprint)
    last = ckpt_dir / "last.ckpt"
    resume = last if last.is_file() else None
    augment = AugmentConfig(**settings.get("augment", {}), fps=cfg.fps)
    module = ExpertModule(
        model,
        lr=settings["lr"],
        weight_decay=settings.get("weight_decay", 0.01),
        warmup_steps=settings.get("warmup_steps", 100),
        augment=augment,
        seed=seed,
    )
    logger = DVCLiveLogger(
        dir=str(out / "dvclive" / name), save_dvc_exp=False, dvcyaml=False, resume=resume is not None
    )
    checkpoint = ModelCheckpoint(
        dirpath=str(ckpt_dir), filename="last", save_top_k=1, every_n_epochs=1, enable_version_counter=False
    )
    trainer = make_trainer(
        trainer_cfg,
        out,
        logger=logger,
        enable_progress_bar=progress,
        callbacks=[checkpoint, *(callbacks or [])],
        num_sanity_val_steps=0,
    )
    tl, vl = _loaders(train, val, settings["batch_size"], seed)
    trainer.fit(module, tl, vl, ckpt_path=str(resume) if resume else None)
    if trainer.is_global_zero:
        save_reader(module.model, out / name, reader_decoding(settings))
    return module.model.eval()


# ------------------------------------------------------------------ evaluation


def _batches(dataset: AVDataset, batch_size: int):
    return DataLoader(dataset, batch_size=batch_size, collate_fn=collate_av)


@torch.no_grad()
def transcribe_dataset(
    model: Reader,
    dataset: AVDataset,
    beam_size: int | None = None,
    ctc_weight: float | None = None,
    video_fn=None,
    audio_fn=None,
    batch_size: int = 32,
) -> tuple[list[str], list[str]]:
    """(references, hypotheses) over a dataset, decoded with the reader's saved settings unless `beam_size` /
    `ctc_weight` are given; `video_fn(video, lengths)` / `audio_fn(audio, lengths)` alter the inputs first
    (None as a result drops that stream: zeroed)."""
    refs, hyps = [], []
    model.eval()
    for batch in _batches(dataset, batch_size):
        video, audio = batch["video"], batch["audio"]
        if video_fn is not None:
            video = video_fn(video, batch["video_lengths"])
        if audio_fn is not None:
            audio = audio_fn(audio, batch["audio_lengths"])
        hyps += model.transcribe(
            video, batch["video_lengths"], audio, batch["audio_lengths"], beam_size=beam_size, ctc_weight=ctc_weight
        )
        refs += batch["texts"]
    return refs, hyps


def mask_audio(fraction: float, chunk_s: float = 0.2, seed: int = 0, sample_rate: int = 16000):
    """An audio_fn zeroing `fraction` of each waveform in chunks of `chunk_s` (the same chunks on every call)."""

    def fn(audio, lengths):
        return mask_chunks(audio, lengths, fraction, int(chunk_s * sample_rate), torch.Generator().manual_seed(seed))

    return fn


def shuffle_video(seed: int = 0):
    """A video_fn permuting each clip's valid frames in time (the same permutation on every call)."""

    def fn(video, lengths):
        g = np.random.default_rng(seed)
        out = video.clone()
        for b, n in enumerate(lengths.tolist()):
            out[b, :n] = video[b, torch.as_tensor(g.permutation(n))]
        return out

    return fn


def zero_video(video, lengths):
    return torch.zeros_like(video)


def score(refs, hyps, prefix: str) -> dict:
    return {f"{prefix}_cer": cer(refs, hyps), f"{prefix}_wer": wer(refs, hyps)}


def evaluate_readers(expert: Reader, test: AVDataset, settings: dict) -> tuple[dict, dict]:
    """The expert's test-identity figures: av, audio_only (zeroed video) and the masked-audio pair (true vs
    time-shuffled video). Returns (metrics, examples)."""
    ev = settings["eval"]
    kw = dict(beam_size=settings["beam_size"], ctc_weight=settings["decode_ctc_weight"])
    metrics, examples = {}, {}
    masked = mask_audio(ev["masked_audio_fraction"], seed=ev["seed"])
    runs = {
        "av": {},
        "audio_only": {"video_fn": zero_video},
        "masked_audio": {"audio_fn": masked},
        "masked_audio_shuffled_video": {"audio_fn": masked, "video_fn": shuffle_video(ev["seed"])},
    }
    for key, fns in runs.items():
        refs, hyps = transcribe_dataset(expert, test, **kw, **fns)
        metrics.update(score(refs, hyps, key))
        examples[key] = list(zip(refs[:5], hyps[:5]))
    metrics["masked_audio_cer_true_video"] = metrics.pop("masked_audio_cer")
    metrics["masked_audio_wer_true_video"] = metrics.pop("masked_audio_wer")
    metrics["masked_audio_cer_shuffled_video"] = metrics.pop("masked_audio_shuffled_video_cer")
    metrics["masked_audio_wer_shuffled_video"] = metrics.pop("masked_audio_shuffled_video_wer")
    metrics["masked_audio_fraction"] = ev["masked_audio_fraction"]
    return metrics, examples


# ------------------------------------------------------------------ the judge on renders of the 3D corpus


def render_3d_split(
    corpus, split: str = "test", static: bool = False, size: int = 88, fps: float | None = None
) -> list[tuple[np.ndarray, str]]:
    """Grey mouth crops of every utterance of a 3D corpus split as the AV losses render them
    (avguide.render.mouth.MouthView), at `fps` (a reader's frame rate; default the corpus'): (T, H, W) in [0, 1]
    and the text. `static=True` renders the template for every frame (no motion)."""
    topo = corpus.topology
    if topo.albedo is None:
        raise ValueError(
            f"{corpus.root / 'topology.npz'}: no albedo; the judge-on-3D figures need the synthetic corpus"
        )
    view = MouthView(topo, size=size, chunk=16, rates=(corpus.fps, fps or corpus.fps))
    out = []
    for _, row in corpus.split(split).iterrows():
        template = corpus.templates[row["subject"]]
        verts = corpus.vertices(row["utterance"])
        if static:
            verts = np.broadcast_to(template, verts.shape)
        with torch.no_grad():
            frames = view.clip(torch.from_numpy(np.ascontiguousarray(verts, np.float32)), template)
        out.append((frames.numpy(), row["text"]))
    return out


@torch.no_grad()
def judge_renders(
    judge: Reader, clips: list[tuple[np.ndarray, str]], beam_size: int, ctc_weight: float, batch_size: int = 32
) -> tuple[list[str], list[str]]:
    refs, hyps = [], []
    for k in range(0, len(clips), batch_size):
        part = clips[k : k + batch_size]
        lengths = torch.tensor([len(v) for v, _ in part])
        video = torch.zeros(len(part), int(lengths.max()), *part[0][0].shape[1:])
        for b, (v, _) in enumerate(part):
            video[b, : len(v)] = torch.from_numpy(v)
        hyps += judge.transcribe(video, lengths, beam_size=beam_size, ctc_weight=ctc_weight)
        refs += [t for _, t in part]
    return refs, hyps


# ------------------------------------------------------------------ the stage


ARCHS = ("expert", "autoavsr")


def reader_config(settings: dict, mode: str, fps: float) -> ExpertConfig | AutoAVSRConfig:
    """The reader `settings` (params' pretrain_expert, or a judge's) describe: `arch` "expert" (the default), an
    ExpertConfig of `model`; "autoavsr", an AutoAVSRConfig of `autoavsr` (the release's architecture, our
    characters)."""
    arch = settings.get("arch", "expert")
    if arch not in ARCHS:
        raise ValueError(f"params pretrain_expert.arch must be one of {ARCHS}; found {arch!r}")
    if arch == "autoavsr":
        return AutoAVSRConfig(mode=mode, fps=fps, ctc_weight=settings["ctc_weight"], **settings["autoavsr"])
    return ExpertConfig(mode=mode, fps=fps, ctc_weight=settings["ctc_weight"], **settings["model"])


def judges(settings: dict) -> list[str]:
    """The visual-only judges of params' pretrain_expert: `judge`, and `judge2` when it is configured."""
    return [name for name in ("judge", "judge2") if name in settings]


def _judge_settings(s: dict, name: str = "judge") -> dict:
    j = s[name]  # a judge is always of our architecture (`arch` applies to the expert)
    return {**s, "arch": "expert", "model": j["model"], "augment": {**s["augment"], **j.get("augment", {})}}


def _datasets(params: dict, splits: tuple[str, ...], progress: bool):
    corpus = AVCorpus(project_root() / params["prepare_2d"]["out"])
    start = time.perf_counter()
    clips = decode_corpus(corpus, splits=splits, progress=progress)
    decode_s = time.perf_counter() - start
    fps = float(corpus.manifest["fps"].iloc[0])
    return [AVDataset(corpus, split, clips) for split in splits], fps, decode_s


def _write(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=1) + "\n")


def pretrain_expert(params: dict, progress: bool = True) -> dict:
    """The `pretrain_expert` stage: train the AV expert with params['pretrain_expert'] into its `out`/model and write
    metrics.json and examples.json (`evaluate_readers`: audio-visual, audio-only and the masked-audio pair)."""
    set_threads(params)
    s = params["pretrain_expert"]
    out = project_root() / s["out"]
    out.mkdir(parents=True, exist_ok=True)
    (train, val, test), fps, decode_s = _datasets(params, ("train", "val", "test"), progress)
    start = time.perf_counter()
    expert = fit_reader(
        "model", reader_config(s, "av", fps), s, train, val, out, params["seed"], s["trainer"], progress
    )
    train_s = time.perf_counter() - start
    start = time.perf_counter()
    metrics, examples = evaluate_readers(expert, test, s)
    metrics.update(
        decode_s=round(decode_s, 1),
        train_s=round(train_s, 1),
        eval_s=round(time.perf_counter() - start, 1),
        n_test=len(test),
    )
    _write(out / "metrics.json", metrics)
    _write(out / "examples.json", examples)
    return metrics


def pretrain_judge(params: dict, name: str, progress: bool = True) -> dict:
    """The `pretrain_judge@<name>` stage: train the visual-only judge `name` (`judge` or `judge2` of
    params['pretrain_expert']: its own seed and shape, the expert's training settings otherwise) into
    `out`/<name>, and write `out`/metrics_<name>.json: its CER / WER on the 2D test identities (`video_only_*`)
    and, with eval.judge_3d, on mouth renders of the 3D test subjects' ground truth and static template
    (`cer_3d_*`, `wer_3d_*`); examples of each in `out`/examples_<name>.json."""
    set_threads(params)
    s = params["pretrain_expert"]
    if name not in judges(s):
        raise KeyError(f"params pretrain_expert: no judge {name!r}; judges: {judges(s)}")
    js = _judge_settings(s, name)
    out = project_root() / s["out"]
    out.mkdir(parents=True, exist_ok=True)
    (train, val, test), fps, decode_s = _datasets(params, ("train", "val", "test"), progress)
    start = time.perf_counter()
    judge = fit_reader(
        name,
        reader_config(js, "video", fps),
        js,
        train,
        val,
        out,
        s[name]["seed"],
        {**s["trainer"], **s[name].get("trainer", {})},
        progress,
    )
    train_s = time.perf_counter() - start
    start = time.perf_counter()
    kw = dict(beam_size=s["beam_size"], ctc_weight=s["decode_ctc_weight"])
    refs, hyps = transcribe_dataset(judge, test, **kw)
    metrics, examples = score(refs, hyps, "video_only"), {"video_only": list(zip(refs[:5], hyps[:5]))}
    if s["eval"]["judge_3d"]:
        corpus3d = Corpus(project_root() / params["prepare"]["out"])
        for key, static in (("ground_truth", False), ("static_template", True)):
            refs, hyps = judge_renders(judge, render_3d_split(corpus3d, "test", static=static, fps=judge.cfg.fps), **kw)
            metrics[f"cer_3d_{key}"], metrics[f"wer_3d_{key}"] = cer(refs, hyps), wer(refs, hyps)
            examples[f"3d_{key}"] = list(zip(refs[:5], hyps[:5]))
    metrics.update(
        decode_s=round(decode_s, 1),
        train_s=round(train_s, 1),
        eval_s=round(time.perf_counter() - start, 1),
        n_test=len(test),
    )
    _write(out / f"metrics_{name}.json", metrics)
    _write(out / f"examples_{name}.json", examples)
    return metrics
