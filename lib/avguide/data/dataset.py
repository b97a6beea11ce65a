"""A torch Dataset over one split of a `Corpus`, and the collate function that batches it."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from avguide.data.corpus import SPLITS, Corpus, CorpusError
from avguide.data.text import VOCAB, normalize_text


class TalkingFaceDataset(Dataset):
    """Utterances of one split: audio, vertex motion, template, subject style id and transcript tokens.

    `subject_id` is the index of the subject in the sorted list of the corpus's TRAIN subjects
    (the FaceFormer style id). Subjects never seen in training (VOCASET val/test) get -1: a model
    must pick a training style for them (FaceFormer evaluates every training style, or a fixed one).

    `text` is the normalised transcript, so `VOCAB.decode(tokens) == text`.
    With `cache=True` loaded arrays are kept in memory (per DataLoader worker).
    """

    def __init__(self, corpus: Corpus, split: str, subjects: list[str] | None = None, cache: bool = False):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}; found {split!r}")
        self.corpus = corpus
        self.split = split
        self.cache = cache
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        manifest = corpus.root / "manifest.csv"

        rows = corpus.split(split)
        rows = rows.assign(utterance=rows["utterance"].astype(str), subject=rows["subject"].astype(str))
        if subjects is not None:
            subjects = [str(s) for s in subjects]
            unknown = sorted(set(subjects) - set(rows["subject"]))
            if unknown:
                raise ValueError(
                    f"{manifest}: subject(s) {unknown} have no {split!r} utterances; "
                    f"{split!r} subjects are {sorted(set(rows['subject']))}"
                )
            rows = rows[rows["subject"].isin(subjects)].reset_index(drop=True)
        if rows.empty:
            raise CorpusError(f"{manifest}: no utterances in split {split!r}")
        self.rows = rows

        self.train_subjects: list[str] = sorted({str(s) for s in corpus.subjects["train"]})
        style = {s: i for i, s in enumerate(self.train_subjects)}
        self.subject_ids = [style.get(s, -1) for s in rows["subject"]]

        self.texts: list[str] = []
        self.tokens: list[list[int]] = []
        for raw in rows["text"]:  # the corpus has checked that every transcript has a letter
            text = normalize_text(str(raw))
            self.texts.append(text)
            self.tokens.append(VOCAB.encode(text))

    def __len__(self) -> int:
        return len(self.rows)

    def _load(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Audio and vertices of row i, read once and checked against each other and the manifest."""
        if i in self._cache:
            return self._cache[i]
        audio, vertices = self.corpus.load(self.rows.iloc[i]["utterance"])
        if self.cache:
            self._cache[i] = (audio, vertices)
        return audio, vertices

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} {self.split!r} utterances")
        row = self.rows.iloc[i]
        audio, vertices = self._load(i)
        subject = row["subject"]
        return {
            "utterance": row["utterance"],
            "subject": subject,
            "subject_id": self.subject_ids[i],
            "audio": torch.tensor(audio, dtype=torch.float32),
            "vertices": torch.tensor(vertices, dtype=torch.float32),
            "template": torch.tensor(self.corpus.templates[subject], dtype=torch.float32),
            "text": self.texts[i],
            "tokens": torch.tensor(self.tokens[i], dtype=torch.long),
        }


def _pad(seqs: list[torch.Tensor], value: float = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Stack variable-length tensors along a new batch dim, padding dim 0; returns (padded, mask, lengths)."""
    lengths = torch.tensor([len(s) for s in seqs], dtype=torch.long)
    out = seqs[0].new_full((len(seqs), int(lengths.max()), *seqs[0].shape[1:]), value)
    for b, s in enumerate(seqs):
        out[b, : len(s)] = s
    mask = torch.arange(out.shape[1])[None, :] < lengths[:, None]
    return out, mask, lengths


def collate(batch: list[dict]) -> dict:
    """Batch `TalkingFaceDataset` items, zero-padding to the longest item.

    Returns audio (B, S), audio_mask (B, S) bool, audio_lengths (B,); vertices (B, T, V, 3),
    frame_mask (B, T) bool (True on real frames), n_frames (B,); templates (B, V, 3);
    subject_ids (B,); tokens (B, L) padded with VOCAB.pad, token_lengths (B,);
    and lists utterances, subjects, texts.
    """
    if not batch:
        raise ValueError("collate: expected at least one item, found an empty batch")
    shapes = {tuple(item["template"].shape) for item in batch}
    if len(shapes) != 1:
        raise ValueError(f"collate: all items must share one mesh; found template shapes {sorted(shapes)}")
    audio, audio_mask, audio_lengths = _pad([item["audio"] for item in batch])
    vertices, frame_mask, n_frames = _pad([item["vertices"] for item in batch])
    tokens, _, token_lengths = _pad([item["tokens"] for item in batch], VOCAB.pad)
    return {
        "audio": audio,
        "audio_mask": audio_mask,
        "audio_lengths": audio_lengths,
        "vertices": vertices,
        "frame_mask": frame_mask,
        "n_frames": n_frames,
        "templates": torch.stack([item["template"] for item in batch]),
        "subject_ids": torch.tensor([item["subject_id"] for item in batch], dtype=torch.long),
        "tokens": tokens,
        "token_lengths": token_lengths,
        "utterances": [item["utterance"] for item in batch],
        "subjects": [item["subject"] for item in batch],
        "texts": [item["text"] for item in batch],
    }
