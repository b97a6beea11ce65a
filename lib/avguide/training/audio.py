"""The `pretrain_audio` stage: the animators' wav2vec 2.0 speech encoder, trained for character CTC on the
speech of the 2D corpus, the small-scale analogue of the paper's wav2vec2-base-960h (wav2vec 2.0
fine-tuned for CTC on LibriSpeech).

The model is saved as a transformers `Wav2Vec2ForCTC` folder (config.json + model.safetensors), the
format of wav2vec2-base-960h itself, so the animators load it through the one `pretrained_audio`
path that loads the real model (`avguide.models.faceformer.load_wav2vec2`), CNN frozen as FaceFormer.
"""

from __future__ import annotations

import json
import math
import time

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from dvclive.lightning import DVCLiveLogger
from torch.utils.data import DataLoader, Dataset
from transformers import Wav2Vec2Config, Wav2Vec2ForCTC

from avguide.data.audio import load_wav
from avguide.data.avcorpus import AVCorpus
from avguide.data.text import VOCAB, normalize_text
from avguide.metrics import cer, wer
from avguide.models.expert import ctc_greedy_decode
from avguide.models.faceformer import SMALL_WAV2VEC2, normalize_audio
from avguide.params import project_root, set_threads
from avguide.training.animator import make_trainer


class SpeechDataset(Dataset):
    """(audio, tokens, text) of one split of an audio-visual corpus; the audio is read once."""

    def __init__(self, corpus: AVCorpus, split: str):
        rows = corpus.split(split)
        if rows.empty:
            raise ValueError(f"{corpus.root / 'manifest.csv'}: no utterances in split {split!r}")
        self.texts = [normalize_text(t) for t in rows["text"]]
        self.audio = [torch.from_numpy(load_wav(corpus.root / w)) for w in rows["wav"]]

    def __len__(self) -> int:
        return len(self.audio)

    def __getitem__(self, i: int) -> dict:
        return {"audio": self.audio[i], "tokens": torch.tensor(VOCAB.encode(self.texts[i])), "text": self.texts[i]}


def collate_speech(items: list[dict]) -> dict:
    lengths = torch.tensor([len(x["audio"]) for x in items])
    audio = torch.zeros(len(items), int(lengths.max()))
    for b, x in enumerate(items):
        audio[b, : lengths[b]] = x["audio"]
    return {
        "audio": audio,
        "audio_lengths": lengths,
        "tokens": torch.cat([x["tokens"] for x in items]),
        "token_lengths": torch.tensor([len(x["tokens"]) for x in items]),
        "text": [x["text"] for x in items],
    }


def speech_model(shape: dict) -> Wav2Vec2ForCTC:
    """A random wav2vec 2.0 of `shape` (the animators' default encoder shape) with a character CTC head."""
    cfg = Wav2Vec2Config(**{**SMALL_WAV2VEC2, **shape}, vocab_size=len(VOCAB), pad_token_id=VOCAB.blank)
    return Wav2Vec2ForCTC(cfg)


def ctc_outputs(model: Wav2Vec2ForCTC, audio: torch.Tensor, audio_lengths: torch.Tensor):
    """(B, S, vocab) log-probabilities and valid lengths S_b, with the animators' input normalisation."""
    mask = (torch.arange(audio.shape[1], device=audio.device)[None] < audio_lengths[:, None]).long()
    logits = model(normalize_audio(audio, mask), attention_mask=mask).logits
    return logits.log_softmax(-1), model.wav2vec2._get_feat_extract_output_lengths(audio_lengths)


