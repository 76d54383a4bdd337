"""The local engine: decode in worker threads, batch units across videos, embed, write on a writer thread.

    decode threads (Probe, FrameSource, AudioSource per work item) --bounded queue--> main thread: Collector
    (VideoAssembly per video, Batcher across videos) -> Embed --> writer thread: Commit -> immutable parts

Decoding happens in ffmpeg (or decord) outside the GIL, so threads give real parallelism while keeping decoded
frames in one address space (no pickling). The queue bound keeps memory flat in video length. An engine is
built for one run and used once; what fails becomes failure records per (video, feature) and the rest goes on.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from extract.core.errors import VideoDecodeError
from extract.media.watchdog import progress_reports
from extract.models.base import ExtractorOptions, FeatureExtractor
from extract.models.presets import Preset
from extract.run.batcher import Batcher
from extract.run.collector import Collector, progress_bar
from extract.run.config import RunConfig
from extract.run.events import Embedded, Event
from extract.run.plan import WorkItem
from extract.run.provenance import load_models, recipes_without_models
from extract.run.stages import AudioSource, Commit, Embed, FrameSource, Probe, video_events
from extract.run.summary import RunSummary
from extract.store import FailureRecord, StoreWriter, VideoRecord

log = logging.getLogger(f"img_vmr.{__name__}")

PARTIAL_BATCH_WAIT_S = 0.5  # decoders slower than the model: embed what is queued after this long


@dataclass
class _Worker:
    """A decode thread and what the main thread knows about it."""

    name: str
    item: WorkItem | None = None
    last_progress: float = field(default_factory=time.monotonic)
    waiting: bool = False  # blocked on the full queue: the consumer holds it up, not the decoder
    abandoned: bool = False
    error: BaseException | None = None

    def touch(self) -> None:
        """Its decoder read something (called in the worker's thread, through extract.media.watchdog)."""
        self.last_progress = time.monotonic()


@dataclass
class _WorkerExit:
    worker: _Worker


class LocalModels:
    """The local engine as ExtractionRun uses it: the models loaded here once, a LocalEngine per run."""

    def __init__(
        self,
        presets: Sequence[Preset],
        options: ExtractorOptions,
        config: RunConfig,
        build: Callable[[Preset, ExtractorOptions], FeatureExtractor],
    ) -> None:
        self.presets, self.options, self.config, self.build = list(presets), options, config, build
        self.extractors: list[FeatureExtractor] | None = None
        self.provenance: dict[str, dict[str, Any]] = {}

    def prepare(self) -> dict[str, dict[str, Any]]:
        if self.extractors is None:
            self.extractors, self.provenance = load_models(self.presets, self.options, self.build)
        return self.provenance

    def recipes_without_models(self) -> dict[str, dict[str, Any]] | None:
        if self.extractors is not None:
            return {name: record["recipe"] for name, record in self.provenance.items()}
        return recipes_without_models(self.presets, self.options, self.build)

    def extract(self, items: list[WorkItem], writer: StoreWriter, summary: RunSummary) -> None:
        assert self.extractors is not None, "prepare() loads the models first"
        LocalEngine(items, self.extractors, writer, self.config, summary).run()

    def close(self) -> None:
        self.extractors = None


class LocalEngine:
    """The moving parts of one run on this machine; built by ExtractionRun.run() and used once."""

    def __init__(
        self,
        items: list[WorkItem],
        extractors: list[FeatureExtractor],
        writer: StoreWriter,
        config: RunConfig,
        summary: RunSummary,
        progress: Any = None,
    ) -> None:
        by_name = {e.name: e for e in extractors}
        self.config, self.summary, self.items = config, summary, items
        self.probe = Probe()
        self.frames = FrameSource(by_name, threads=max(1, (os.cpu_count() or 1) // config.workers))
        self.audio = AudioSource(by_name)
        self.embed = Embed(by_name)
        self.batcher: Batcher[WorkItem] = Batcher(batch_sizes({e.name: e.max_batch for e in extractors}, config))
        self.events: queue.Queue[Event | _WorkerExit] = queue.Queue(maxsize=max(4, 2 * config.workers))
        self.work: queue.SimpleQueue[WorkItem] = queue.SimpleQueue()
        self.stop = threading.Event()
        self.alive: dict[str, _Worker] = {}
        self.started = 0
        self.writer = WriterThread(Commit(writer, config.commit_every, config.commit_seconds))
        self.progress = progress if progress is not None else progress_bar(len(items), config.progress)
        self.collector = Collector(items, self.batcher, self.writer.put, summary, self.progress)

    def run(self) -> None:
        self.writer.start()
        try:
            for item in self.items:
                self.work.put(item)
            for _ in range(min(self.config.workers, len(self.items))):
                self._start_worker()
            self._loop()
        finally:
            self.stop.set()
            self.progress.close()
            self.writer.finish()  # commits every finished video (also when interrupted); raises a write error

    # --- the main thread ----------------------------------------------------------------------------------

    def _loop(self) -> None:
        poll = min(5.0, self.config.stall_seconds / 4)
        next_check = time.monotonic() + poll
        while self.alive or self.batcher.pending():
            try:
                event = self.events.get(timeout=PARTIAL_BATCH_WAIT_S if self.batcher.pending() else poll)
            except queue.Empty:
                event = None
            if time.monotonic() >= next_check:  # also while other workers keep the queue busy
                self._check_stalls()
                next_check = time.monotonic() + poll
            if event is not None:
                self._handle(event)
            flush = event is None or not self.alive
            for batch in self.batcher.all_batches() if flush else self.batcher.full_batches():
                for result in self.embed(batch):
                    self._handle(result)
            self.writer.raise_if_failed()
        self.collector.close()

    def _handle(self, event: Event | Embedded | _WorkerExit) -> None:
        if isinstance(event, _WorkerExit):
            self._worker_exited(event.worker)
        else:
            self.collector.handle(event)

    def _check_stalls(self) -> None:
        """A decode worker silent for stall_seconds loses its video; a fresh worker takes over the queue."""
        now = time.monotonic()
        for worker in list(self.alive.values()):
            item = worker.item
            if item is None or worker.waiting or now - worker.last_progress <= self.config.stall_seconds:
                continue  # idle, held up by this thread (a full queue), or recently heard from
            worker.abandoned = True
            del self.alive[worker.name]
            reason = VideoDecodeError(
                f"{item.path}: no decoding progress for {self.config.stall_seconds:.0f} s; given up (the run went on)"
            )
            self.collector.give_up(item, reason)
            self._start_worker()

    def _worker_exited(self, worker: _Worker) -> None:
        if self.alive.pop(worker.name, None) is None:
            return  # abandoned earlier
        if worker.item is not None and not self.stop.is_set():
            error = worker.error or VideoDecodeError(f"{worker.item.path}: the decoder stopped")
            self.collector.give_up(worker.item, error)
        if worker.error is not None and not self.stop.is_set() and not self.work.empty():
            self._start_worker()  # a bug in a stage ended this worker: the rest of the queue still gets decoded

    # --- decode threads -----------------------------------------------------------------------------------

    def _start_worker(self) -> None:
        self.started += 1
        worker = _Worker(f"decode-{self.started}")
        self.alive[worker.name] = worker
        threading.Thread(target=self._decode_reporting, args=(worker,), name=worker.name, daemon=True).start()

    def _decode_reporting(self, worker: _Worker) -> None:
        with progress_reports(worker.touch):  # every decoder read is progress, not only a finished chunk
            self._decode(worker)

    def _decode(self, worker: _Worker) -> None:
        try:
            while not self.stop.is_set() and not worker.abandoned:
                try:
                    item = self.work.get_nowait()
                except queue.Empty:
                    return
                worker.item, worker.last_progress = item, time.monotonic()
                with contextlib.closing(video_events(item, self.probe, self.frames, self.audio)) as events:
                    for event in events:
                        if self.stop.is_set() or worker.abandoned:
                            return
                        worker.waiting = True
                        self._put(event)
                        worker.waiting, worker.last_progress = False, time.monotonic()
                worker.item = None
        except BaseException as error:  # a bug in a stage: its video fails, the run goes on
            worker.error = error
            log.debug("decode worker %s stopped", worker.name, exc_info=True)
        finally:
            self._put(_WorkerExit(worker))

    def _put(self, message: Event | _WorkerExit) -> None:
        while not self.stop.is_set():
            try:
                self.events.put(message, timeout=0.5)
                return
            except queue.Full:
                continue


class WriterThread:
    """Runs the Commit stage on its own thread, so writing overlaps decoding and the model."""

    def __init__(self, commit: Commit) -> None:
        self._commit = commit
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
        """Commit everything still queued, rebuild the index, release the store; raise what writing raised."""
        self._queue.put(None)
        self._thread.join()
        self.raise_if_failed()

    def _loop(self) -> None:
        writer = self._commit.writer
        try:
            while True:
                try:
                    record = self._queue.get(timeout=1.0)
                except queue.Empty:
                    self._commit(None)
                    continue
                if record is None:
                    break
                self._commit(record)
            writer.close()
        except BaseException as error:  # surfaced in the main thread by raise_if_failed
            self._error = error
            log.debug("writing %s failed", writer.path, exc_info=True)
            writer.abandon()


def batch_sizes(max_batch: Mapping[str, int | None], config: RunConfig) -> dict[str, int]:
    """Units per forward pass of each feature: --batch-size, or less where its model takes less (`max_batch`)."""
    return {name: min(config.batch_size, limit or config.batch_size) for name, limit in max_batch.items()}
