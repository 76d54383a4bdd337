"""The extraction run: decode in worker threads, batch units across videos, embed, write on a writer thread.

    decode threads (one ffmpeg/decord per video) --bounded queue--> main thread: batches of units from
    many videos -> model --> writer thread: VideoRecord / FailureRecord -> immutable parts

Decoding happens in ffmpeg (or decord) outside the GIL, so threads give real parallelism while keeping
decoded frames in one address space (no pickling). The queue bound keeps memory flat in video length. A video
that fails at any stage becomes a failure record; the other videos go on.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import threading
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from extract.decode import AudioSampling, FrameSampling, frame_decoder_for, iter_audio, iter_frames
from extract.errors import ImgVmrError, VideoDecodeError
from extract.ffmpeg_binary import ffmpeg_version
from extract.models.base import FeatureExtractor, Units
from extract.probe import StreamMetadata, probe
from extract.sources import VideoSource
from extract.store import FailureRecord, FeatureStore, StoreWriter, Track, VideoRecord
from extract.versions import software_versions

log = logging.getLogger("img_vmr.extract")

PARTIAL_BATCH_WAIT_S = 0.5


@dataclass(frozen=True)
class RunConfig:
    batch_size: int = 64
    workers: int = 2
    resume: bool = True
    retry_failed: bool = False
    limit: int | None = None
    commit_every: int = 32
    commit_seconds: float = 60.0
    progress: bool = True


@dataclass
class RunSummary:
    total: int = 0
    done: int = 0
    skipped: int = 0
    skipped_failed: int = 0
    no_audio: int = 0
    frames: int = 0
    units: int = 0
    wall_seconds: float = 0.0
    failures: list[FailureRecord] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return 1 if self.failures or self.skipped_failed else 0

    def lines(self) -> list[str]:
        wall = max(self.wall_seconds, 1e-9)
        out = [
            f"summary: {self.done} done, {self.skipped} skipped (already in store), {len(self.failures)} failed, "
            f"{self.no_audio} without audio; {self.wall_seconds:.1f} s wall, {self.done / wall:.2f} videos/s, "
            f"{self.frames / wall:.1f} frames/s decoded, {self.units / wall:.1f} units/s embedded"
        ]
        if self.skipped_failed:
            out.append(f"{self.skipped_failed} videos failed in an earlier run and were skipped (--retry-failed)")
        out += [f"failed: {f.video_id} [{f.stage}] {f.message}" for f in self.failures]
        return out


# --- messages from decode threads to the main thread --------------------------------------------------------


@dataclass
class _UnitsReady:
    video_id: str
    feature: str
    units: Units


@dataclass
class _Decoded:
    video_id: str
    metadata: StreamMetadata
    decoders: dict[str, str]
    frames: int


@dataclass
class _Failed:
    record: FailureRecord


_WORKER_EXIT = object()


@dataclass
class _VideoState:
    source: VideoSource
    outstanding: int = 0
    rows: dict[str, list[np.ndarray]] = field(default_factory=lambda: defaultdict(list))
    spans: dict[str, list[np.ndarray]] = field(default_factory=lambda: defaultdict(list))
    decoded: _Decoded | None = None
    failed: bool = False


def software_provenance() -> dict[str, Any]:
    return {**software_versions(), "ffmpeg": ffmpeg_version()}


def provenance_records(extractors: Sequence[FeatureExtractor]) -> dict[str, dict[str, Any]]:
    software = software_provenance()
    records = {}
    for extractor in extractors:
        options = extractor.options
        runtime = {"device": str(options.device), "precision": options.precision}
        runtime["weights_checked"] = options.verify_weights
        frames = extractor.frame_sampling
        decoder = {"frame_decoder": frames.decoder, "rotated_videos_decoder": "ffmpeg"} if frames else {}
        if frames and frames.decoder == "decord":
            import decord

            decoder["decord"] = getattr(decord, "__version__", "unknown")
        # fp16/bf16 change the numbers, so the precision that really ran belongs to the recipe (CPU runs fp32).
        precision = options.precision if options.device.type == "cuda" else "fp32"
        records[extractor.name] = {
            "recipe": {**extractor.recipe(), "precision": precision},
            "software": {**software, **decoder},
            "runtime": runtime,
        }
    return records


class ExtractionRun:
    """One img-extract invocation over a list of videos into one store."""

    def __init__(
        self,
        sources: Sequence[VideoSource],
        store_path: Path,
        extractors: Sequence[FeatureExtractor],
        config: RunConfig,
    ) -> None:
        self.sources = list(sources)
        self.store_path = store_path
        self.extractors = {e.name: e for e in extractors}
        self.config = config
        self.summary = RunSummary(total=len(self.sources))
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max(4, 2 * config.workers))
        self._stop = threading.Event()
        self._decoder_threads = max(1, (os.cpu_count() or 1) // config.workers)
        self._frame_groups: dict[FrameSampling, list[FeatureExtractor]] = defaultdict(list)
        self._audio_groups: dict[AudioSampling, list[FeatureExtractor]] = defaultdict(list)
        for extractor in extractors:
            if extractor.frame_sampling is not None:
                self._frame_groups[extractor.frame_sampling].append(extractor)
            if extractor.audio_sampling is not None:
                self._audio_groups[extractor.audio_sampling].append(extractor)

    # --- planning ------------------------------------------------------------------------------------------

    def _plan(self, existing: FeatureStore | None) -> list[VideoSource]:
        names = list(self.extractors)
        for part, reason in existing.corrupt_parts if existing is not None else []:
            log.warning("damaged part %s ignored (%s); its videos will be extracted again", part.name, reason)
        todo = []
        failed_before = {f.video_id for f in existing.failures()} if existing is not None else set()
        for source in self.sources:
            if existing is not None and self.config.resume:
                if self._complete(existing, source.video_id, names):
                    self.summary.skipped += 1
                    continue
                if source.video_id in failed_before and not self.config.retry_failed:
                    self.summary.skipped_failed += 1
                    continue
            todo.append(source)
        if self.config.limit is not None:
            todo = todo[: self.config.limit]
        return todo

    def _complete(self, existing: FeatureStore, video_id: str, names: list[str]) -> bool:
        """Whether the store has every requested track (a video without audio has no audio tracks to have)."""
        if video_id not in existing:
            return False
        silent = not existing.metadata(video_id).get("has_audio", True)
        needed = [n for n in names if not (silent and self.extractors[n].preset.modality == "audio")]
        return existing.has_features(video_id, needed)

    # --- the run -------------------------------------------------------------------------------------------

    def run(self) -> RunSummary:
        start = time.monotonic()
        existing = FeatureStore(self.store_path) if FeatureStore.exists(self.store_path) else None
        writer = StoreWriter(self.store_path, provenance_records(list(self.extractors.values())))
        try:
            writer.check_provenance(existing)
            todo = self._plan(existing)
        except BaseException:
            writer.abandon()
            raise
        finally:
            if existing is not None:
                existing.close()
        log_file = _attach_log_file(writer.parts_dir / "extract.log")
        log.info(
            "%d videos: %d to extract, %d already in %s, %d failed before",
            len(self.sources),
            len(todo),
            self.summary.skipped,
            self.store_path,
            self.summary.skipped_failed,
        )
        writer_thread = _WriterThread(writer, self.config)
        writer_thread.start()
        try:
            self._extract(todo, writer_thread)
        finally:
            self._stop.set()
            try:
                writer_thread.finish()
            finally:
                self.summary.wall_seconds = time.monotonic() - start
                for line in self.summary.lines():
                    log.info("%s", line)
                logging.getLogger("img_vmr").removeHandler(log_file)
                log_file.close()
        return self.summary

    def _extract(self, todo: list[VideoSource], writer: _WriterThread) -> None:
        work: queue.Queue[VideoSource] = queue.Queue()
        for source in todo:
            work.put(source)
        workers = [
            threading.Thread(target=self._decode_worker, args=(work,), name=f"decode-{i}", daemon=True)
            for i in range(max(1, min(self.config.workers, len(todo))))
        ]
        for worker in workers:
            worker.start()
        states = {source.video_id: _VideoState(source) for source in todo}
        pending: dict[str, list[tuple[str, Units]]] = defaultdict(list)
        progress = _progress(len(todo), self.config.progress)
        alive = len(workers) if todo else 0
        try:
            while alive or any(pending.values()):
                try:
                    message = self._queue.get(timeout=PARTIAL_BATCH_WAIT_S if any(pending.values()) else None)
                except queue.Empty:
                    message = None  # decoders are slower than the model: embed what we have
                if message is _WORKER_EXIT:
                    alive -= 1
                elif isinstance(message, _UnitsReady):
                    state = states[message.video_id]
                    if not state.failed:
                        state.outstanding += len(message.units)
                        pending[message.feature].append((message.video_id, message.units))
                elif isinstance(message, _Decoded):
                    states[message.video_id].decoded = message
                    self.summary.frames += message.frames
                elif isinstance(message, _Failed):
                    self._fail(states[message.record.video_id], message.record, pending, writer, progress)
                flush_all = message is None or alive == 0
                for feature, items in pending.items():
                    while items and (flush_all or _count(items) >= self._batch_size(self.extractors[feature])):
                        self._embed_batch(feature, items, states, writer, progress)
                for state in list(states.values()):
                    if state.decoded is not None and state.outstanding == 0 and not state.failed:
                        self._finish_video(state, writer, progress)
                        del states[state.source.video_id]
                writer.raise_if_failed()
        finally:
            self._stop.set()
            progress.close()

    def _batch_size(self, extractor: FeatureExtractor) -> int:
        return min(self.config.batch_size, extractor.max_batch or self.config.batch_size)

    # --- decode side -----------------------------------------------------------------------------------------

    def _put(self, message: Any) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(message, timeout=0.5)
                return
            except queue.Full:
                continue

    def _decode_worker(self, work: queue.Queue[VideoSource]) -> None:
        try:
            while not self._stop.is_set():
                try:
                    source = work.get_nowait()
                except queue.Empty:
                    return
                self._decode_video(source)
        finally:
            self._put(_WORKER_EXIT)

    def _decode_video(self, source: VideoSource) -> None:
        stage = "probe"
        try:
            meta = probe(source.path)
            stage = "decode"
            decoders: dict[str, str] = {}
            frames = 0
            for sampling, extractors in self._frame_groups.items():
                decoder = frame_decoder_for(meta, sampling)
                chunks = iter_frames(meta, sampling, threads=self._decoder_threads)
                frames += self._cut_units(source, extractors, chunks)
                decoders.update({e.name: decoder for e in extractors})
            stage = "audio"
            for sampling, extractors in self._audio_groups.items():
                if meta.has_audio:
                    self._cut_units(source, extractors, iter_audio(meta, sampling))
                    decoders.update({e.name: "ffmpeg" for e in extractors})
            self._put(_Decoded(source.video_id, meta, decoders, frames))
        except Exception as error:
            message = str(error) if isinstance(error, ImgVmrError) else f"{type(error).__name__}: {error}"
            log.debug("%s failed at %s", source.video_id, stage, exc_info=True)
            record = FailureRecord(
                source.video_id, str(source.path), stage, type(error).__name__, message, tuple(self.extractors)
            )
            self._put(_Failed(record))

    def _cut_units(self, source: VideoSource, extractors: list[FeatureExtractor], chunks: Iterator[Any]) -> int:
        """Feed every chunk to each extractor's windower; return how many frames (or samples) were read."""
        windowers = {e.name: e.windower() for e in extractors}
        counts = dict.fromkeys(windowers, 0)
        read = 0
        for chunk in chunks:
            if self._stop.is_set():
                raise VideoDecodeError(f"{source.path}: run stopped before the video was decoded")
            read += len(chunk.data) if hasattr(chunk, "data") else len(chunk.samples)
            for name, windower in windowers.items():
                self._send_units(source.video_id, name, windower.push(chunk), counts)
        for name, windower in windowers.items():
            self._send_units(source.video_id, name, windower.finish(), counts)
        empty = [name for name, count in counts.items() if count == 0]
        if empty:
            raise VideoDecodeError(f"{source.path}: decoding gave no input for {', '.join(empty)} (empty stream)")
        return read

    def _send_units(self, video_id: str, feature: str, units: Units | None, counts: dict[str, int]) -> None:
        if units is not None and len(units):
            counts[feature] += len(units)
            self._put(_UnitsReady(video_id, feature, units))

    # --- compute side ----------------------------------------------------------------------------------------

    def _embed_batch(
        self,
        feature: str,
        items: list[tuple[str, Units]],
        states: dict[str, _VideoState],
        writer: _WriterThread,
        progress: Any,
    ) -> None:
        """Take up to batch_size units from the front of `items` (across videos), embed, hand rows back."""
        taken: list[tuple[str, Units]] = []
        extractor = self.extractors[feature]
        room = self._batch_size(extractor)
        while items and room:
            video_id, units = items[0]
            if len(units) <= room:
                taken.append(items.pop(0))
                room -= len(units)
            else:
                taken.append((video_id, Units(units.inputs[:room], units.spans[:room])))
                items[0] = (video_id, Units(units.inputs[room:], units.spans[room:]))
                room = 0
        try:
            rows = extractor.embed(np.concatenate([units.inputs for _, units in taken]))
            results = []
            offset = 0
            for video_id, units in taken:
                results.append((video_id, units, rows[offset : offset + len(units)]))
                offset += len(units)
        except Exception:
            log.debug("batch of %s failed; retrying video by video", feature, exc_info=True)
            results = self._embed_each(extractor, taken, states, items, writer, progress)
        for video_id, units, video_rows in results:
            state = states[video_id]
            state.rows[feature].append(video_rows)
            state.spans[feature].append(units.spans)
            state.outstanding -= len(units)
        self.summary.units += sum(len(units) for _, units, _ in results)

    def _embed_each(
        self,
        extractor: FeatureExtractor,
        taken: list[tuple[str, Units]],
        states: dict[str, _VideoState],
        items: list[tuple[str, Units]],
        writer: _WriterThread,
        progress: Any,
    ) -> list[tuple[str, Units, np.ndarray]]:
        """A failed batch is retried per video so that one bad input fails only its own video."""
        results = []
        for video_id, units in taken:
            state = states[video_id]
            if state.failed:
                continue
            try:
                results.append((video_id, units, extractor.embed(units.inputs)))
            except Exception as error:
                log.debug("%s: %s failed", video_id, extractor.name, exc_info=True)
                record = FailureRecord(
                    video_id,
                    str(state.source.path),
                    "compute",
                    type(error).__name__,
                    f"{extractor.name} failed on {state.source.path}: {type(error).__name__}: {error}",
                    tuple(self.extractors),
                )
                self._fail(state, record, {extractor.name: items}, writer, progress)
        return [(v, u, r) for v, u, r in results if not states[v].failed]

    def _fail(
        self,
        state: _VideoState,
        record: FailureRecord,
        pending: dict[str, list[tuple[str, Units]]],
        writer: _WriterThread,
        progress: Any,
    ) -> None:
        if state.failed:
            return
        state.failed = True
        for items in pending.values():
            items[:] = [item for item in items if item[0] != record.video_id]
        log.warning("failed %s: %s", record.video_id, record.message)
        self.summary.failures.append(record)
        writer.put(record)
        progress.update(1)

    def _finish_video(self, state: _VideoState, writer: _WriterThread, progress: Any) -> None:
        decoded = state.decoded
        assert decoded is not None
        tracks = {}
        for name in state.rows:
            rows = np.concatenate(state.rows[name])
            tracks[name] = Track(
                rows.reshape(-1, rows.shape[-1]),  # units with several rows (I3D windows) become consecutive rows
                np.concatenate(state.spans[name]).reshape(-1, 2),
                {"decoder": decoded.decoders.get(name, "")},
            )
        metadata = {**decoded.metadata.as_attrs(), "source_path": str(state.source.path.resolve())}
        writer.put(VideoRecord(state.source.video_id, metadata, tracks))
        self.summary.done += 1
        if not decoded.metadata.has_audio:
            self.summary.no_audio += 1
        progress.update(1)
        progress.set_postfix_str(f"{self.summary.frames / max(progress.format_dict['elapsed'], 1e-9):.0f} frames/s")


