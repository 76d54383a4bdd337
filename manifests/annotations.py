"""Published annotation files: where they come from (URL + sha256), the cache they are fetched into, checks.

A file is looked for in --data-dir, then in the annotations cache ($IMG_DATA_DIR, default
~/.cache/img-vmr/annotations), under its path relative to the authors' data/dataset/ folder
(charades/charades_sta_train_qid.txt). When missing it is downloaded into the cache on first use (from
$IMG_DATA_MIRROR when set, else the authors' repository; extract/core/download.py), unless the machine is offline
(HF_HUB_OFFLINE=1 or IMG_VMR_OFFLINE=1). A download whose sha256 differs from the published one is refused and
deleted; whatever the cache held before stays as it was.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from extract.core.download import cache_dir, download, offline, sha256_file
from manifests.errors import AnnotationDownloadError

log = logging.getLogger(f"img_vmr.{__name__}")

MIRROR_ENV = "IMG_DATA_MIRROR"  # a copy of the authors' data/dataset/ folder served elsewhere (URL ending in /)
# The IMG authors' repository at commit dab38b9 (../shared/data/README.md).
BASE_URL = "https://raw.githubusercontent.com/HuiGuanLab/IMG/dab38b98f51b5955d23661c8d37d340fd30282f7/data/dataset/"


@dataclass(frozen=True)
class AnnotationFile:
    path: str  # relative to BASE_URL and to every data folder
    sha256: str
    size: int

    @property
    def url(self) -> str:
        return (os.environ.get(MIRROR_ENV) or BASE_URL) + self.path

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]


def default_data_dir() -> Path:
    return cache_dir("annotations")


def verify_annotation(path: Path, file: AnnotationFile) -> str:
    """sha256 of path; AnnotationDownloadError when it is not the published file."""
    digest = sha256_file(path)
    if digest != file.sha256:
        raise AnnotationDownloadError(
            f"{path} has sha256 {digest[:16]}..., not the published {file.sha256[:16]}... of {file.url}; "
            "delete it to fetch it again"
        )
    return digest


def locate_annotation(file: AnnotationFile, data_dir: Path | None = None) -> Path:
    """The verified local copy of an annotation file, downloaded into the cache when missing and online."""
    if data_dir is not None and (data_dir / file.path).is_file():
        verify_annotation(data_dir / file.path, file)
        return data_dir / file.path
    cached = default_data_dir() / file.path
    if not offline():
        return fetch_annotation(file, default_data_dir())
    if cached.is_file():
        verify_annotation(cached, file)
        return cached
    where = " or ".join(str(folder) for folder in (data_dir, default_data_dir()) if folder is not None)
    raise AnnotationDownloadError(
        f"{file.path} is not in {where} and this machine is offline: download {file.url} into "
        f"DIR/{file.path} and pass --data-dir DIR"
    )


def fetch_annotation(file: AnnotationFile, cache: Path, refresh: bool = False) -> Path:
    """Download file into cache/<path> (extract/core/download.py: sha256 checked, then installed).

    A verified cached copy is reused unless refresh; a download that fails or does not match the published
    sha256 is refused, and the cached copy (if any) is left untouched.
    """
    target = cache / file.path
    if target.is_file() and not refresh:
        try:
            verify_annotation(target, file)
            return target
        except AnnotationDownloadError:
            log.warning("cached %s does not match its sha256; downloading it again", target)
    remedy = f"put the file at {target} or pass --data-dir DIR"
    download(file.url, target, {"sha256": file.sha256}, remedy=remedy, error=AnnotationDownloadError, progress=False)
    return target
