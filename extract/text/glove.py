"""GloVe vectors in the published text format (glove.840B.300d.txt), read through an indexed cache.

The format is one word per line, `word v1 ... vD`, fields separated by single spaces, UTF-8. The authors'
reader (VSLNet's load_glove / filter_glove_embedding, img_spec.md §1.3, §7.30) opens the file as text
(universal newlines), strips each line, splits it on " " and skips every line that does not give exactly D + 1
fields, so the 840B file's tokens that contain a space are never found; a word listed twice keeps its last
vector; values are parsed as float64 and stored as float32. This reader applies the same rules, and also
skips (and counts) lines it cannot parse where the authors' code would crash (a bad number, invalid UTF-8).

Reading 5.6 GB of text takes minutes, so the first read of a file builds an index cache, keyed by the file's
name, size and modification time:

    <cache>/<name>-<size>-<mtime_ns>/
        meta.json      source name, size, sha256, dim, row count, skipped lines, build time
        words.txt      the words in file order, one a line
        vectors.f32    [rows, dim] float32, row-major: memory-mapped, so a lookup reads only the rows it needs

The cache is written under a temporary name and renamed when complete; later reads take seconds. The vectors
are streamed to disk as the file is read (2.6 GB for 840B: too large to build in memory); every file is saved
with `write_atomically` and the folder is installed with `install_folder` (extract/core/files.py). A full disk
or an I/O error is one GloveCacheWriteError line naming the cache folder and the cause, and the half-built
folder is removed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from extract.core.download import cache_dir
from extract.core.errors import ImgVmrError, MissingWeightsError
from extract.core.files import install_folder, write_atomically

log = logging.getLogger(f"img_vmr.{__name__}")

CACHE_FORMAT_VERSION = 1
BLOCK_BYTES = 1 << 24
DIM_PROBE_LINES = 1000


class GloveFormatError(ImgVmrError):
    """A file given as GloVe vectors is not in the GloVe text format."""


class GloveCacheWriteError(ImgVmrError):
    """The GloVe index could not be written (disk full, I/O error); nothing half-built is left."""


def default_cache_dir() -> Path:
    return cache_dir("glove-index")


@dataclass(frozen=True)
class GloveIndex:
    """A built cache: the words of a GloVe file and its memory-mapped float32 matrix."""

    folder: Path
    source_name: str
    source_size: int
    sha256: str
    dim: int
    rows: int
    skipped_lines: int
    build_seconds: float

    def words(self) -> list[str]:
        text = (self.folder / "words.txt").read_text(encoding="utf-8")
        return text.split("\n") if text else []

    def find(self, wanted: Iterable[str]) -> dict[str, int]:
        """Row of each wanted word the file has (its last occurrence, as in the authors' reader)."""
        wanted = set(wanted)
        return {word: row for row, word in enumerate(self.words()) if word in wanted}

    def matrix(self) -> np.memmap:
        return np.memmap(self.folder / "vectors.f32", dtype=np.float32, mode="r", shape=(self.rows, self.dim))

    def vectors(self, rows: Sequence[int]) -> np.ndarray:
        """[len(rows), dim] float32, reading only those rows from disk."""
        rows = np.asarray(rows, dtype=np.int64)
        order = np.argsort(rows, kind="stable")  # read the file front to back
        out = np.empty((len(rows), self.dim), dtype=np.float32)
        out[order] = self.matrix()[rows[order]]
        return out

    def provenance(self) -> dict[str, object]:
        return {
            "glove_file": self.source_name,
            "glove_size": self.source_size,
            "glove_sha256": self.sha256,
            "glove_dim": self.dim,
            "glove_rows": self.rows,
            "glove_skipped_lines": self.skipped_lines,
        }


def open_glove(path: Path, cache_dir: Path | None = None) -> GloveIndex:
    """The index of a GloVe text file, built on first use (minutes for 840B), loaded in milliseconds after."""
    if not path.is_file():
        raise MissingWeightsError(
            f"GloVe file {path} does not exist; download glove.840B.300d.zip from https://nlp.stanford.edu/"
            "projects/glove/, unzip it and pass --embed glove:PATH/glove.840B.300d.txt"
        )
    stat = path.stat()
    folder = (cache_dir or default_cache_dir()) / f"{path.name}-{stat.st_size}-{stat.st_mtime_ns}"
    for stale in folder.parent.glob(f".{folder.name}.*.tmp"):  # builds killed before their rename
        pid = stale.name.rsplit(".", 2)[-2]
        if not (pid.isdigit() and Path(f"/proc/{pid}").exists()):
            shutil.rmtree(stale, ignore_errors=True)
    if (folder / "meta.json").is_file():
        try:
            return _load(folder)
        except GloveFormatError as error:
            log.warning("%s; rebuilding it", error)
            shutil.rmtree(folder, ignore_errors=True)
    log.info("building the GloVe index of %s in %s (once per file)", path, folder)
    return _build(path, folder)


def cached_index(name: str, size: int, sha256: str, cache_dir: Path | None = None) -> GloveIndex | None:
    """The finished index of the GloVe file with this name, size and sha256 (as a recipe records it), if the
    cache holds one; None otherwise. Reads no GloVe file: what a checkpoint records is enough to find it."""
    folder = cache_dir or default_cache_dir()
    if not folder.is_dir():
        return None
    for candidate in sorted(folder.glob(f"{name}-{size}-*")):
        try:
            index = _load(candidate)
        except GloveFormatError:  # damaged or half-built: not this one
            continue
        if index.sha256 == sha256:
            return index
    return None


def _load(folder: Path) -> GloveIndex:
    """A finished index; GloveFormatError when it is damaged or of another version (the caller rebuilds it)."""
    try:
        meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
        index = GloveIndex(
            folder,
            meta["source_name"],
            meta["source_size"],
            meta["sha256"],
            meta["dim"],
            meta["rows"],
            meta["skipped_lines"],
            meta["build_seconds"],
        )
        complete = meta["format_version"] == CACHE_FORMAT_VERSION and (folder / "vectors.f32").stat().st_size == (
            meta["rows"] * meta["dim"] * 4
        )
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise GloveFormatError(f"the GloVe index {folder} is damaged ({type(error).__name__})") from None
    if not complete:
        raise GloveFormatError(f"the GloVe index {folder} is incomplete or of another format version")
    return index


def _text_lines(data: bytes) -> tuple[list[str], int]:
    """Lines as Python's text mode gives them (\\n, \\r\\n and \\r end a line); undecodable lines are dropped."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        lines, bad = [], 0
        for raw in data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n"):
            try:
                lines.append(raw.decode("utf-8"))
            except UnicodeDecodeError:
                bad += 1
        return lines, bad
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    return text.split("\n"), 0


def _parse(lines: list[str], dim: int) -> tuple[list[str], np.ndarray, int]:
    """Words and [n, dim] float32 vectors of the well-formed lines, and the count of skipped lines."""
    words, numbers, skipped = [], [], 0
    for line in lines:
        stripped = line.strip()
        if not stripped:
            continue
        if stripped.count(" ") != dim:  # not exactly dim + 1 fields: a token with a space, a short line, ...
            skipped += 1
            continue
        word, _, values = stripped.partition(" ")
        words.append(word)
        numbers.append(values)
    if not numbers:
        return [], np.empty((0, dim), np.float32), skipped
    try:
        matrix = np.loadtxt(numbers, dtype=np.float64, delimiter=" ", comments=None, ndmin=2)
    except ValueError:  # some line holds something that is not a number: find it, keep the others
        kept_words, rows = [], []
        for word, values in zip(words, numbers, strict=True):
            try:
                rows.append([float(x) for x in values.split(" ")])
                kept_words.append(word)
            except ValueError:
                skipped += 1
        words, matrix = kept_words, np.array(rows, dtype=np.float64).reshape(-1, dim)
    return words, matrix.astype(np.float32), skipped


def _infer_dim(lines: list[str], path: Path) -> int:
    """The most common number of values on the first lines (a few malformed lines do not mislead it)."""
    counts = Counter(s.count(" ") for s in (line.strip() for line in lines[:DIM_PROBE_LINES]) if s)
    if not counts or counts.most_common(1)[0][0] == 0:
        raise GloveFormatError(f"{path}: no line of the form 'word v1 ... vD'; not a GloVe text file")
    return counts.most_common(1)[0][0]


def _build(path: Path, folder: Path) -> GloveIndex:
    started = time.perf_counter()
    tmp = folder.with_name(f".{folder.name}.{os.getpid()}.tmp")
    digest = hashlib.sha256()
    words: list[str] = []
    skipped = 0
    dim: int | None = None  # the most common value count of the first lines
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()

        def stream_vectors(out: BinaryIO) -> None:  # written as the text is read: 2.6 GB for 840B
            nonlocal dim, skipped
            with open(path, "rb") as source:
                rest = b""
                while True:
                    block = source.read(BLOCK_BYTES)
                    digest.update(block)
                    data = rest + block
                    cut = data.rfind(b"\n") + 1 if block else len(data)
                    data, rest = data[:cut], data[cut:]
                    if data:
                        lines, undecodable = _text_lines(data)
                        if dim is None:
                            dim = _infer_dim(lines, path)
                        block_words, matrix, bad = _parse(lines, dim)
                        words.extend(block_words)
                        skipped += bad + undecodable
                        out.write(matrix.tobytes())
                    if not block:
                        break

        write_atomically(tmp / "vectors.f32", stream_vectors)
        if not words:
            raise GloveFormatError(f"{path}: no line of the form 'word v1 ... vD'; not a GloVe text file")
        write_atomically(tmp / "words.txt", "\n".join(words))
        seconds = time.perf_counter() - started
        assert dim is not None
        meta = {
            "format_version": CACHE_FORMAT_VERSION,
            "source_name": path.name,
            "source_size": path.stat().st_size,
            "sha256": digest.hexdigest(),
            "dim": dim,
            "rows": len(words),
            "skipped_lines": skipped,
            "build_seconds": round(seconds, 3),
        }
        write_atomically(tmp / "meta.json", json.dumps(meta, indent=1))
        if not install_folder(tmp, folder):  # another process finished the same index first: use it
            shutil.rmtree(tmp, ignore_errors=True)
    except OSError as error:
        shutil.rmtree(tmp, ignore_errors=True)
        if error.filename == str(path):
            raise GloveFormatError(f"cannot read the GloVe file {path} ({error.strerror})") from None
        reason = os.strerror(error.errno) if error.errno else str(error).splitlines()[0]
        raise GloveCacheWriteError(
            f"cannot build the GloVe index in {folder.parent}: {reason[:1].lower()}{reason[1:]}; "
            "make room there or pass --glove-cache DIR on another disk"
        ) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    index = _load(folder)
    log.info(
        "GloVe index: %d words of %d-d in %.1f s (%d lines skipped: not word + %d numbers)",
        index.rows,
        index.dim,
        seconds,
        skipped,
        index.dim,
    )
    return index
