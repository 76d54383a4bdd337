"""The text store: per-query text inputs in one HDF5 file, with provenance, written crash-safely, resumable.

    text.h5                  the finished store, written when the run ends (temporary name, fsync, rename)
    text.h5.parts/           while a run is going: writer.lock and part-NNNNNN.h5, one immutable part per commit

A killed run loses at most the part being written; the next run with the same recipe skips every query
already in text.h5 or in a committed part (same qid and same sentence) and merges everything at the end. A
different recipe is refused ("use another --out"), like the feature store does.

Every file is built in memory by HDF5 (`hdf5_image`) and saved by `write_atomically` (extract/core/files.py),
as the feature store's parts are: a full disk or an I/O error is one StoreWriteError line naming the file and the
cause, no temporary file stays behind, and the committed parts are kept for the next
run. (HDF5 writing straight to a disk that fills up leaves the library holding objects it cannot close: a
stream of h5py tracebacks.)

text.h5:
    / attrs                 format, format_version, kind (glove | bert | clip-text), provenance (JSON:
                            recipe, software, runtime), queries, tokens
    /queries/qid, video_id, split, sentence     [N] str
    /queries/start, end, duration               [N] float64 seconds (as in the manifest)
    /queries/n_tokens       [N] int32: the query's rows in /tokens (in query order)
    /queries/truncated      [N] bool: the query had more tokens than the maximum length and was cut
    /queries/pooled         [N, P] float32 (clip-text: the projected text embedding)
    /tokens/text            [T] str: the tokens (words for GloVe; word pieces with special tokens otherwise)
    /tokens/word_ids        [T] int32 (glove): 0 PAD, 1 UNK, GloVe words from 2
    /tokens/n_chars         [T] int32 (glove): the token's rows in /chars/char_ids
    /chars/char_ids         [C] int32 (glove): character ids, 0 PAD, 1 UNK
    /tokens/token_ids       [T] int32 (bert, clip-text): the model's token ids
    /tokens/features        [T, D] float32 (bert, clip-text): last hidden state of each token; rows are stored
                            unpadded, so a query's attention mask is 1 on exactly its n_tokens rows
    /vocab/words [V] str, /vocab/vectors [V - 2, D] float32 (row k = word id k + 2), /vocab/chars [Vc] str
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from extract.core.errors import ProvenanceMismatchError, StoreCorruptError, StoreWriteError, UsageError, cannot_write
from extract.core.files import acquire_writer_lock, release_writer_lock, write_atomically
from extract.store.reader import hdf5_image
from manifests.records import QueryRecord

TEXT_STORE_FORMAT = "img-vmr-text-store"
TEXT_STORE_FORMAT_VERSION = 1
PARTS_SUFFIX = ".parts"
STR = h5py.string_dtype()
RECORD_STRINGS = ("qid", "video_id", "split", "sentence")
RECORD_TIMES = ("start", "end", "duration")
COPY_ROWS = 1 << 16


@dataclass
class TextBatch:
    """Finished queries to commit: per query its tokens and per-token arrays (first axis = tokens)."""

    records: list[QueryRecord]
    tokens: list[list[str]]
    truncated: list[bool]
    token_arrays: dict[str, list[np.ndarray]] = field(default_factory=dict)  # word_ids, token_ids, features
    pooled: np.ndarray | None = None  # [N, P]
    char_ids: list[list[np.ndarray]] | None = None  # glove: per query, per token

    def __len__(self) -> int:
        return len(self.records)


def _write_batch(group: h5py.Group, batch: TextBatch) -> None:
    queries, tokens = group.create_group("queries"), group.create_group("tokens")
    for name in RECORD_STRINGS:
        queries.create_dataset(name, data=[getattr(r, name) for r in batch.records], dtype=STR, maxshape=(None,))
    for name in RECORD_TIMES:
        values = np.array([getattr(r, name) for r in batch.records], np.float64)
        queries.create_dataset(name, data=values, maxshape=(None,))
    queries.create_dataset("n_tokens", data=np.array([len(t) for t in batch.tokens], np.int32), maxshape=(None,))
    queries.create_dataset("truncated", data=np.array(batch.truncated, bool), maxshape=(None,))
    if batch.pooled is not None:
        queries.create_dataset("pooled", data=batch.pooled, maxshape=(None, batch.pooled.shape[1]))
    flat = [token for query in batch.tokens for token in query]
    tokens.create_dataset("text", data=flat, dtype=STR, maxshape=(None,))
    for name, arrays in batch.token_arrays.items():
        data = np.concatenate(arrays) if arrays else np.empty((0,))
        tokens.create_dataset(name, data=data, maxshape=(None, *data.shape[1:]), chunks=True)
    if batch.char_ids is not None:
        words = [chars for query in batch.char_ids for chars in query]
        tokens.create_dataset("n_chars", data=np.array([len(c) for c in words], np.int32), maxshape=(None,))
        data = np.concatenate(words) if words else np.empty((0,), np.int32)
        group.create_group("chars").create_dataset("char_ids", data=data.astype(np.int32), maxshape=(None,))


def _fsync_write(path: Path, attrs: Mapping[str, Any], fill: Any) -> None:
    """Build an HDF5 file in memory, then save it under a temporary name, fsync'd and renamed into place;
    StoreWriteError (one line) when the disk refuses, with nothing left behind."""

    def build(f: h5py.File) -> None:
        for key, value in attrs.items():
            f.attrs[key] = value
        fill(f)

    image = hdf5_image(build)
    try:
        write_atomically(path, image)
    except OSError as error:
        raise _write_error(path, error) from None


def _write_error(path: Path, error: OSError) -> StoreWriteError:
    return cannot_write(f"the text store {path}", path.parent, error, StoreWriteError)


def _header(path: Path) -> dict[str, Any]:
    try:
        with h5py.File(path, "r", locking=False) as f:
            if f.attrs.get("format") != TEXT_STORE_FORMAT:
                raise StoreCorruptError(f"{path} is not an img-vmr text store")
            return {"kind": f.attrs["kind"], "provenance": json.loads(f.attrs["provenance"])}
    except OSError as error:
        raise StoreCorruptError(f"{path} is not readable as HDF5 ({str(error).splitlines()[0]})") from None


def _done_queries(path: Path) -> dict[str, str]:
    with h5py.File(path, "r", locking=False) as f:
        qids = f["queries/qid"].asstr()[()]
        sentences = f["queries/sentence"].asstr()[()]
    return dict(zip(qids.tolist(), sentences.tolist(), strict=True))


class TextStoreWriter:
    """The one writer of a text store: takes the lock, finds what is done, commits parts, merges them at close."""

    def __init__(self, path: Path, kind: str, provenance: Mapping[str, Any], resume: bool = True) -> None:
        self.path = path
        self.kind = kind
        self.provenance = dict(provenance)
        self.parts_dir = path.with_name(path.name + PARTS_SUFFIX)
        if path.suffix.lower() not in (".h5", ".hdf5"):
            raise UsageError(f"--out {path} should end in .h5")
        if path.is_dir():
            raise UsageError(f"--out {path} is a directory; give a file name such as {path}/text.h5")
        try:
            self.parts_dir.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise UsageError(f"cannot write {self.parts_dir} ({error.strerror}); choose a writable --out") from None
        try:
            self._lock_handle: Any = acquire_writer_lock(self.parts_dir, self.path)
        except OSError as error:  # the lock file records its holder: a full disk refuses even that
            raise _write_error(self.parts_dir / "writer.lock", error) from None
        self._sources: list[Path] = []
        self.done: dict[str, str] = {}  # qid -> sentence of every query already stored with this recipe
        self._current: dict[str, QueryRecord] | None = None  # this run's queries: what the final store holds
        try:
            if resume:
                self._find_done()
            else:
                for part in self.parts_dir.glob("part-*.h5"):
                    part.unlink()
        except BaseException:
            self.abandon()
            raise
        self._sequence = len(list(self.parts_dir.glob("part-*.h5")))

    def _check(self, path: Path) -> None:
        header = _header(path)
        recipe = header["provenance"].get("recipe", {})
        if header["kind"] != self.kind or recipe != self.provenance["recipe"]:
            changed = sorted(
                k
                for k in set(recipe) | set(self.provenance["recipe"])
                if recipe.get(k) != self.provenance["recipe"].get(k)
            )
            detail = ", ".join(f"{k}: {recipe.get(k)!r} -> {self.provenance['recipe'].get(k)!r}" for k in changed[:2])
            raise ProvenanceMismatchError(
                f"{path} holds {header['kind']} text features made differently ({detail or 'kind'}); "
                "use another --out, or --no-resume to replace them"
            )

    def _find_done(self) -> None:
        for tmp in [*self.parts_dir.glob(".part-*.tmp"), *self.path.parent.glob(f".{self.path.name}.*.tmp")]:
            tmp.unlink(missing_ok=True)  # left by a killed run
        sources = [self.path] if self.path.is_file() else []
        sources += sorted(self.parts_dir.glob("part-*.h5"))
        for source in sources:
            self._check(source)
            self.done.update(_done_queries(source))
        self._sources = sources

    def todo(self, records: Sequence[QueryRecord]) -> list[QueryRecord]:
        """The records not already stored with this recipe and the same sentence (text features depend on the
        sentence alone). The final store holds exactly these records, with their current times and videos."""
        self._current = {r.qid: r for r in records}
        return [r for r in records if self.done.get(r.qid) != r.sentence]

    def commit(self, batch: TextBatch) -> Path | None:
        if not len(batch):
            return None
        self._sequence += 1
        part = self.parts_dir / f"part-{self._sequence:06d}.h5"
        _fsync_write(part, {"format": TEXT_STORE_FORMAT, **self._attrs()}, lambda f: _write_batch(f, batch))
        self._sources.append(part)
        self.done.update((r.qid, r.sentence) for r in batch.records)
        return part

    def _attrs(self) -> dict[str, Any]:
        return {
            "format_version": TEXT_STORE_FORMAT_VERSION,
            "kind": self.kind,
            "provenance": json.dumps(self.provenance, sort_keys=True),
            "created_at": time.time(),
        }

    def close(self, vocab: Mapping[str, np.ndarray | Sequence[str]] | None = None) -> None:
        """Merge the stored queries and every part into the final file; later copies of a qid win."""
        try:
            if self._sources != [self.path] or self._current is not None:
                _fsync_write(self.path, {"format": TEXT_STORE_FORMAT, **self._attrs()}, lambda f: self._merge(f, vocab))
            shutil.rmtree(self.parts_dir)
        finally:
            self.abandon()

    def abandon(self) -> None:
        """Release the lock without merging; committed parts stay for the next run (the folder goes if empty)."""
        release_writer_lock(self._lock_handle)
        self._lock_handle = None
        if self.parts_dir.is_dir() and not list(self.parts_dir.glob("part-*.h5")):
            shutil.rmtree(self.parts_dir, ignore_errors=True)

    def _merge(self, out: h5py.File, vocab: Mapping[str, Any] | None) -> None:
        current = self._current
        last: dict[str, int] = {}
        for number, source in enumerate(self._sources):
            with h5py.File(source, "r", locking=False) as f:
                for qid, sentence in zip(
                    f["queries/qid"].asstr()[()].tolist(), f["queries/sentence"].asstr()[()].tolist(), strict=True
                ):
                    if current is None or (qid in current and current[qid].sentence == sentence):
                        last[qid] = number
        queries = tokens = 0
        for number, source in enumerate(self._sources):
            with h5py.File(source, "r", locking=False) as f:
                keep = np.array([last.get(q) == number for q in f["queries/qid"].asstr()[()].tolist()], bool)
                if keep.any():
                    queries, tokens = queries + int(keep.sum()), tokens + _append(out, f, keep)
        if "queries" not in out:  # nothing at all: an empty store with the full layout
            _write_batch(out, TextBatch([], [], []))
        elif current is not None:  # labels (video, times, split) are this run's, whatever a stored copy said
            stored = [current[q] for q in out["queries/qid"].asstr()[()].tolist()]
            for name in (*RECORD_STRINGS, *RECORD_TIMES):
                out["queries"][name][...] = [getattr(r, name) for r in stored]
        out.attrs["queries"], out.attrs["tokens"] = queries, tokens
        if vocab:
            group = out.create_group("vocab")
            for name, values in vocab.items():
                is_text = not isinstance(values, np.ndarray)
                group.create_dataset(name, data=list(values) if is_text else values, dtype=STR if is_text else None)


def _append(out: h5py.File, source: h5py.File, keep: np.ndarray) -> int:
    """Append the kept queries of one source (and their token and character rows); returns the token rows."""
    n_tokens = source["queries/n_tokens"][()]
    keep_tokens = np.repeat(keep, n_tokens)
    masks: dict[str, np.ndarray] = {"queries": keep, "tokens": keep_tokens}
    if "chars" in source:
        masks["chars"] = np.repeat(keep_tokens, source["tokens/n_chars"][()])
    for group_name, mask in masks.items():
        for name, dataset in source[group_name].items():
            _append_rows(out, f"{group_name}/{name}", dataset, mask)
    return int(keep_tokens.sum())


def _append_rows(out: h5py.File, name: str, dataset: h5py.Dataset, mask: np.ndarray) -> None:
    if name not in out:
        out.create_dataset(
            name, shape=(0, *dataset.shape[1:]), maxshape=(None, *dataset.shape[1:]), dtype=dataset.dtype, chunks=True
        )
    target = out[name]
    for start in range(0, dataset.shape[0], COPY_ROWS):
        rows = dataset[start : start + COPY_ROWS][mask[start : start + COPY_ROWS]]
        if len(rows):
            target.resize(target.shape[0] + len(rows), axis=0)
            target[-len(rows) :] = rows


class TextStore:
    """Read-only view of a finished text store; queries are looked up by qid."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            parts = self.path.with_name(self.path.name + PARTS_SUFFIX)
            hint = "; a run is unfinished there, re-run it to finish" if parts.is_dir() else ""
            raise StoreCorruptError(f"{self.path}: no such text store{hint}")
        header = _header(self.path)
        self.kind: str = header["kind"]
        self.provenance: dict[str, Any] = header["provenance"]
        self._file = h5py.File(self.path, "r", locking=False)
        self._qids: list[str] = self._file["queries/qid"].asstr()[()].tolist()
        self._row = {qid: row for row, qid in enumerate(self._qids)}
        self._token_offsets = np.concatenate([[0], np.cumsum(self._file["queries/n_tokens"][()], dtype=np.int64)])
        self._char_offsets: np.ndarray | None = None
        if "tokens/n_chars" in self._file:
            self._char_offsets = np.concatenate([[0], np.cumsum(self._file["tokens/n_chars"][()], dtype=np.int64)])

    def __len__(self) -> int:
        return len(self._qids)

    def __contains__(self, qid: object) -> bool:
        return qid in self._row

    def qids(self) -> list[str]:
        return list(self._qids)

    def records(self) -> list[QueryRecord]:
        group = self._file["queries"]
        columns = {name: group[name].asstr()[()].tolist() for name in RECORD_STRINGS}
        columns.update({name: group[name][()].tolist() for name in RECORD_TIMES})
        return [QueryRecord(**{k: columns[k][i] for k in columns}) for i in range(len(self))]

    def _tokens(self, qid: str) -> slice:
        row = self.row(qid)
        return slice(int(self._token_offsets[row]), int(self._token_offsets[row + 1]))

    def row(self, qid: str) -> int:
        try:
            return self._row[qid]
        except KeyError:
            raise KeyError(f"{self.path}: no query {qid!r}") from None

    def tokens(self, qid: str) -> list[str]:
        return self._file["tokens/text"].asstr()[self._tokens(qid)].tolist()

    def truncated(self, qid: str) -> bool:
        return bool(self._file["queries/truncated"][self.row(qid)])

    def word_ids(self, qid: str) -> np.ndarray:
        return self._file["tokens/word_ids"][self._tokens(qid)]

    def char_ids(self, qid: str) -> list[np.ndarray]:
        assert self._char_offsets is not None, f"{self.path} holds no character ids ({self.kind})"
        span = self._tokens(qid)
        start, stop = int(self._char_offsets[span.start]), int(self._char_offsets[span.stop])
        chars = self._file["chars/char_ids"][start:stop]
        bounds = self._char_offsets[span.start : span.stop + 1] - start
        return [chars[a:b] for a, b in itertools.pairwise(bounds)]

    def vocabulary(self) -> tuple[list[str], np.ndarray, list[str]]:
        """(words with <PAD>, <UNK> first, GloVe vectors [V - 2, D] with row k for word id k + 2, characters)."""
        vocab = self._file["vocab"]
        return vocab["words"].asstr()[()].tolist(), vocab["vectors"][()], vocab["chars"].asstr()[()].tolist()

    def token_ids(self, qid: str) -> np.ndarray:
        return self._file["tokens/token_ids"][self._tokens(qid)]

    def features(self, qid: str) -> np.ndarray:
        """[L, D] float32: the query's per-token features."""
        return self._file["tokens/features"][self._tokens(qid)]

    def pooled(self, qid: str) -> np.ndarray:
        return self._file["queries/pooled"][self.row(qid)]

    def batch(self, qids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Per-token features padded with zeros to [B, Lmax, D] and the attention mask [B, Lmax] (1 = token)."""
        rows = [self.features(qid) for qid in qids]
        length = max((len(r) for r in rows), default=0)
        dim = self._file["tokens/features"].shape[1]
        features = np.zeros((len(rows), length, dim), np.float32)
        mask = np.zeros((len(rows), length), np.int64)
        for i, row in enumerate(rows):
            features[i, : len(row)] = row
            mask[i, : len(row)] = 1
        return features, mask

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> TextStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
