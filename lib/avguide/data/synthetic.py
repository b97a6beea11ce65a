"""The embedded synthetic 3D talking-face corpus: sentences -> espeak-ng speech -> articulatory rig -> meshes.

Every subject has its own voice, face shape, speaking style and non-speech motion; every utterance
has variation the audio does not determine (articulation strength, viseme timing jitter, occasional
hypo-articulation), so a vertex-MSE model regresses to the mean as it does on real data. The corpus
is a pure function of the configuration and the seed: the same seed gives byte-identical files.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import MISSING, asdict, dataclass, field, fields, is_dataclass
from importlib.resources import files
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from avguide.data.audio import SAMPLE_RATE, save_wav
from avguide.data.corpus import SPLITS, Topology, save_templates, write_manifest
from avguide.data.speech import Voice, synthesize
from avguide.face.rig import Rig
from avguide.face.template import FaceShape, build_face
from avguide.face.visemes import articulate, load_table, viseme_keys

log = logging.getLogger(__name__)

VARIANTS = ("m1", "f1", "m2", "f2", "m3", "f3", "m4", "f4", "m5", "f5", "m6", "m7")
LANGUAGES = ("en-us", "en")


@dataclass
class Variation:
    """Per-utterance variation that the audio does not determine."""

    articulation_sd: float = 0.12  # relative sd of the utterance's articulation strength
    timing_jitter_s: float = 0.02  # sd of each viseme key's timing
    hypo_prob: float = 0.15  # chance that an utterance is hypo-articulated
    hypo_gain: float = 0.6  # articulation strength of a hypo-articulated utterance


@dataclass
class StyleRanges:
    """Ranges from which each subject's speaking style and non-speech motion are drawn."""

    gain: tuple[float, float] = (0.8, 1.2)  # articulation gain
    asymmetry: float = 0.15  # max |left-right asymmetry|
    av_lag_s: float = 0.04  # max |audio-visual lead/lag|
    blink_rate_hz: tuple[float, float] = (0.15, 0.5)
    brow_amplitude: tuple[float, float] = (0.1, 0.5)


@dataclass
class SyntheticConfig:
    seed: int = 0
    subjects: dict[str, int] = field(default_factory=lambda: {"train": 8, "val": 2, "test": 2})
    sentences_per_subject: int = 40
    fps: float = 25.0
    variation: Variation = field(default_factory=Variation)
    style: StyleRanges = field(default_factory=StyleRanges)

    @classmethod
    def from_dict(cls, d: dict) -> SyntheticConfig:
        return config_from_dict(cls, d)


def config_from_dict(cls, d: dict):
    """A corpus config dataclass from its params.yaml section: nested sections become their dataclasses,
    YAML lists become tuples, and a key the dataclass does not have is an error."""
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(d) - set(known))
    if unknown:
        raise ValueError(f"unknown {cls.__name__} settings {unknown}; expected some of {sorted(known)}")
    values = {}
    for key, value in d.items():
        default = known[key].default_factory() if known[key].default_factory is not MISSING else known[key].default
        if is_dataclass(default):
            value = type(default)(**{k: tuple(v) if isinstance(v, list) else v for k, v in value.items()})
        elif isinstance(default, float):
            value = float(value)
        values[key] = value
    return cls(**values)


@dataclass
class Subject:
    name: str
    split: str
    voice: Voice
    shape: FaceShape
    gain: float
    asymmetry: float
    av_lag_s: float
    blink_rate_hz: float
    brow_amplitude: float


def load_grammar() -> dict:
    return json.loads(files("avguide.data").joinpath("grammar.json").read_text())


def sample_sentences(n: int, rng: np.random.Generator, grammar: dict | None = None) -> list[str]:
    """n distinct sentences, one word per grammar slot."""
    slots = list((grammar or load_grammar())["slots"].values())
    capacity = int(np.prod([len(s) for s in slots]))
    if n > capacity:
        raise ValueError(f"the grammar has {capacity} sentences, {n} asked for")
    out: list[str] = []
    seen = set()
    while len(out) < n:
        s = " ".join(words[rng.integers(len(words))] for words in slots)
        if s not in seen:
            seen.add(s)
            out.append(s)
    return out