class SpeechCTC(pl.LightningModule):
    def __init__(self, model: Wav2Vec2ForCTC, lr: float, warmup_steps: int):
        super().__init__()
        self.model, self.lr, self.warmup_steps = model, lr, warmup_steps
        self.val_refs, self.val_hyps = [], []

    def loss(self, batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        log_probs, lengths = ctc_outputs(self.model, batch["audio"], batch["audio_lengths"])
        loss = F.ctc_loss(
            log_probs.transpose(0, 1),
            batch["tokens"],
            lengths,
            batch["token_lengths"],
            blank=VOCAB.blank,
            zero_infinity=True,
        )
        return loss, log_probs, lengths

    def training_step(self, batch, _):
        loss = self.loss(batch)[0]
        self.log("train/ctc", loss, prog_bar=True, batch_size=len(batch["text"]))
        return loss

    def validation_step(self, batch, _):
        loss, log_probs, lengths = self.loss(batch)
        self.log("val/ctc", loss, batch_size=len(batch["text"]))
        self.val_refs += batch["text"]
        self.val_hyps += ctc_greedy_decode(log_probs, lengths)

    def on_validation_epoch_end(self):
        self.log("val/cer", cer(self.val_refs, self.val_hyps), prog_bar=True)
        self.val_refs, self.val_hyps = [], []

    def configure_optimizers(self):
        opt = torch.optim.AdamW(self.parameters(), lr=self.lr, weight_decay=0.01)
        total = max(1, self.trainer.estimated_stepping_batches)

        def schedule(step: int) -> float:  # linear warm-up, then cosine decay
            if step < self.warmup_steps:
                return (step + 1) / self.warmup_steps
            return 0.5 * (
                1 + math.cos(math.pi * min(1.0, (step - self.warmup_steps) / max(1, total - self.warmup_steps)))
            )

        return [opt], [{"scheduler": torch.optim.lr_scheduler.LambdaLR(opt, schedule), "interval": "step"}]


@torch.no_grad()
def transcribe_speech(model: Wav2Vec2ForCTC, dataset: SpeechDataset, batch_size: int = 16) -> list[str]:
    model.eval()
    hyps = []
    for batch in DataLoader(dataset, batch_size=batch_size, collate_fn=collate_speech):
        hyps += ctc_greedy_decode(*ctc_outputs(model, batch["audio"], batch["audio_lengths"]))
    return hyps


def pretrain_audio(params: dict, progress: bool = True) -> dict:
    """Train the speech encoder with params['pretrain_audio'] on the corpus of `prepare_2d`; write
    <out>/model (a Wav2Vec2ForCTC folder), <out>/metrics.json (test CER/WER, greedy CTC) and <out>/dvclive."""
    cfg = params["pretrain_audio"]
    pl.seed_everything(params["seed"], workers=True)
    set_threads(params)
    root = project_root()
    corpus = AVCorpus(root / params["prepare_2d"]["out"])
    out = root / cfg["out"]
    train, val = SpeechDataset(corpus, "train"), SpeechDataset(corpus, "val")
    model = speech_model(cfg["model"])
    module = SpeechCTC(model, cfg["lr"], cfg["warmup_steps"])
    loaders = dict(batch_size=cfg["batch_size"], collate_fn=collate_speech, num_workers=0)
    logger = DVCLiveLogger(dir=str(out / "dvclive"), save_dvc_exp=False, dvcyaml=False)
    trainer = make_trainer(cfg["trainer"], out, logger=logger, enable_progress_bar=progress, enable_checkpointing=False)
    start = time.perf_counter()
    trainer.fit(module, DataLoader(train, shuffle=True, **loaders), DataLoader(val, **loaders))
    train_s = time.perf_counter() - start
    test = SpeechDataset(corpus, "test")
    hyps = transcribe_speech(model, test, cfg["batch_size"])
    metrics = {
        "test_cer": cer(test.texts, hyps),
        "test_wer": wer(test.texts, hyps),
        "train_s": round(train_s, 1),
        "examples": [{"ref": r, "hyp": h} for r, h in list(zip(test.texts, hyps))[:5]],
    }
    if trainer.is_global_zero:
        model.save_pretrained(out / "model", safe_serialization=True)
        (out / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
    return metrics
