"""Running a finished img-extract command again: the store is checked against the recipes the models would record,
found without loading a model (extract/run/extraction.py), so the re-run reads no weights yet refuses a store made
differently as before (tests/test_cli.py: another --fps on a resumed CLIP store)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.conftest import run_cli
from tests.videos import make_video


def test_a_finished_run_again_loads_no_model_but_still_refuses_other_recipes(
    tmp_path: Path, published_weights: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IMG_WEIGHTS_DIR", str(tmp_path / "cache"))  # its checksums.json: this test's alone
    weights = tmp_path / "weights" / "rgb_imagenet.pt"
    weights.parent.mkdir()
    shutil.copy2(published_weights / "rgb_imagenet.pt", weights)
    make_video(tmp_path / "v" / "a.mp4", seconds=0.5, size="64x48")
    out = tmp_path / "feats.h5"
    flags = ("--features", "i3d", "--weights-dir", weights.parent, "--trust-weights", "--backend", "torch")
    first = run_cli(tmp_path / "v", "--out", out, *flags)
    assert first.returncode == 0, first.stderr
    assert "1 done, 0 skipped (already in store), 0 failed" in first.stderr

    # Garbage of the same size and mtime: its cached sha256 still names the weights the store was made with, but
    # loading the model would fail. The re-run has nothing to extract, so it never loads it.
    stat = weights.stat()
    weights.write_bytes(bytes(stat.st_size))
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    again = run_cli(tmp_path / "v", "--out", out, *flags)
    assert again.returncode == 0, again.stderr
    assert "0 done, 1 skipped (already in store), 0 failed, 0 without audio" in again.stderr

    os.utime(weights)  # now a changed file: its sha256 is computed again, and differs
    changed = run_cli(tmp_path / "v", "--out", out, *flags)
    assert changed.returncode == 2
    assert "already holds 'i3d' features made differently (weights_sha256: " in changed.stderr
