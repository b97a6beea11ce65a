"""Pieces shared by the real-dataset readers (`avguide.data.vocaset`, `avguide.data.biwi`).

- `load_pickle`, `read_templates`: the datasets' own pickles, read only from paths the caller names.
- `read_faces` (.npy / .ply / .obj), `read_mesh` (vertices and faces of a .ply / .obj), `read_region_ids`,
  `read_vertex_ids` (text or .npy), `build_topology`: mesh connectivity and regions.
- `Transcripts`: one text per sentence (or per subject and sentence), normalised.
- `split_table`, `assign_splits`: which split each utterance goes to.
- `processed_utterances`: the processed layout wav/<utt>.wav + vertices_npy/<utt>.npy.
- `write_corpus`: the per-utterance check / trim / write loop, and everything else the corpus needs.

A pickle can run code while it is loaded: `load_pickle` is only ever called on files the user passed
to a reader. Everything the readers write is CSV, JSON, WAV, NPY or NPZ (no pickles).
"""

from __future__ import annotations

import json
import logging
import pickle
import re
import struct
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from avguide.data.audio import SAMPLE_RATE, AudioError, load_wav, save_wav
from avguide.data.corpus import SPLITS, CorpusError, Topology, load_vertices, save_templates, write_manifest
from avguide.data.text import normalize_text

log = logging.getLogger(__name__)


class BrokenItem(Exception):
    """One utterance cannot be used (missing part, empty, lengths far apart); the message names the file."""


# ---------------------------------------------------------------- files and pickles


def require_dir(path: str | Path, what: str) -> Path:
    path = Path(path)
    if not path.is_dir():
        raise CorpusError(f"{path}: folder not found (expected {what})")
    return path


