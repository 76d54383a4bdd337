"""What every engine's main loop does with the events of its videos: put each video together, batch its units,
and hand its finished records to the writer.

An engine owns the moving parts (threads, processes, Ray tasks); the Collector owns the bookkeeping: one
VideoAssembly per open video, the Batcher across videos, the summary counts and the progress bar. Records of a
video go to `put` (the writer) exactly once, when every requested track is settled; events of a video that was
closed already are ignored.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

from extract.core.errors import VideoDecodeError
from extract.run.assembly import VideoAssembly
from extract.run.batcher import Batcher
from extract.run.events import Embedded, Event, Failed, Probed, SourceDone, UnitsReady
from extract.run.plan import WorkItem
from extract.run.stages import failure
from extract.run.summary import RunSummary
from extract.store import FailureRecord, VideoRecord

log = logging.getLogger(f"img_vmr.{__name__}")


class Collector:
    def __init__(
        self,
        items: Iterable[WorkItem],
        batcher: Batcher[WorkItem],
        put: Callable[[VideoRecord | FailureRecord], None],
        summary: RunSummary,
        progress: Any,
    ) -> None:
        self.items_by_id = {item.video_id: item for item in items}
        self.batcher = batcher
        self.put = put
        self.summary = summary
        self.progress = progress
        self.assemblies: dict[str, VideoAssembly] = {}
        self.closed: set[str] = set()  # videos whose records went to the writer: late events are ignored

    def handle(self, event: Event | Embedded) -> None:
        if isinstance(event, Failed):
            self.fail(event.record)
            return
        if event.item.video_id in self.closed:
            return
        assembly = self.assembly(event.item.video_id)
        if isinstance(event, Probed):
            assembly.probed(event.metadata)
        elif isinstance(event, UnitsReady):
            if assembly.wants(event.feature):
                assembly.queued(event.feature, len(event.units))
                self.batcher.add(event.feature, event.item, event.units)
        elif isinstance(event, SourceDone):
            assembly.source_done(event)
            self.summary.frames += event.frames
        elif isinstance(event, Embedded):
            assembly.embedded(event)
            self.summary.units += len(event.units)
        self._finish_if_done(assembly)

    def fail(self, record: FailureRecord) -> None:
        video_id = record.video_id
        if video_id in self.closed:
            return
        assembly = self.assembly(video_id)
        failed = assembly.fail(record)
        if failed:
            self.batcher.drop(assembly.item, failed)
            log.warning("failed %s: %s", video_id, record.message)
        self._finish_if_done(assembly)

    def give_up(self, item: WorkItem, error: BaseException, stage: str = "decode") -> None:
        """Fail what is still open of a video whose decoder (or worker) will send nothing more."""
        if item.video_id not in self.closed:
            self.fail(failure(item, self.assembly(item.video_id).unsettled(), stage, error))

    def close(self) -> None:
        """At the end of a run, fail what is still open (only after a bug: a video is never left unwritten)."""
        for assembly in list(self.assemblies.values()):
            self.give_up(assembly.item, VideoDecodeError(f"{assembly.item.path}: its decoding ended early"))

    def restart(self, item: WorkItem) -> None:
        """Forget everything collected for `item`'s video and expect its events again as `item` (a new attempt)."""
        old = self.items_by_id[item.video_id]
        self.batcher.drop(old)
        self.assemblies.pop(item.video_id, None)
        self.items_by_id[item.video_id] = item

    def current(self, item: WorkItem) -> bool:
        """Whether events of `item` still count: its video is open and this is its latest attempt."""
        return item.video_id not in self.closed and self.items_by_id.get(item.video_id) == item

    def assembly(self, video_id: str) -> VideoAssembly:
        if video_id not in self.assemblies:
            self.assemblies[video_id] = VideoAssembly(self.items_by_id[video_id])
        return self.assemblies[video_id]

    def _finish_if_done(self, assembly: VideoAssembly) -> None:
        if not assembly.finished:
            return
        video_id = assembly.item.video_id
        del self.assemblies[video_id]
        self.closed.add(video_id)
        for record in assembly.records():
            self.put(record)
            if isinstance(record, FailureRecord):
                self.summary.failures.append(record)
                continue
            self.summary.done += 1
            self.summary.no_audio += not record.metadata.get("has_audio", True)
            if record.metadata.get("truncated"):
                self.summary.truncated.append(video_id)
                log.warning(
                    "truncated %s: its streams end at %.2f s, its header says %.2f s",
                    video_id,
                    record.metadata.get("stream_end", 0.0),
                    record.metadata.get("header_duration", 0.0),
                )
        self.progress.update(1)


def progress_bar(total: int, enabled: bool, unit: str = "video") -> Any:
    from tqdm import tqdm

    return tqdm(total=total, unit=unit, desc="extract", disable=None if enabled else True, dynamic_ncols=True)
