import hashlib

import pytest


@pytest.fixture
def digest():
    """Hash of every file below a folder, by relative path: equal digests mean byte-identical trees."""
    def of(root):
        return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(root.rglob("*")) if p.is_file()}
    return of
