"""Files fetched once from the internet into a cache: where the caches are, whether the machine may download,
and the one way a file is downloaded, verified and installed.

`download` works as torch.hub's download_url_to_file does: the bytes stream into a partial file beside the
target, are hashed as they arrive, the size is checked against the server's Content-Length, every published
checksum is compared, and only then is the file installed (fsync'd, renamed, folder fsync'd) with mode 0644
under the umask, so that a lab's shared cache or a container running as another user can read it. Whatever fails,
nothing is installed and no partial file stays behind; a file the cache held before stays as it was.

Caches (`cache_dir(kind)`), each under $XDG_CACHE_HOME/img-vmr (default ~/.cache/img-vmr) unless its own
variable names another folder:

    weights        $IMG_WEIGHTS_DIR       published model files (at the cache's top, as before)
    glove-index    (inside weights)       GloVe indexes built from the text files
    annotations    $IMG_DATA_DIR          published annotation files
    predict        $IMG_PREDICT_CACHE     img-predict's features of the videos it answered on
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import http.client
import json
import logging
import os
import secrets
import socket
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path

from extract.core.errors import ImgVmrError
from extract.core.files import install_file, write_atomically

log = logging.getLogger(f"img_vmr.{__name__}")

OFFLINE_ENVS = ("IMG_VMR_OFFLINE", "HF_HUB_OFFLINE")
CACHE_ENVS = {"weights": "IMG_WEIGHTS_DIR", "annotations": "IMG_DATA_DIR", "predict": "IMG_PREDICT_CACHE"}
INSTALLED_MODE = 0o644  # and the umask: readable by the group and others unless the umask says otherwise
BLOCK_BYTES = 1 << 20
TIMEOUT_S = 60.0
# Kinds of published checksum, as publishers give them: "sha256 prefix" is the 8 hex digits in a torch.hub file
# name, "git blob id" git's object id of a file in a pinned commit (sha1 of "blob <size>\0" + content), md5 Zenodo's.
CHECKSUM_KINDS = ("sha256", "git blob id", "md5", "sha256 prefix")
# Checksums already computed, by (path, size, mtime), in the weights cache.
CHECKSUM_CACHE = "checksums.json"
CHECKSUM_CACHE_ENTRIES = 256
CHECKSUM_CACHE_MIN_BYTES = 1 << 20  # smaller files hash in a blink: not worth an entry


def cache_dir(kind: str) -> Path:
    """The folder of one of img-vmr's caches (see the module's docstring)."""
    if kind == "glove-index":
        return cache_dir("weights") / "glove-index"
    if kind not in CACHE_ENVS:
        raise ValueError(f"unknown cache {kind!r}")
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "img-vmr"
    return Path(os.environ.get(CACHE_ENVS[kind]) or (root if kind == "weights" else root / kind))


def offline() -> bool:
    """Whether downloads are switched off (HF_HUB_OFFLINE=1 or IMG_VMR_OFFLINE=1)."""
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


# --- checksums ---------------------------------------------------------------------------------------------------


def _hasher(kind: str, size: int | None = None) -> hashlib._Hash:
    # md5 and sha1 name files here (Zenodo's checksum, git's object id); usedforsecurity=False lets FIPS builds run them
    if kind == "git blob id":
        digest = hashlib.sha1(usedforsecurity=False)
        digest.update(f"blob {size}\0".encode())  # git's object header, then the content
        return digest
    return hashlib.new("sha256" if kind == "sha256 prefix" else kind, usedforsecurity=False)


def _checksum_cache_file() -> Path:
    return cache_dir("weights") / CHECKSUM_CACHE


def _read_checksum_cache() -> dict[str, dict[str, object]]:
    try:
        entries = json.loads(_checksum_cache_file().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return entries if isinstance(entries, dict) else {}


def _remember_checksum(key: str, entry: dict[str, object]) -> None:
    """Add one checksum to the cache file (written atomically; a cache that cannot be written is only slower)."""
    entries = _read_checksum_cache()
    entries.pop(key, None)
    entries[key] = entry
    kept = dict(list(entries.items())[-CHECKSUM_CACHE_ENTRIES:])  # the newest: old files' entries fall out
    with contextlib.suppress(OSError):
        _checksum_cache_file().parent.mkdir(parents=True, exist_ok=True)
        write_atomically(_checksum_cache_file(), json.dumps(kept, indent=1))


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
    digest = _hasher(kind, size)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def file_digest(path: str | os.PathLike[str], kind: str = "sha256") -> str:
    """A checksum of a file (a kind of CHECKSUM_KINDS), computed once per (path, size, mtime): kept in this process
    and, for files of a MiB or more, in the weights cache's checksums.json for the next processes (hashing a 300 MB
    checkpoint took ~1 s of every run's start-up)."""
    stat = os.stat(path)
    return _digest_cached(str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns, kind)


