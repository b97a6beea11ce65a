"""The `pretrain_expert` stage: the AV lip-reading expert and the visual-only judge, trained on the 2D corpus.

Writes `pretrain_expert.out` (data/models/expert)::

    model/            the AV expert (safetensors + config.json + decoding.json: beam_size, decode_ctc_weight)
    judge/            the visual-only judge (its own seed and size, the same decoding), used only for evaluation
    checkpoints/      Lightning checkpoints (last.ckpt per model): an interrupted run resumes from them
    dvclive/{model,judge}/   train/val loss and val CER curves
    metrics.json      CER / WER on the held-out test identities (see `evaluate_readers`)

"audio-only" in the metrics is the AV expert with the video zeroed (it is trained with modality
dropout, so zeroed video is a state it knows), not a separate model.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import math
import shutil
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
from avguide.models.expert import Decoding, Expert, ExpertConfig, ctc_greedy_decode, load_expert, save_reader
from avguide.params import project_root
from avguide.render.mouth import MouthView
from avguide.training.animator import make_trainer


class ExpertModule(pl.LightningModule):
    """Trains an Expert on collate_av batches: augmentation (training only), joint CTC/attention loss,
    AdamW with linear warm-up and cosine decay; logs train/{loss,ctc,ce}, val/{loss,ctc,ce}, val/cer (greedy CTC)."""

    def __init__(
        self,
        model: Expert,
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
        self._val_hyps += ctc_greedy_decode(self.model.ctc_log_probs(enc), n_enc)
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


class ThreadsFromEpoch(pl.Callback):
    """Train with `threads` torch threads from epoch `epoch` (0-based) on: the expert takes the judge's core once
    the judge is done. A fixed epoch, not "when the judge's process ends": the thread count changes the floats
    (summation order), so a switch that hung on timing would make training irreproducible."""

    def __init__(self, epoch: int, threads: int):
        self.epoch, self.threads = epoch, threads

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch >= self.epoch:
            torch.set_num_threads(self.threads)


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


def resume_stamp(cfg: ExpertConfig, settings: dict, trainer_cfg: dict, seed: int, train: AVDataset) -> str:
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
    cfg: ExpertConfig,
    settings: dict,
    train: AVDataset,
    val: AVDataset | None,
    out: Path,
    seed: int,
    trainer_cfg: dict,
    progress: bool = True,
    callbacks: list | None = None,
) -> Expert:
    """Train one reader (`cfg.mode`) and write out/<name>/ (weights, config, decoding settings). Resumes from
    out/checkpoints/<name>/last.ckpt when it was written with the same settings; other settings start afresh."""
    from dvclive.lightning import DVCLiveLogger

    pl.seed_everything(seed, workers=True)
    model = Expert(cfg)
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
    model: Expert,
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


def evaluate_readers(expert: Expert, judge: Expert, test: AVDataset, settings: dict) -> tuple[dict, dict]:
    """Test-identity figures: av, audio_only (the expert with zeroed video), video_only (the judge), and the
    masked-audio pair (true vs time-shuffled video). Returns (metrics, examples)."""
    ev = settings["eval"]
    kw = dict(beam_size=settings["beam_size"], ctc_weight=settings["decode_ctc_weight"])
    metrics, examples = {}, {}
    runs = {"av": (expert, {}), "audio_only": (expert, {"video_fn": zero_video}), "video_only": (judge, {})}
    masked = mask_audio(ev["masked_audio_fraction"], seed=ev["seed"])
    runs["masked_audio"] = (expert, {"audio_fn": masked})
    runs["masked_audio_shuffled_video"] = (expert, {"audio_fn": masked, "video_fn": shuffle_video(ev["seed"])})
    for key, (model, fns) in runs.items():
        refs, hyps = transcribe_dataset(model, test, **kw, **fns)
        metrics.update(score(refs, hyps, key))
        examples[key] = list(zip(refs[:5], hyps[:5]))
    metrics["masked_audio_cer_true_video"] = metrics.pop("masked_audio_cer")
    metrics["masked_audio_wer_true_video"] = metrics.pop("masked_audio_wer")
    metrics["masked_audio_cer_shuffled_video"] = metrics.pop("masked_audio_shuffled_video_cer")
    metrics["masked_audio_wer_shuffled_video"] = metrics.pop("masked_audio_shuffled_video_wer")
    metrics["masked_audio_fraction"] = ev["masked_audio_fraction"]
    return metrics, examples


# ------------------------------------------------------------------ the judge on renders of the 3D corpus


def render_3d_split(corpus, split: str = "test", static: bool = False, size: int = 88) -> list[tuple[np.ndarray, str]]:
    """Grey mouth crops of every utterance of a 3D corpus split as the AV losses render them
    (avguide.render.mouth.MouthView): (T, H, W) in [0, 1] and the text. `static=True` renders the template
    for every frame (no motion)."""
    topo = corpus.topology
    if topo.albedo is None:
        raise ValueError(
            f"{corpus.root / 'topology.npz'}: no albedo; the judge-on-3D figures need the synthetic corpus"
        )
    view = MouthView(topo, size=size, chunk=16)
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
    judge: Expert, clips: list[tuple[np.ndarray, str]], beam_size: int, ctc_weight: float, batch_size: int = 32
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


def reader_config(settings: dict, mode: str, fps: float) -> ExpertConfig:
    return ExpertConfig(mode=mode, fps=fps, ctc_weight=settings["ctc_weight"], **settings["model"])


def judges(settings: dict) -> list[str]:
    """The visual-only judges of params' pretrain_expert: `judge`, and `judge2` when it is configured."""
    return [name for name in ("judge", "judge2") if name in settings]