def _attach_log_file(path: Path) -> logging.Handler:
    """Every run appends its full log, failure tracebacks included, to OUT.parts/extract.log."""
    handler = logging.FileHandler(path, encoding="utf-8", errors="backslashreplace")
    handler.setLevel(logging.DEBUG)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(threadName)s %(message)s"))
    logging.getLogger("img_vmr").addHandler(handler)
    return handler


def _count(items: list[tuple[str, Units]]) -> int:
    return sum(len(units) for _, units in items)


def _progress(total: int, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, unit="video", desc="extract", disable=None if enabled else True, dynamic_ncols=True)


class _WriterThread:
    """Commits finished videos and failures as parts: every commit_every records or commit_seconds."""

    def __init__(self, writer: StoreWriter, config: RunConfig) -> None:
        self._writer = writer
        self._config = config
        self._queue: queue.Queue[VideoRecord | FailureRecord | None] = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="store-writer", daemon=True)
        self._error: BaseException | None = None

    def start(self) -> None:
        self._thread.start()

    def put(self, record: VideoRecord | FailureRecord) -> None:
        self._queue.put(record)

    def raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error

    def finish(self) -> None:
        """Commit everything still queued, rebuild the index, release the store."""
        self._queue.put(None)
        self._thread.join()
        with contextlib.suppress(Exception):
            self._writer.abandon()
        self.raise_if_failed()

    def _loop(self) -> None:
        last_commit = time.monotonic()
        try:
            while True:
                try:
                    record = self._queue.get(timeout=1.0)
                except queue.Empty:
                    record = False  # type: ignore[assignment]
                if record is None:
                    break
                if isinstance(record, VideoRecord):
                    self._writer.add_video(record)
                elif isinstance(record, FailureRecord):
                    self._writer.add_failure(record)
                due = time.monotonic() - last_commit >= self._config.commit_seconds
                if self._writer.pending >= self._config.commit_every or (due and self._writer.pending):
                    self._writer.commit()
                    last_commit = time.monotonic()
            self._writer.close()
        except BaseException as error:  # surfaced in the main thread by raise_if_failed
            self._error = error
            log.error("writing %s failed: %s", self._writer.path, error)