def sha256_file(path: str | os.PathLike[str]) -> str:
    return file_digest(path, "sha256")


def mismatch(checksums: Mapping[str, str], digest_of: Callable[[str], str]) -> tuple[str, str, str] | None:
    """The first published checksum a file contradicts, as (kind, the file's digest, the published value shown);
    None when every one matches. `digest_of(kind)` gives the file's digest of a kind."""
    for kind, expected in checksums.items():
        digest = digest_of(kind)
        if not digest.startswith(expected):
            return kind.removesuffix(" prefix"), digest, f"{expected}..." if kind == "sha256 prefix" else expected
    return None


# --- downloading ---------------------------------------------------------------------------------------------------


def download(
    url: str,
    target: Path,
    checksums: Mapping[str, str],
    *,
    remedy: str,
    error: Callable[[str], ImgVmrError],
    progress: bool = True,
) -> str:
    """Download `url` into `target`, verified against `checksums` ({kind: value}, empty when the publisher gives
    none); return the file's sha256. `error` builds the one-line exception; `remedy` ends the message of a failed
    transfer (what the user can do instead)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.{secrets.token_hex(4)}.partial")
    kept = f"the cached {target} was kept" if target.is_file() else "nothing was cached"
    log.info("downloading %s", url)
    try:
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, INSTALLED_MODE)
        with os.fdopen(fd, "wb") as out:
            received, total, digests = _stream(url, out, checksums, target.name, progress)
            out.flush()
            os.fsync(out.fileno())
        if total is not None and received != total:
            raise error(
                f"the download of {url} stopped after {received:,} of {total:,} bytes; nothing was kept, {remedy}"
            )
        found = mismatch(checksums, lambda kind: digests.get(kind) or file_digest(partial, kind))
        if found is not None:
            kind, digest, shown = found
            raise error(
                f"the download of {url} has {kind} {digest[:16]}..., not the published {shown}; refused ({kept})"
            )
        install_file(partial, target)
    except (OSError, ValueError, http.client.HTTPException) as failure:  # ValueError: a URL without a scheme
        raise error(f"could not download {url} ({failure}); {remedy}") from None
    finally:
        with contextlib.suppress(OSError):
            partial.unlink(missing_ok=True)
    return digests["sha256"]


def _stream(
    url: str, out: object, checksums: Mapping[str, str], name: str, progress: bool
) -> tuple[int, int | None, dict[str, str]]:
    """Copy the response into `out`, hashing as it goes: (bytes received, Content-Length or None, digests)."""
    from tqdm import tqdm

    with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
        total = int(response.headers.get("Content-Length") or 0) or None
        kinds = {"sha256", *(k for k in checksums if k != "git blob id" or total is not None)} - {"sha256 prefix"}
        hashers = {kind: _hasher(kind, total) for kind in kinds}
        received = 0
        with tqdm(total=total, unit="B", unit_scale=True, desc=name, disable=None if progress else True) as bar:
            for block in iter(lambda: response.read(BLOCK_BYTES), b""):
                out.write(block)  # type: ignore[attr-defined]
                for hasher in hashers.values():
                    hasher.update(block)
                received += len(block)
                bar.update(len(block))
    digests = {kind: hasher.hexdigest() for kind, hasher in hashers.items()}
    if "git blob id" in digests and received != total:
        del digests["git blob id"]  # hashed with the announced size; the size check refuses the file anyway
    digests["sha256 prefix"] = digests["sha256"]
    return received, total, digests
