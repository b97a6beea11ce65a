"""The committed hashes of two small corpora, one of each kind, that tests/test_synthetic*.py rebuild on whatever
machine runs them: the bytes must depend on the seed and the code only. After a deliberate change of either
generator: `python tests/corpus_hashes.py` writes tests/data/corpus_hashes.json anew (say why in the commit)."""

import hashlib
import json
import sys
import tempfile
from pathlib import Path

from avguide.data.synthetic import SyntheticConfig, build_corpus
from avguide.data.synthetic2d import Synthetic2DConfig, build_av_corpus

HASHES = Path(__file__).parent / "data" / "corpus_hashes.json"
SMALL_3D = SyntheticConfig(seed=7, subjects={"train": 2, "val": 1, "test": 1}, sentences_per_subject=6)
SMALL_2D = Synthetic2DConfig(seed=3, identities={"train": 2, "val": 1, "test": 1}, sentences_per_identity=2)


def file_hashes(root: Path) -> dict:
    """sha256 of every file below `root`, by relative path."""
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def committed(kind: str) -> dict:
    return json.loads(HASHES.read_text())[kind]


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        hashes = {
            "synth3d": file_hashes(build_corpus(Path(tmp) / "3d", SMALL_3D, progress=False)),
            "synth2d": file_hashes(build_av_corpus(Path(tmp) / "2d", SMALL_2D, progress=False)),
        }
    HASHES.write_text(json.dumps(hashes, indent=1, sort_keys=True) + "\n")
    sys.stdout.write(f"wrote {HASHES}\n")