def make_subjects(cfg: SyntheticConfig, prefix: str = "synth") -> list[Subject]:
    subjects, k = [], 0
    st = cfg.style
    digits = max(2, len(str(sum(cfg.subjects.values()))))
    for split in SPLITS:
        for _ in range(cfg.subjects.get(split, 0)):
            rng = np.random.default_rng([cfg.seed, 1, k])
            variant = VARIANTS[k % len(VARIANTS)]
            female = variant.startswith("f")
            voice = Voice(
                name=f"{LANGUAGES[rng.integers(len(LANGUAGES))]}+{variant}",
                rate=int(rng.integers(140, 186)),
                pitch=int(rng.integers(50, 75) if female else rng.integers(25, 55)),
                range=int(rng.integers(30, 70)),
            )
            shape = FaceShape(
                face_width=float(rng.uniform(0.9, 1.1)),
                mouth_width=float(rng.uniform(0.88, 1.12)),
                lip_thickness=float(rng.uniform(0.8, 1.25)),
            )
            subjects.append(
                Subject(
                    name=f"{prefix}{k + 1:0{digits}d}",
                    split=split,
                    voice=voice,
                    shape=shape,
                    gain=float(rng.uniform(*st.gain)),
                    asymmetry=float(rng.uniform(-st.asymmetry, st.asymmetry)),
                    av_lag_s=float(rng.uniform(-st.av_lag_s, st.av_lag_s)),
                    blink_rate_hz=float(rng.uniform(*st.blink_rate_hz)),
                    brow_amplitude=float(rng.uniform(*st.brow_amplitude)),
                )
            )
            k += 1
    return subjects


def non_speech_motion(times: np.ndarray, subject: Subject, rng: np.random.Generator) -> np.ndarray:
    """(T, 2) blink and brow-raise parameters: Poisson blinks of ~150 ms, slow brow drift."""
    duration = times[-1] + 1.0
    n_blinks = rng.poisson(subject.blink_rate_hz * duration)
    blink = np.zeros_like(times)
    for tb in rng.uniform(0, duration, n_blinks):
        blink = np.maximum(blink, np.exp(-(((times - tb) / 0.05) ** 2)))
    freqs = rng.uniform(0.2, 0.8, 3)
    phases = rng.uniform(0, 2 * np.pi, 3)
    brow = np.abs(np.sin(2 * np.pi * freqs[None] * times[:, None] + phases[None])).mean(1)
    return np.stack([blink, subject.brow_amplitude * brow], 1)


def speak_and_move(
    text: str, subject: Subject, rig: Rig, cfg: SyntheticConfig, rng: np.random.Generator, where: str = ""
):
    """One utterance: audio (16 kHz), vertices (T, V, 3), rig parameters (T, 8), phoneme segments."""
    speech = synthesize(text, subject.voice, seed=int(rng.integers(2**31)))
    duration = len(speech.audio) / SAMPLE_RATE
    n_frames = max(1, int(round(duration * cfg.fps)))
    times = np.arange(n_frames) / cfg.fps + subject.av_lag_s
    var = cfg.variation
    gain = subject.gain * max(0.2, rng.normal(1.0, var.articulation_sd))
    if rng.random() < var.hypo_prob:
        gain *= var.hypo_gain
    keys = [(0.0, 0.1, "sil")] + viseme_keys(speech.phonemes, where) + [(duration, 0.1, "sil")]
    speech_params = articulate(keys, times, gain=gain, jitter_s=var.timing_jitter_s, rng=rng)
    params = np.concatenate([speech_params, non_speech_motion(times, subject, rng)], 1)
    return speech.audio, rig.pose(params), params, speech.phonemes


