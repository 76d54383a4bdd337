"""The stages of an extraction, each a small object with one call that returns results or failure records.

    Probe        WorkItem -> Probed | Failed (every feature of the item)
    FrameSource  WorkItem, stream -> UnitsReady..., then SourceDone | Failed per frame sampling
    AudioSource  WorkItem, stream -> UnitsReady..., then SourceDone | Failed per audio sampling
    Embed        UnitBatch (units of one feature from many videos) -> Embedded | Failed per video
    Commit       finished records -> committed parts

They hold no threads or queues: the local engine runs the decode stages in worker threads and the model on its
main thread; another engine can run them in other processes. A failure is per (video, feature): an audio
stream that cannot be decoded fails the audio tracks, not the frames.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol

from extract.core.errors import ImgVmrError, VideoDecodeError
from extract.media.decode import (
    AudioChunk,
    AudioSampling,
    FrameBatch,
    FrameSampling,
    frame_decoder_for,
    iter_audio,
    iter_frames,
)
from extract.media.probe import StreamMetadata, probe
from extract.models.base import FeatureExtractor, Units, Windower
from extract.run.batcher import Piece, UnitBatch
from extract.run.events import Embedded, Event, Failed, Probed, SourceDone, UnitsReady
from extract.run.plan import WorkItem
from extract.store import FailureRecord, StoreWriter, VideoRecord

log = logging.getLogger(f"img_vmr.{__name__}")


class UnitCutter(Protocol):
    """What the decode stages need of an extractor: its samplings and a fresh windower (not its weights), so a
    decode process elsewhere can run them (a FeatureExtractor is one; extract/run/ray_workers.DecodeView too)."""

    @property
    def frame_sampling(self) -> FrameSampling | None: ...

    @property
    def audio_sampling(self) -> AudioSampling | None: ...

    def windower(self) -> Windower: ...


def failure(item: WorkItem, features: tuple[str, ...], stage: str, error: BaseException) -> FailureRecord:
    """A failure record with the reason in one line; the traceback goes to the log (OUT.parts/extract.log)."""
    message = str(error) if isinstance(error, ImgVmrError) else f"{item.path}: {type(error).__name__}: {error}"
    message = " ".join(line.strip() for line in message.splitlines() if line.strip())  # a model's error spans lines
    log.debug("%s failed at %s (%s)", item.video_id, stage, ", ".join(features), exc_info=error)
    return FailureRecord(item.video_id, str(item.path), stage, type(error).__name__, message, features)


class Probe:
    """Stream facts of a video as the store records them."""

    def __call__(self, item: WorkItem) -> Probed | Failed:
        try:
            stream = probe(item.path)
        except Exception as error:
            return Failed(failure(item, item.features, "probe", error))
        metadata = {
            **stream.as_attrs(),
            "source_path": str(Path(item.path).resolve()),
        }
        return Probed(item, stream, metadata)


def _groups(extractors: Mapping[str, UnitCutter], kind: str) -> dict[object, list[str]]:
    """Feature names grouped by the sampling they decode with (features sharing one decode it once)."""
    groups: dict[object, list[str]] = defaultdict(list)
    for name, extractor in extractors.items():
        sampling = extractor.frame_sampling if kind == "frames" else extractor.audio_sampling
        if sampling is not None:
            groups[sampling].append(name)
    return groups


def _requested(groups: dict[object, list[str]], item: WorkItem) -> Iterator[tuple[Any, tuple[str, ...]]]:
    """(sampling, features of the item it serves) for the samplings a missing track needs: nothing else is decoded."""
    for sampling, names in groups.items():
        wanted = tuple(name for name in names if name in item.features)
        if wanted:
            yield sampling, wanted


class _Cut:
    """Feeds one video's decoded chunks to each feature's windower and counts what was read and cut."""

    def __init__(
        self, item: WorkItem, stream: StreamMetadata, extractors: Mapping[str, UnitCutter], features: tuple[str, ...]
    ) -> None:
        self.item = item
        self.windowers: dict[str, Windower] = {name: extractors[name].windower() for name in features}
        for windower in self.windowers.values():
            windower.start(stream)
        self.units = dict.fromkeys(features, 0)
        self.read = 0  # frames, or audio samples

    def __call__(self, chunks: Iterable[FrameBatch | AudioChunk]) -> Iterator[UnitsReady]:
        for chunk in chunks:
            self.read += len(chunk) if isinstance(chunk, FrameBatch) else len(chunk.samples)
            for name, windower in self.windowers.items():
                yield from self._ready(name, windower.push(chunk))
        for name, windower in self.windowers.items():
            yield from self._ready(name, windower.finish())

    def _ready(self, feature: str, units: Units | None) -> Iterator[UnitsReady]:
        if units is not None and len(units):
            self.units[feature] += len(units)
            yield UnitsReady(self.item, feature, units)


class FrameSource:
    """Sampled frames of a video, cut into the units of its missing visual tracks."""

    def __init__(self, extractors: Mapping[str, UnitCutter], threads: int = 0) -> None:
        self._extractors = extractors
        self._groups = _groups(extractors, "frames")
        self._threads = threads

    def __call__(self, item: WorkItem, stream: StreamMetadata) -> Iterator[Event]:
        for sampling, wanted in _requested(self._groups, item):
            cut = _Cut(item, stream, self._extractors, wanted)
            try:
                yield from cut(iter_frames(stream, sampling, threads=self._threads))
                empty = [name for name, count in cut.units.items() if count == 0]
                if empty:
                    raise VideoDecodeError(f"{item.path}: decoding gave no frames for {', '.join(empty)}")
            except Exception as error:
                yield Failed(failure(item, wanted, "decode", error))
                continue
            decoder = frame_decoder_for(stream, sampling)
            yield SourceDone(item, wanted, dict.fromkeys(wanted, decoder), frames=cut.read)


class AudioSource:
    """Mono audio of a video, cut into the units of its missing audio tracks. No audio stream, or one without a
    single sample, is not a failure: the video is recorded without audio. A stream that cannot be decoded fails
    the audio tracks only."""

    def __init__(self, extractors: Mapping[str, UnitCutter]) -> None:
        self._extractors = extractors
        self._groups = _groups(extractors, "audio")

    def __call__(self, item: WorkItem, stream: StreamMetadata) -> Iterator[Event]:
        for sampling, wanted in _requested(self._groups, item):
            if not stream.has_audio:
                yield SourceDone(item, wanted, audio_found=False)
                continue
            cut = _Cut(item, stream, self._extractors, wanted)
            try:
                yield from cut(iter_audio(stream, sampling))
            except Exception as error:
                yield Failed(failure(item, wanted, "audio", error))
                continue
            if cut.read == 0:
                log.info("%s: its audio stream holds no samples; recorded without audio", item.path)
            yield SourceDone(item, wanted, dict.fromkeys(wanted, "ffmpeg"), audio_found=cut.read > 0)


def video_events(item: WorkItem, probe_stage: Probe, frames: FrameSource, audio: AudioSource) -> Iterator[Event]:
    """Everything the decode side produces for one work item, in order."""
    probed = probe_stage(item)
    yield probed
    if isinstance(probed, Probed):
        yield from frames(item, probed.stream)
        yield from audio(item, probed.stream)


class Embed:
    """Embeds a batch of one feature's units from many videos. A failed batch is retried video by video, so
    one bad input fails only its own (video, feature)."""

    def __init__(self, extractors: Mapping[str, FeatureExtractor]) -> None:
        self._extractors = extractors

    def __call__(self, batch: UnitBatch[WorkItem]) -> list[Embedded | Failed]:
        extractor = self._extractors[batch.feature]
        try:
            rows = extractor.embed(batch.inputs())
            return [Embedded(piece.key, batch.feature, piece.units, part) for piece, part in batch.split(rows)]
        except Exception:
            log.debug("a batch of %s failed; retrying video by video", batch.feature, exc_info=True)
        by_video: dict[WorkItem, list[Piece[WorkItem]]] = defaultdict(list)
        for piece in batch.pieces:
            by_video[piece.key].append(piece)
        results: list[Embedded | Failed] = []
        for item, pieces in by_video.items():
            try:
                results += [
                    Embedded(item, batch.feature, piece.units, extractor.embed(piece.units.inputs)) for piece in pieces
                ]
            except Exception as error:
                results.append(Failed(failure(item, (batch.feature,), "compute", error)))
        return results


class Commit:
    """Adds finished records to the store and commits them as a part every `every` records or `seconds`."""

    def __init__(self, writer: StoreWriter, every: int, seconds: float) -> None:
        self.writer = writer
        self._every, self._seconds = every, seconds
        self._last = time.monotonic()

    def __call__(self, record: VideoRecord | FailureRecord | None = None) -> Path | None:
        """Add a record (None: only check the clock); return the part committed now, if any."""
        if isinstance(record, VideoRecord):
            self.writer.add_video(record)
        elif isinstance(record, FailureRecord):
            self.writer.add_failure(record)
        due = self.writer.pending >= self._every or (
            self.writer.pending > 0 and time.monotonic() - self._last >= self._seconds
        )
        if not due:
            return None
        part = self.writer.commit()
        self._last = time.monotonic()
        return part
