"""Paths of the real files the tests use, all inside the repository (tests/data, described in its README)."""

from __future__ import annotations

import atexit
import functools
import gzip
import shutil
import tempfile
from pathlib import Path

TEST_DATA = Path(__file__).resolve().parent / "data"
REAL_VIDEO = TEST_DATA / "media" / "v_ZNVhz7ctTq0.mp4"  # a real ActivityNet video with AAC audio
GOOGLE_VGGISH_PCA = TEST_DATA / "weights" / "vggish_pca_params.npz"  # Google's published PCA parameters


@functools.cache
def annotations_dir() -> Path:
    """The public annotation files, byte for byte (their sha256 as published), unpacked once per test process."""
    target = Path(tempfile.mkdtemp(prefix="img-vmr-annotations-"))
    atexit.register(shutil.rmtree, target, ignore_errors=True)
    for packed in sorted((TEST_DATA / "annotations").glob("*/*.gz")):
        out = target / packed.parent.name / packed.stem
        out.parent.mkdir(exist_ok=True)
        with gzip.open(packed, "rb") as source, open(out, "wb") as sink:
            shutil.copyfileobj(source, sink)
    return target