def _judge_settings(s: dict, name: str = "judge") -> dict:
    j = s[name]
    return {**s, "model": j["model"], "augment": {**s["augment"], **j.get("augment", {})}}


def _fit_judge(params: dict, progress: bool, clips: dict | None = None) -> float:
    """Train the judges one after the other (in this process, or in a spawned one: then it decodes its own copy
    of the corpus); each into pretrain_expert.out/<name>."""
    import time

    s = params["pretrain_expert"]
    torch.set_num_threads(s.get("threads") or torch.get_num_threads())
    corpus = AVCorpus(project_root() / params["prepare_2d"]["out"])
    clips = clips if clips is not None else decode_corpus(corpus, progress=False)
    train, val = AVDataset(corpus, "train", clips), AVDataset(corpus, "val", clips)
    fps = float(corpus.manifest["fps"].iloc[0])
    start = time.perf_counter()
    for name in judges(s):
        js = _judge_settings(s, name)
        fit_reader(
            name,
            reader_config(js, "video", fps),
            js,
            train,
            val,
            project_root() / s["out"],
            s[name]["seed"],
            {**s["trainer"], **s[name].get("trainer", {})},
            progress,
        )
    return time.perf_counter() - start


def _judge_process(params: dict, queue) -> None:
    try:
        queue.put(("ok", _fit_judge(params, progress=False)))
    except BaseException as e:  # the parent re-raises it
        queue.put(("error", f"{type(e).__name__}: {e}"))
        raise


def pretrain_expert(params: dict, progress: bool = True) -> dict:
    """Train the AV expert and the visual-only judge with params['pretrain_expert']; write metrics.json.

    With `parallel: true` the judge trains in a second (spawned) process at the same time as the expert,
    each with `threads` torch threads: on two cores that halves the wall time. The judge's epochs are shorter, so
    from epoch `solo.after_epochs` on the expert trains with `solo.threads` (the judge is done by then), and the
    evaluation runs with them too."""
    import multiprocessing
    import time

    s = params["pretrain_expert"]
    root = project_root()
    corpus = AVCorpus(root / params["prepare_2d"]["out"])
    out = root / s["out"]
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(s.get("threads") or torch.get_num_threads())
    judge_job = None
    if s.get("parallel"):
        ctx = multiprocessing.get_context("spawn")
        queue = ctx.Queue()
        judge_job = ctx.Process(target=_judge_process, args=(params, queue), daemon=False)
        judge_job.start()
    start = time.perf_counter()
    clips = decode_corpus(corpus, progress=progress)
    decode_s = time.perf_counter() - start
    train, val, test = (AVDataset(corpus, split, clips) for split in ("train", "val", "test"))
    fps = float(corpus.manifest["fps"].iloc[0])

    solo = s.get("solo") or {}
    solo_threads = solo.get("threads")  # null: the expert keeps `threads` throughout
    callbacks = [ThreadsFromEpoch(solo["after_epochs"], solo_threads)] if solo_threads else []
    start = time.perf_counter()
    expert = fit_reader(
        "model",
        reader_config(s, "av", fps),
        s,
        train,
        val,
        out,
        params["seed"],
        s["trainer"],
        progress,
        callbacks=callbacks,
    )
    expert_s = time.perf_counter() - start
    if judge_job is not None:
        status, value = queue.get()
        judge_job.join()
        if status != "ok":
            raise RuntimeError(f"training the judge in its own process failed: {value}")
        judge_s = value
    else:
        judge_s = _fit_judge(params, progress, clips)
    judge = load_expert(out / "judge", map_location=str(expert.device))
    wall_s = time.perf_counter() - start
    if solo_threads:
        torch.set_num_threads(solo_threads)

    start = time.perf_counter()
    metrics, examples = evaluate_readers(expert, judge, test, s)
    if "judge2" in s:
        refs, hyps = transcribe_dataset(load_expert(out / "judge2", map_location=str(expert.device)), test)
        metrics["video_only_judge2_cer"], metrics["video_only_judge2_wer"] = cer(refs, hyps), wer(refs, hyps)
    if s["eval"]["judge_3d"]:
        corpus3d = Corpus(root / params["prepare"]["out"])
        kw = dict(beam_size=s["beam_size"], ctc_weight=s["decode_ctc_weight"])
        for key, static in (("ground_truth", False), ("static_template", True)):
            refs, hyps = judge_renders(judge, render_3d_split(corpus3d, "test", static=static), **kw)
            metrics[f"judge_cer_3d_{key}"], metrics[f"judge_wer_3d_{key}"] = cer(refs, hyps), wer(refs, hyps)
            examples[f"judge_3d_{key}"] = list(zip(refs[:5], hyps[:5]))
    metrics.update(
        decode_s=round(decode_s, 1),
        expert_train_s=round(expert_s, 1),
        judge_train_s=round(judge_s, 1),
        train_wall_s=round(wall_s, 1),
        eval_s=round(time.perf_counter() - start, 1),
        n_test=len(test),
    )
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
    (out / "examples.json").write_text(json.dumps(examples, indent=1) + "\n")
    return metrics
