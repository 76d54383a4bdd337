"""Where model weights come from, and their checksums for provenance."""

from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path

WEIGHTS_DIR_ENV = "IMG_WEIGHTS_DIR"


def default_weights_dir() -> Path:
    return Path(os.environ.get(WEIGHTS_DIR_ENV) or Path.home() / ".cache" / "img-vmr")


@functools.cache
def _sha256_cached(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_file(path: str | os.PathLike[str]) -> str:
    """sha256 of a file, computed once per (path, size, mtime) in this process."""
    stat = os.stat(path)
    return _sha256_cached(str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)