def require_file(path: str | Path, what: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise CorpusError(f"{path}: file not found (expected {what})")
    return path


def load_pickle(path: str | Path, what: str) -> object:
    """Unpickle a file the user named (Python 2 pickles of the original releases need latin1)."""
    path = require_file(path, what)
    with open(path, "rb") as f:
        try:
            return pickle.load(f, encoding="latin1")
        except Exception as e:  # a truncated or foreign file can raise almost anything
            raise CorpusError(f"{path}: cannot unpickle {what} ({type(e).__name__}: {e})") from None


def read_templates(path: str | Path) -> dict[str, np.ndarray]:
    """templates.pkl: dict subject -> (V, 3) array, the same V for every subject."""
    path = Path(path)
    obj = load_pickle(path, "a pickled dict subject -> (V, 3) template")
    if not isinstance(obj, dict) or not obj:
        raise CorpusError(f"{path}: expected a non-empty dict subject -> (V, 3) array, found {type(obj).__name__}")
    templates = {}
    for subject, verts in obj.items():
        arr = np.asarray(verts, dtype=np.float32)
        if arr.ndim != 2 or arr.shape[1] != 3:
            raise CorpusError(f"{path}: template of {subject!r} has shape {arr.shape}, expected (V, 3)")
        templates[str(subject)] = arr
    sizes = {s: a.shape[0] for s, a in templates.items()}
    if len(set(sizes.values())) > 1:
        raise CorpusError(f"{path}: templates differ in vertex count: {sizes}")
    return templates


# ---------------------------------------------------------------- faces and regions


def read_faces(path: str | Path) -> np.ndarray:
    """Triangles (F, 3) int64 from a .npy (F, 3) integer array, a .ply or an .obj (polygons fan-triangulated)."""
    path = require_file(path, "mesh faces: .npy (F, 3) int array, .ply or .obj")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        faces = np.load(path, allow_pickle=False)
        if faces.ndim != 2 or faces.shape[1] != 3 or not np.issubdtype(faces.dtype, np.integer):
            raise CorpusError(f"{path}: expected an (F, 3) integer array, found {faces.dtype} {faces.shape}")
        faces = faces.astype(np.int64)
    elif suffix == ".ply":
        polygons = _read_ply(path, vertices=False)[1]
        if polygons is None:
            raise CorpusError(f"{path}: expected 'element face' with 'property list uchar int vertex_indices'")
        faces = _fan(polygons, path)
    elif suffix == ".obj":
        faces = _fan(_read_obj(path)[1], path)
    else:
        raise CorpusError(f"{path}: unknown faces format {suffix!r}; expected .npy, .ply or .obj")
    if len(faces) == 0:
        raise CorpusError(f"{path}: no faces found")
    if faces.min() < 0:
        raise CorpusError(f"{path}: negative vertex index {faces.min()} in faces")
    return faces


def read_mesh(path: str | Path) -> tuple[np.ndarray, np.ndarray | None]:
    """(V, 3) float32 vertices and (F, 3) int64 triangles (None when the file has no faces) of a mesh file: a PLY
    (ascii or binary, `element vertex` with x, y, z; `element face` with vertex_indices), or a Wavefront OBJ
    (`v x y z` and `f a b c ...` lines; texture and normal indices ignored). Polygons are fan-triangulated."""
    path = require_file(path, "a mesh: .ply or .obj")
    suffix = path.suffix.lower()
    if suffix == ".ply":
        vertices, polygons = _read_ply(path, vertices=True)
        if vertices is None:
            raise CorpusError(f"{path}: not a mesh: no 'element vertex' with properties x, y, z")
    elif suffix == ".obj":
        vertices, polygons = _read_obj(path)
        if len(vertices) == 0:
            raise CorpusError(f"{path}: not a mesh: no vertex lines 'v x y z' (expected a Wavefront OBJ)")
        polygons = polygons or None
    else:
        raise CorpusError(f"{path}: unknown mesh format {suffix!r}; expected .ply or .obj")
    if len(vertices) == 0:
        raise CorpusError(f"{path}: the mesh has no vertices")
    if not np.isfinite(vertices).all():
        raise CorpusError(f"{path}: vertex coordinates contain NaN or infinite values")
    faces = None if polygons is None else _fan(polygons, path)
    if faces is not None and len(faces) and (faces.min() < 0 or faces.max() >= len(vertices)):
        raise CorpusError(
            f"{path}: faces index vertices {faces.min()}..{faces.max()}, the mesh has {len(vertices)} vertices"
        )
    return vertices.astype(np.float32), faces if faces is None or len(faces) else None


def _fan(polygons: list[list[int]] | np.ndarray, path: Path) -> np.ndarray:
    if isinstance(polygons, np.ndarray):  # triangles already
        return polygons.astype(np.int64).reshape(-1, 3)
    tris = []
    for poly in polygons:
        if len(poly) < 3:
            raise CorpusError(f"{path}: a face has {len(poly)} vertices, expected at least 3")
        tris.extend((poly[0], poly[i], poly[i + 1]) for i in range(1, len(poly) - 1))
    return np.array(tris, dtype=np.int64).reshape(-1, 3)


_PLY_TYPES = {
    "char": "b", "int8": "b", "uchar": "B", "uint8": "B", "short": "h", "int16": "h", "ushort": "H",
    "uint16": "H", "int": "i", "int32": "i", "uint": "I", "uint32": "I", "float": "f", "float32": "f",
    "double": "d", "float64": "d",
}  # fmt: skip
_PLY_FORMATS = {"ascii": None, "binary_little_endian": "<", "binary_big_endian": ">"}


def _read_ply(path: Path, vertices: bool) -> tuple[np.ndarray | None, list[list[int]] | np.ndarray | None]:
    """An ascii or binary PLY (as FLAME_sample.ply): the (V, 3) x, y, z of `element vertex` (when `vertices`;
    None if there are none) and the `vertex_indices` lists of `element face` (None if there is none; an (F, 3)
    array when they are all triangles)."""
    with open(path, "rb") as f:
        if f.readline().strip() != b"ply":
            raise CorpusError(f"{path}: not a PLY file (the first line is not 'ply')")
        fmt, elements = None, []  # elements: [name, count, [(prop name, type or (count type, item type))]]
        while True:
            line = f.readline()
            if not line:
                raise CorpusError(f"{path}: PLY header has no 'end_header' line")
            words = line.decode("ascii", "replace").split()
            if not words or words[0] in ("comment", "obj_info"):
                continue
            if words[0] == "end_header":
                break
            try:
                if words[0] == "format":
                    fmt = words[1]
                elif words[0] == "element":
                    elements.append((words[1], int(words[2]), []))
                elif words[0] == "property" and words[1] == "list":
                    elements[-1][2].append((words[4], (_PLY_TYPES[words[2]], _PLY_TYPES[words[3]])))
                elif words[0] == "property":
                    elements[-1][2].append((words[2], _PLY_TYPES[words[1]]))
                else:
                    raise ValueError
            except (IndexError, KeyError, ValueError):
                text = line.decode("ascii", "replace").strip()
                raise CorpusError(f"{path}: cannot read PLY header line {text!r}") from None
        body = f.read()
    if fmt not in _PLY_FORMATS:
        raise CorpusError(f"{path}: PLY format {fmt!r} not supported; expected one of {sorted(_PLY_FORMATS)}")
    reader = _PlyBody(body, _PLY_FORMATS[fmt], path)
    xyz = polygons = None
    for name, count, props in elements:
        names = [p for p, _ in props]
        if name == "vertex" and vertices and {"x", "y", "z"} <= set(names):
            xyz = reader.columns(count, props, ("x", "y", "z"))
        elif name == "face":
            lists = [p for p, t in props if isinstance(t, tuple)]
            index_prop = next((p for p in lists if p in ("vertex_indices", "vertex_index")), None)
            if index_prop is None:
                reader.skip(count, props)
                continue
            polygons = reader.triangles(count, props)
            if polygons is None:
                polygons = []
                for _ in range(count):
                    for prop, typ in props:
                        value = reader.read(typ)
                        if prop == index_prop:
                            polygons.append(value)
            if not vertices:
                break
        else:
            reader.skip(count, props)
    return xyz, polygons


class _PlyBody:
    """Sequential reader of PLY element rows, ascii tokens or packed binary."""

    def __init__(self, body: bytes, endian: str | None, path: Path):
        self.endian, self.path, self.pos = endian, path, 0
        self.data = body.split() if endian is None else body

    def read(self, typ: str | tuple[str, str]) -> int | float | list:
        try:
            if isinstance(typ, tuple):
                n = int(self._scalar(typ[0]))
                return [int(self._scalar(typ[1])) for _ in range(n)]
            return self._scalar(typ)
        except (IndexError, ValueError, struct.error):
            raise CorpusError(f"{self.path}: PLY data ends early or is malformed (at offset {self.pos})") from None

    def triangles(self, count: int, props: list) -> np.ndarray | None:
        """(count, 3) int64 when the rows are the index list alone and every one a triangle (as FLAME's and BIWI's
        meshes), read at once; else None, nothing consumed (the caller reads them one value at a time)."""
        if len(props) != 1 or not count:
            return None
        count_type, index_type = props[0][1]
        if self.endian is None:
            tokens = self.data[self.pos : self.pos + 4 * count]
            try:
                table = np.array(tokens).astype(np.int64).reshape(count, 4)
            except ValueError:  # too few tokens, or not integers: not triangles only
                return None
            size = 4 * count
        else:
            dtype = np.dtype([("n", self.endian + count_type), ("ids", self.endian + index_type, (3,))])
            if self.pos + count * dtype.itemsize > len(self.data):
                return None
            rows = np.frombuffer(self.data, dtype, count, offset=self.pos)
            table = np.concatenate([rows["n"][:, None], rows["ids"]], 1).astype(np.int64)
            size = count * dtype.itemsize
        if not (table[:, 0] == 3).all():
            return None
        self.pos += size
        return table[:, 1:]

    def columns(self, count: int, props: list, names: tuple[str, ...]) -> np.ndarray:
        """(count, len(names)) float64: those properties of `count` rows (fixed-size rows read at once)."""
        keys = [p for p, _ in props]
        if any(isinstance(t, tuple) for _, t in props):  # a list in the rows: one value at a time
            rows = [dict(zip(keys, (self.read(t) for _, t in props))) for _ in range(count)]
            return np.array([[float(r[n]) for n in names] for r in rows], np.float64).reshape(count, len(names))
        cols = [keys.index(n) for n in names]
        try:
            if self.endian is None:
                tokens = self.data[self.pos : self.pos + count * len(props)]
                if len(tokens) < count * len(props):
                    raise ValueError
                table = np.array(tokens).astype(np.float64).reshape(count, len(props))
                self.pos += count * len(props)
                return table[:, cols]
            dtype = np.dtype([(f"p{i}", self.endian + t) for i, (_, t) in enumerate(props)])
            table = np.frombuffer(self.data, dtype, count, offset=self.pos)
            self.pos += count * dtype.itemsize
            return np.stack([table[f"p{c}"].astype(np.float64) for c in cols], 1)
        except ValueError:
            raise CorpusError(f"{self.path}: PLY data ends early or is malformed (at offset {self.pos})") from None

    def skip(self, count: int, props: list) -> None:
        if all(isinstance(t, str) for _, t in props):  # fixed-size rows: jump over them
            step = len(props) if self.endian is None else struct.calcsize("=" + "".join(t for _, t in props))
            self.pos += count * step
        else:
            for _ in range(count):
                for _, typ in props:
                    self.read(typ)

    def _scalar(self, code: str) -> int | float:
        if self.endian is None:
            token = self.data[self.pos]
            self.pos += 1
            return float(token) if code in "fd" else int(token)
        (value,) = struct.unpack_from(self.endian + code, self.data, self.pos)
        self.pos += struct.calcsize(self.endian + code)
        return value


def _read_obj(path: Path) -> tuple[np.ndarray, list[list[int]]]:
    """Vertices (V, 3) and faces of an OBJ: `v x y z`, `f a b c ...` (1-based, `v/vt/vn` slashes allowed, negative =
    relative to the vertices so far)."""
    vertices, polygons = [], []
    with open(path, encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            if line.startswith("v "):
                try:
                    vertices.append([float(t) for t in line.split()[1:4]])
                except ValueError:
                    raise CorpusError(f"{path}:{lineno}: cannot read vertex line {line.strip()!r}") from None
                if len(vertices[-1]) != 3:
                    raise CorpusError(f"{path}:{lineno}: a vertex line needs x y z, found {line.strip()!r}")
            elif line.startswith("f "):
                try:
                    ids = [int(tok.split("/")[0]) for tok in line.split()[1:]]
                except ValueError:
                    raise CorpusError(f"{path}:{lineno}: cannot read face line {line.strip()!r}") from None
                if 0 in ids:
                    raise CorpusError(f"{path}:{lineno}: OBJ indices are 1-based, found 0 in {line.strip()!r}")
                polygons.append([i - 1 if i > 0 else len(vertices) + i for i in ids])
    return np.array(vertices, np.float64).reshape(-1, 3), polygons


def read_region_ids(path: str | Path, n_vertices: int) -> np.ndarray:
    """Vertex ids (sorted, unique) from a text file of integers separated by whitespace and/or commas."""
    path = require_file(path, "a text file of vertex ids separated by whitespace or commas")
    tokens = [t for t in re.split(r"[\s,]+", path.read_text(errors="replace")) if t]
    try:
        ids = np.array([int(t) for t in tokens], dtype=np.int64)
    except ValueError:
        bad = next(t for t in tokens if not re.fullmatch(r"[+-]?\d+", t))
        raise CorpusError(f"{path}: expected integer vertex ids, found {bad!r}") from None
    if ids.size == 0:
        raise CorpusError(f"{path}: no vertex ids found")
    if ids.min() < 0 or ids.max() >= n_vertices:
        raise CorpusError(f"{path}: vertex ids must lie in 0..{n_vertices - 1}; found {ids.min()}..{ids.max()}")
    return np.unique(ids)


def read_vertex_ids(path: str | Path, n_vertices: int) -> np.ndarray:
    """Vertex ids (sorted, unique) of a region: a text file as `read_region_ids` reads, or a .npy of integer ids
    (any shape) or of a boolean mask over the n_vertices vertices."""
    path = require_file(path, "a region's vertex ids: a text file of integers, or a .npy of ids or a boolean mask")
    if path.suffix.lower() != ".npy":
        return read_region_ids(path, n_vertices)
    try:
        arr = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as e:
        raise CorpusError(f"{path}: not a readable .npy array ({e})") from None
    if arr.dtype == bool:
        if arr.size != n_vertices:
            raise CorpusError(f"{path}: a boolean mask of {arr.size} vertices, the mesh has {n_vertices}")
        arr = np.flatnonzero(arr)
    elif not np.issubdtype(arr.dtype, np.integer):
        raise CorpusError(f"{path}: expected integer vertex ids (or a boolean mask), found {arr.dtype}")
    ids = arr.astype(np.int64).ravel()
    if ids.size == 0:
        raise CorpusError(f"{path}: no vertex ids found")
    if ids.min() < 0 or ids.max() >= n_vertices:
        raise CorpusError(f"{path}: vertex ids must lie in 0..{n_vertices - 1}; found {ids.min()}..{ids.max()}")
    return np.unique(ids)


def build_topology(faces_path: str | Path, regions_dir: str | Path, n_vertices: int) -> Topology:
    """Faces from `faces_path`, lip ids from regions_dir/lve.txt, upper-face ids from regions_dir/fdd.txt."""
    regions_dir = require_dir(regions_dir, "lve.txt (lip vertex ids) and fdd.txt (upper-face vertex ids)")
    faces = read_faces(faces_path)
    if faces.max() >= n_vertices:
        raise CorpusError(f"{faces_path}: faces index vertex {faces.max()}, the templates have {n_vertices} vertices")
    return Topology(
        faces=faces,
        lip_ids=read_region_ids(regions_dir / "lve.txt", n_vertices),
        upper_face_ids=read_region_ids(regions_dir / "fdd.txt", n_vertices),
    )


# ---------------------------------------------------------------- transcripts and splits


class Transcripts:
    """Normalised transcripts from `<dir>/transcripts.csv` (columns sentence,text and optionally subject)
    or from one `<dir>/<sentence>.txt` per sentence (`<subject>_<sentence>.txt` wins for that subject)."""

    def __init__(self, directory: str | Path):
        self.dir = require_dir(directory, "<sentence>.txt files or one transcripts.csv")
        self.texts: dict[str, str] = {}  # key: sentence or subject_sentence
        csv, txts = self.dir / "transcripts.csv", sorted(self.dir.glob("*.txt"))
        if csv.is_file() and txts:
            raise CorpusError(f"{self.dir}: holds both transcripts.csv and .txt files; keep one of the two")
        if csv.is_file():
            self._read_csv(csv)
        else:
            for p in txts:
                self.texts[p.stem] = self._normalise(p.read_text(encoding="utf-8"), str(p))
        if not self.texts:
            raise CorpusError(f"{self.dir}: no transcripts (expected <sentence>.txt files or transcripts.csv)")

    def _read_csv(self, csv: Path) -> None:
        df = pd.read_csv(csv, dtype=str, keep_default_na=False)
        missing = {"sentence", "text"} - set(df.columns)
        if missing:
            raise CorpusError(
                f"{csv}: expected columns sentence,text (and optionally subject); missing {sorted(missing)}"
            )
        for i, row in df.iterrows():
            key = f"{row['subject']}_{row['sentence']}" if row.get("subject", "") else row["sentence"]
            if key in self.texts:
                raise CorpusError(f"{csv}: transcript for {key!r} given twice")
            self.texts[key] = self._normalise(row["text"], f"{csv} line {int(i) + 2}")

    @staticmethod
    def _normalise(text: str, where: str) -> str:
        norm = normalize_text(text)
        if not norm:
            raise CorpusError(f"{where}: transcript is empty after normalisation (read {text!r})")
        return norm

    def text(self, subject: str, sentence: str) -> str:
        for key in (f"{subject}_{sentence}", sentence):
            if key in self.texts:
                return self.texts[key]
        raise CorpusError(
            f"{self.dir}: no transcript for {subject} {sentence} "
            f"(expected {sentence}.txt, {subject}_{sentence}.txt or a transcripts.csv row)"
        )


def split_table(splits: Mapping[str, Iterable[str]]) -> dict[str, str]:
    """Invert {split: [subject or <subject>_<sentence>, ...]} into {entry: split}."""
    table: dict[str, str] = {}
    for split, entries in splits.items():
        if split not in SPLITS:
            raise CorpusError(f"splits: split names must be among {SPLITS}; found {split!r}")
        if isinstance(entries, str):
            raise CorpusError(f"splits[{split!r}]: expected a list of names, found the string {entries!r}")
        for entry in entries:
            if entry in table and table[entry] != split:
                raise CorpusError(f"splits: {entry!r} is listed in both {table[entry]!r} and {split!r}")
            table[entry] = split
    return table


def assign_splits(keys: Iterable[tuple[str, str]], table: Mapping[str, str], source: str) -> dict[tuple[str, str], str]:
    """Split of every (subject, sentence): the `<subject>_<sentence>` entry if listed, else the subject's."""
    out, unknown = {}, set()
    for subject, sentence in keys:
        split = table.get(f"{subject}_{sentence}", table.get(subject))
        if split is None:
            unknown.add(subject)
        out[(subject, sentence)] = split
    if unknown:
        raise CorpusError(
            f"{source}: subject(s) {sorted(unknown)} are not in the {source} split table; "
            f"pass splits={{'train': [...], 'val': [...], 'test': [...]}} naming them"
        )
    return out


# ---------------------------------------------------------------- the per-utterance loop


@dataclass
class Utterance:
    subject: str
    sentence: str
    load: Callable[[], tuple[np.ndarray, np.ndarray]]  # -> (16 kHz mono float32 audio, (T, V, 3) vertices)
    source: str  # the file(s) named in messages about this item

    @property
    def name(self) -> str:
        return f"{self.subject}_{self.sentence}"


def processed_utterances(processed_dir: Path, n_vertices: int) -> list[Utterance]:
    """The processed layout: wav/<subject>_<sentence>.wav (any rate, mono or stereo) and
    vertices_npy/<subject>_<sentence>.npy (T, V*3). A name present in only one folder is a broken item."""
    wav_dir = require_dir(processed_dir / "wav", "<subject>_<sentence>.wav files")
    npy_dir = require_dir(processed_dir / "vertices_npy", "<subject>_<sentence>.npy files")
    names = sorted({p.stem for p in wav_dir.glob("*.wav")} | {p.stem for p in npy_dir.glob("*.npy")})
    if not names:
        raise CorpusError(f"{processed_dir}: no .wav in wav/ and no .npy in vertices_npy/")
    out = []
    for name in names:
        if "_" not in name:
            raise CorpusError(f"{processed_dir}: file name {name!r} is not <subject>_<sentence>")
        subject, sentence = name.rsplit("_", 1)
        wav, npy = wav_dir / f"{name}.wav", npy_dir / f"{name}.npy"
        out.append(Utterance(subject, sentence, _processed_loader(wav, npy, n_vertices), f"{wav} with {npy}"))
    return out


def _processed_loader(wav: Path, npy: Path, n_vertices: int) -> Callable[[], tuple[np.ndarray, np.ndarray]]:
    def load() -> tuple[np.ndarray, np.ndarray]:
        for path, other in ((wav, npy), (npy, wav)):
            if not path.is_file():
                raise BrokenItem(f"{path}: file not found (expected alongside {other})")
        try:
            audio = load_wav(wav)
        except AudioError as e:
            raise BrokenItem(str(e)) from None
        return audio, load_vertices(npy, n_vertices)  # a wrong vertex count is an error, never skipped

    return load


def fit_lengths(
    audio: np.ndarray, verts: np.ndarray, fps: float, max_trim_s: float, where: str
) -> tuple[np.ndarray, np.ndarray, bool]:
    """Make audio and motion agree within one frame: as they are, by trimming the longer one's end when they
    are at most `max_trim_s` apart, else BrokenItem. Returns (audio, vertices, trimmed)."""
    if len(audio) == 0 or len(verts) == 0:
        raise BrokenItem(f"{where}: empty item ({len(audio)} audio samples, {len(verts)} motion frames)")
    audio_frames = len(audio) / SAMPLE_RATE * fps
    gap = audio_frames - len(verts)
    if abs(gap) <= 1.0:
        return audio, verts, False
    if abs(gap) <= max_trim_s * fps:
        if gap > 0:
            audio = audio[: round(len(verts) / fps * SAMPLE_RATE)]
        else:
            verts = verts[: int(np.floor(audio_frames))]
        return audio, verts, True
    msg = (
        f"{where}: audio lasts {len(audio) / SAMPLE_RATE:.3f} s = {audio_frames:.1f} frames at {fps} fps, "
        f"but the motion has {len(verts)} frames (more than {max(1.0, max_trim_s * fps):.1f} frames apart)"
    )
    ratio = len(verts) / audio_frames
    if ratio > 1.5 and abs(ratio - round(ratio)) < 0.1:
        msg += f"; the motion has about {round(ratio)}x the frames expected: check the vertex frame rate"
    raise BrokenItem(msg)


def frame_step(source_fps: int, fps: int) -> int:
    if fps <= 0 or source_fps % fps:
        raise CorpusError(f"cannot go from {source_fps} fps to {fps} fps by keeping every n-th frame")
    return source_fps // fps


def write_corpus(
    out_dir: str | Path,
    utterances: list[Utterance],
    *,
    dataset: str,
    templates: dict[str, np.ndarray],
    templates_source: Path,
    faces_path: str | Path,
    regions_dir: str | Path,
    transcripts_dir: str | Path,
    splits: Mapping[str, Iterable[str]],
    fps: int,
    source_fps: int,
    max_trim_s: float,
    skip_broken: bool,
) -> Path:
    """Check, trim and write every utterance, then templates.npz, topology.npz, manifest.csv and
    prepare_report.json ({written, skipped, trimmed, reasons: [{utterance, reason}]}).
    Templates, topology, transcripts and splits are checked before anything is written; manifest.csv is
    written last. `splits` is {split: [subject or <subject>_<sentence>]}. A broken item is skipped with a
    warning if `skip_broken`, else raised as a CorpusError."""
    n_vertices = next(iter(templates.values())).shape[0]
    missing = sorted({u.subject for u in utterances} - set(templates))
    if missing:
        raise CorpusError(f"{templates_source}: no template for subject(s) {missing}")
    topology = build_topology(faces_path, regions_dir, n_vertices)
    transcripts = Transcripts(transcripts_dir)
    texts = {u.name: transcripts.text(u.subject, u.sentence) for u in utterances}
    assigned = assign_splits([(u.subject, u.sentence) for u in utterances], split_table(splits), dataset)
    step = frame_step(source_fps, fps)
    out = Path(out_dir)
    (out / "wav").mkdir(parents=True, exist_ok=True)
    (out / "vertices_npy").mkdir(exist_ok=True)
    rows, reasons, trimmed = [], [], 0
    for u in sorted(utterances, key=lambda u: u.name):
        try:
            audio, verts = u.load()
            audio, verts, was_trimmed = fit_lengths(audio, verts[::step], fps, max_trim_s, u.source)
        except BrokenItem as e:
            if not skip_broken:
                raise CorpusError(str(e)) from None
            log.warning("skipping broken item %s: %s", u.name, e)
            reasons.append({"utterance": u.name, "reason": str(e)})
            continue
        if was_trimmed:
            trimmed += 1
            log.info("%s: trimmed to %d frames to match audio and motion", u.name, len(verts))
        wav_rel, npy_rel = f"wav/{u.name}.wav", f"vertices_npy/{u.name}.npy"
        save_wav(out / wav_rel, audio)
        np.save(out / npy_rel, np.ascontiguousarray(verts, dtype=np.float32).reshape(len(verts), -1))
        split = assigned[(u.subject, u.sentence)]
        rows.append(dict(utterance=u.name, subject=u.subject, sentence=u.sentence, split=split, text=texts[u.name],
                         n_frames=len(verts), fps=fps, wav=wav_rel, vertices=npy_rel))  # fmt: skip
    if not rows:
        raise CorpusError(f"{out}: no usable utterance; {len(reasons)} skipped, first: {reasons[:1]}")
    save_templates(out / "templates.npz", templates)
    topology.save(out / "topology.npz")
    write_manifest(out / "manifest.csv", rows)
    report = {"written": len(rows), "skipped": len(reasons), "trimmed": trimmed, "reasons": reasons}
    (out / "prepare_report.json").write_text(json.dumps(report, indent=2) + "\n")
    log_fn = log.warning if reasons else log.info
    log_fn("%s: wrote %d utterances, skipped %d broken, trimmed %d (see prepare_report.json)",
           out, len(rows), len(reasons), trimmed)  # fmt: skip
    return out
