"""The caches img-vmr downloads into (extract/core/download.py): one cache_dir(kind) for every kind."""

from __future__ import annotations

from pathlib import Path

import pytest

from extract.core.download import cache_dir


def test_every_cache_is_under_xdg_cache_home_unless_its_own_variable_names_another(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("IMG_WEIGHTS_DIR", "IMG_DATA_DIR", "IMG_PREDICT_CACHE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    root = tmp_path / "xdg" / "img-vmr"
    assert cache_dir("weights") == root  # the published weights stay at the cache's top, as before
    assert cache_dir("glove-index") == root / "glove-index"
    assert cache_dir("annotations") == root / "annotations"
    assert cache_dir("predict") == root / "predict"
    monkeypatch.setenv("IMG_WEIGHTS_DIR", str(tmp_path / "weights"))
    monkeypatch.setenv("IMG_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("IMG_PREDICT_CACHE", str(tmp_path / "predict"))
    assert cache_dir("weights") == tmp_path / "weights"
    assert cache_dir("glove-index") == tmp_path / "weights" / "glove-index"
    assert cache_dir("annotations") == tmp_path / "data"
    assert cache_dir("predict") == tmp_path / "predict"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.delenv("IMG_DATA_DIR")
    assert cache_dir("annotations") == Path.home() / ".cache" / "img-vmr" / "annotations"
