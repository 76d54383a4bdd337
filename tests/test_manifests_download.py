"""Annotation files are downloaded on first use into the cache, verified, and a bad download is refused."""

from __future__ import annotations

import http.server
import os
import shutil
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from manifests import annotations
from manifests.errors import AnnotationDownloadError
from manifests.records import split_counts
from manifests.registry import CHARADES_TRAIN, load_dataset
from tests.testdata import annotations_dir


def _serve(folder: Path) -> http.server.ThreadingHTTPServer:
    handler = lambda *a, **k: http.server.SimpleHTTPRequestHandler(*a, directory=str(folder), **k)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture
def mirror(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A loopback HTTP mirror of the authors' data/dataset/ folder (a copy we can corrupt), and an empty cache."""
    served = tmp_path / "served"
    shutil.copytree(annotations_dir(), served)
    for path in served.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    server = _serve(served)
    monkeypatch.setenv(annotations.MIRROR_ENV, f"http://127.0.0.1:{server.server_address[1]}/")
    monkeypatch.setenv("IMG_DATA_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("IMG_VMR_OFFLINE", raising=False)
    yield served
    server.shutdown()


def test_first_use_downloads_verifies_and_parses(mirror: Path, tmp_path: Path) -> None:
    queries = load_dataset("charades-sta")
    assert split_counts(queries.records) == {"train": 12408, "test": 3720}
    cached = sorted(p.relative_to(tmp_path / "cache").as_posix() for p in (tmp_path / "cache").rglob("*.*"))
    assert cached == [
        "charades/charades.json",
        "charades/charades_sta_test_qid.txt",
        "charades/charades_sta_train_qid.txt",
    ]


def test_second_use_reads_the_cache_without_the_network(mirror: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    load_dataset("charades-am")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert split_counts(load_dataset("charades-am").records) == {"train": 12408, "test": 1196}


def test_corrupted_download_is_refused_and_the_old_cache_kept(mirror: Path, tmp_path: Path) -> None:
    good = annotations.fetch_annotation(CHARADES_TRAIN, tmp_path / "cache")
    before = good.read_bytes()
    (mirror / CHARADES_TRAIN.path).write_bytes(before.replace(b"person", b"persno", 1))
    with pytest.raises(AnnotationDownloadError) as error:
        annotations.fetch_annotation(CHARADES_TRAIN, tmp_path / "cache", refresh=True)
    message = str(error.value)
    assert "not the published 0ac87f6371c62144" in message and "kept" in message and "\n" not in message
    assert good.read_bytes() == before
    assert sorted(p.name for p in good.parent.iterdir()) == ["charades_sta_train_qid.txt"]  # no temporary left


def test_corrupted_first_download_caches_nothing(mirror: Path, tmp_path: Path) -> None:
    (mirror / CHARADES_TRAIN.path).write_bytes(b"AO8RW 0.0 6.9##qid_0##tampered.\n")
    with pytest.raises(AnnotationDownloadError, match=r"refused \(nothing was cached\)"):
        annotations.locate_annotation(CHARADES_TRAIN)
    assert not any(p.is_file() for p in (tmp_path / "cache").rglob("*"))


def test_a_damaged_cached_file_is_downloaded_again(mirror: Path, tmp_path: Path) -> None:
    target = tmp_path / "cache" / CHARADES_TRAIN.path
    target.parent.mkdir(parents=True)
    target.write_bytes(b"truncated")
    assert annotations.locate_annotation(CHARADES_TRAIN) == target
    assert annotations.sha256_file(target) == CHARADES_TRAIN.sha256


def test_a_wrong_file_in_data_dir_is_refused(tmp_path: Path) -> None:
    (tmp_path / "charades").mkdir()
    (tmp_path / CHARADES_TRAIN.path).write_text("AO8RW 0.0 6.9##qid_0##a person.\n")
    with pytest.raises(AnnotationDownloadError, match=r"not the published .* delete it to fetch it again"):
        annotations.locate_annotation(CHARADES_TRAIN, tmp_path)


def test_missing_file_offline_names_the_file_url_and_flag(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("IMG_DATA_DIR", str(tmp_path / "cache"))
    with pytest.raises(AnnotationDownloadError) as error:
        load_dataset("activitynet", tmp_path)
    message = str(error.value)
    assert "activitynet/train.json" in message and "raw.githubusercontent.com/HuiGuanLab/IMG" in message
    assert "--data-dir" in message and "\n" not in message


def test_a_downloaded_annotation_file_is_installed_0644_under_the_umask(mirror: Path, tmp_path: Path) -> None:
    """It was installed 0600 (the mode of its temporary file): a shared annotations folder could not be read."""
    previous = os.umask(0o022)
    try:
        path = annotations.fetch_annotation(CHARADES_TRAIN, tmp_path / "cache")
    finally:
        os.umask(previous)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