def _write_subject(out: Path, cfg: SyntheticConfig, si: int) -> tuple[list[dict], list[dict]]:
    """All utterances of subject `si`: runs in a fresh process (see build_corpus)."""
    table = load_table()
    subj = make_subjects(cfg)[si]
    rig = Rig(build_face(subj.shape), asymmetry=subj.asymmetry)
    rows, phoneme_rows = [], []
    sentences = sample_sentences(cfg.sentences_per_subject, np.random.default_rng([cfg.seed, 2, si]))
    for ui, text in enumerate(sentences):
        utt = f"{subj.name}_sentence{ui + 1:02d}"
        rng = np.random.default_rng([cfg.seed, 3, si, ui])
        audio, verts, _, phonemes = speak_and_move(text, subj, rig, cfg, rng, where=f"utterance {utt} ({text!r})")
        save_wav(out / "wav" / f"{utt}.wav", audio)
        np.save(out / "vertices_npy" / f"{utt}.npy", verts.reshape(len(verts), -1))
        rows.append(
            dict(
                utterance=utt,
                subject=subj.name,
                sentence=f"sentence{ui + 1:02d}",
                split=subj.split,
                text=text,
                n_frames=len(verts),
                fps=cfg.fps,
                wav=f"wav/{utt}.wav",
                vertices=f"vertices_npy/{utt}.npy",
                duration_s=round(len(audio) / SAMPLE_RATE, 4),
            )
        )
        for k, (ph, start, end) in enumerate(phonemes):
            phoneme_rows.append(
                dict(
                    utterance=utt,
                    index=k,
                    phoneme=ph,
                    viseme="+".join(table.of(ph)),
                    start_s=round(start, 6),
                    end_s=round(end, 6),
                )
            )
    return rows, phoneme_rows


def build_corpus(out_dir: str | Path, cfg: SyntheticConfig, progress: bool = True, workers: int | None = None) -> Path:
    """Write the synthetic corpus in the processed VOCASET/FaceFormer layout (see avguide.data.corpus).

    libespeak-ng keeps internal state from one synthesis to the next (a second call in a process gives
    audio a few samples off the first), so each subject is synthesised in a fresh process, its
    utterances in a fixed order: the corpus is then the same whatever ran before and however many
    workers run.
    """
    out = Path(out_dir)
    (out / "wav").mkdir(parents=True, exist_ok=True)
    (out / "vertices_npy").mkdir(parents=True, exist_ok=True)
    subjects = make_subjects(cfg)
    workers = workers or min(len(subjects), os.cpu_count() or 1, 2)
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=ctx, max_tasks_per_child=1) as pool:
        jobs = [pool.submit(_write_subject, out, cfg, si) for si in range(len(subjects))]
        for _ in tqdm(as_completed(jobs), total=len(jobs), desc="synth3d subjects", disable=not progress):
            pass
        results = [job.result() for job in jobs]
    rows = [r for subject_rows, _ in results for r in subject_rows]
    phoneme_rows = [r for _, subject_phonemes in results for r in subject_phonemes]
    write_manifest(out / "manifest.csv", rows)
    pd.DataFrame(phoneme_rows).to_csv(out / "phonemes.csv", index=False, lineterminator="\n")
    meshes = {s.name: build_face(s.shape) for s in subjects}
    save_templates(out / "templates.npz", {name: m.vertices for name, m in meshes.items()})
    mesh = next(iter(meshes.values()))
    Topology(
        faces=mesh.faces, lip_ids=mesh.lip_ids, upper_face_ids=mesh.upper_face_ids, albedo=mesh.albedo, part=mesh.part
    ).save(out / "topology.npz")
    meta = {"config": asdict(cfg), "subjects": [asdict(s) for s in subjects], "n_vertices": int(len(mesh.vertices))}
    (out / "subjects.json").write_text(json.dumps(meta, indent=1, default=list) + "\n")
    log.info("wrote %d utterances of %d subjects to %s", len(rows), len(subjects), out)
    return out
