"""One video's outcome, put together as its events and embedded rows arrive, per (video, feature).

A feature is settled when its source has emitted everything and every unit came back embedded, or when it
failed. When every requested feature is settled the video gives its records: a VideoRecord with the tracks
that succeeded (and the video's metadata), and one FailureRecord naming the tracks that failed.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from typing import Any

import numpy as np

from extract.run.events import Embedded, SourceDone
from extract.run.plan import WorkItem
from extract.store import FailureRecord, Track, VideoRecord


class VideoAssembly:
    def __init__(self, item: WorkItem) -> None:
        self.item = item
        self.metadata: dict[str, Any] | None = None
        self._rows: dict[str, list[np.ndarray]] = {name: [] for name in item.features}
        self._spans: dict[str, list[np.ndarray]] = {name: [] for name in item.features}
        self._outstanding: Counter[str] = Counter()
        self._sourced: set[str] = set()
        self._decoders: dict[str, str] = {}
        self._audio_found: bool | None = None
        self._failures: list[FailureRecord] = []
        self.failed: set[str] = set()

    def wants(self, feature: str) -> bool:
        return feature in self._rows and feature not in self.failed

    def unsettled(self) -> tuple[str, ...]:
        return tuple(name for name in self.item.features if not self._settled(name))

    @property
    def finished(self) -> bool:
        return not self.unsettled()

    def probed(self, metadata: dict[str, Any]) -> None:
        self.metadata = metadata

    def queued(self, feature: str, count: int) -> None:
        self._outstanding[feature] += count

    def embedded(self, result: Embedded) -> None:
        if self.wants(result.feature):
            self._rows[result.feature].append(result.rows)
            self._spans[result.feature].append(result.units.spans)
            self._outstanding[result.feature] -= len(result.units)

    def source_done(self, event: SourceDone) -> None:
        self._sourced.update(event.features)
        self._decoders.update(event.decoders)
        if event.audio_found is not None:
            self._audio_found = bool(self._audio_found) or event.audio_found

    def fail(self, record: FailureRecord) -> tuple[str, ...]:
        """Record a failure of some of this video's features; return those that were not failed already."""
        new = tuple(name for name in record.features if self.wants(name) and not self._settled(name))
        if new:
            self.failed.update(new)
            self._failures.append(dataclasses.replace(record, features=new))
        return new

    def records(self) -> list[VideoRecord | FailureRecord]:
        out: list[VideoRecord | FailureRecord] = []
        succeeded = [name for name in self.item.features if name not in self.failed]
        if self.metadata is not None and succeeded:
            out.append(VideoRecord(self.item.video_id, self._video_metadata(), self._tracks(succeeded)))
        if self._failures:
            out.append(merge_failures(self._failures))
        return out

    def _settled(self, feature: str) -> bool:
        return feature in self.failed or (feature in self._sourced and self._outstanding[feature] == 0)

    def _video_metadata(self) -> dict[str, Any]:
        assert self.metadata is not None
        metadata = dict(self.metadata)
        if self._audio_found is not None:  # audio was decoded: an empty stream means no audio
            metadata["has_audio"] = bool(metadata.get("has_audio")) and self._audio_found
        elif self.item.silent:  # not decoded now: keep what the store knew
            metadata["has_audio"] = False
        return metadata

    def _tracks(self, features: list[str]) -> dict[str, Track]:
        tracks = {}
        for name in features:
            if self._rows[name]:
                rows = np.concatenate(self._rows[name])
                tracks[name] = Track(
                    rows.reshape(-1, rows.shape[-1]),  # units with several rows (I3D windows): consecutive rows
                    np.concatenate(self._spans[name]).reshape(-1, 2),
                    {"decoder": self._decoders.get(name, "")},
                )
        return tracks


def merge_failures(records: list[FailureRecord]) -> FailureRecord:
    """One record per video and part: several failed stages of one video become one record naming them all."""
    if len(records) == 1:
        return records[0]
    first = records[0]
    return FailureRecord(
        first.video_id,
        first.path,
        "+".join(dict.fromkeys(r.stage for r in records)),
        "+".join(dict.fromkeys(r.error_type for r in records)),
        " | ".join(f"{','.join(r.features)}: {r.message}" for r in records),
        tuple(name for r in records for name in r.features),
        first.time,
    )
