import hashlib

import pytest


@pytest.fixture
def digest():
    """Hash of every file below a folder, by relative path: equal digests mean byte-identical trees."""

    def of(root):
        return {
            p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*"))
            if p.is_file()
        }

    return of


def pytest_collection_modifyitems(config, items):
    """Tests marked `cuda` run only where a CUDA device is."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
