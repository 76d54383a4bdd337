"""What a store's parts say together: the parts applied in order, later parts winning, into the current videos
(metadata and where each track lives), the failures still standing and each feature's provenance."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from extract.store.parts import PartContents
from extract.store.records import FailureRecord


@dataclass
class TrackRef:
    part: Path
    order: int


@dataclass
class VideoEntry:
    metadata: dict[str, Any]
    tracks: dict[str, TrackRef] = field(default_factory=dict)
    order: int = -1  # the latest part holding a record of this video


@dataclass
class _Failing:
    order: int
    key: int  # tells the records of one part apart
    record: FailureRecord


class Catalog:
    """The current state of a store, built by `apply`ing its parts oldest first, then `settle`d."""

    def __init__(self) -> None:
        self.videos: dict[str, VideoEntry] = {}
        self.part_provenance: dict[Path, dict[str, dict[str, Any]]] = {}
        self.provenance: dict[str, dict[str, Any]] = {}  # per feature: the newest part's record holding a track
        self._track_failures: dict[str, dict[str, _Failing]] = {}
        self._video_failures: dict[str, _Failing] = {}

    def apply(self, contents: PartContents, part: Path, order: int) -> None:
        self.part_provenance[part] = contents.provenance
        # Failures first: a track in the same part as a failure of that feature wins.
        for key, record in enumerate(contents.failures):
            failing = _Failing(order, key, record)
            if not record.features:
                self._video_failures[record.video_id] = failing
            for feature in record.features:
                self._track_failures.setdefault(record.video_id, {})[feature] = failing
        for video_id, metadata, track_names in contents.videos:
            entry = self.videos.setdefault(video_id, VideoEntry(metadata={}))
            entry.metadata, entry.order = metadata, order
            self._video_failures.pop(video_id, None)
            failing = self._track_failures.get(video_id, {})
            for name in track_names:
                entry.tracks[name] = TrackRef(part, order)
                failing.pop(name, None)
            if not failing:
                self._track_failures.pop(video_id, None)

    def settle(self) -> None:
        """A feature's recipe comes from the newest part holding a current track of it, never from failures."""
        newest: dict[str, TrackRef] = {}
        for entry in self.videos.values():
            for name, ref in entry.tracks.items():
                recorded = self.part_provenance[ref.part].get(name)  # a part written without it cannot decide
                if recorded and (name not in newest or ref.order > newest[name].order):
                    newest[name] = ref
        for name, ref in newest.items():
            self.provenance[name] = self.part_provenance[ref.part][name]

    def failures(self) -> list[FailureRecord]:
        """Current failures: each record's `features` narrowed to the tracks still failing (none held since)."""
        current = []
        for video_id in sorted(set(self._track_failures) | set(self._video_failures)):
            if video_id in self._video_failures:
                current.append(self._video_failures[video_id].record)
            by_record: dict[tuple[int, int], tuple[FailureRecord, set[str]]] = {}
            for feature, failing in self._track_failures.get(video_id, {}).items():
                by_record.setdefault((failing.order, failing.key), (failing.record, set()))[1].add(feature)
            for _, (record, features) in sorted(by_record.items()):
                current.append(replace(record, features=tuple(f for f in record.features if f in features)))
        return current

    def failed_features(self, video_id: str, recipes: Mapping[str, str] | None = None) -> frozenset[str]:
        """Features of `video_id` whose latest outcome is a failure (a record naming no feature adds none).

        recipes ({feature: recipe_id}): only failures made with that recipe, or with an unrecorded one, count.
        """
        failing = self._track_failures.get(video_id, {})
        if recipes is None:
            return frozenset(failing)
        made_with = {feature: (entry.record.recipes or {}).get(feature, "") for feature, entry in failing.items()}
        return frozenset(
            feature for feature, recipe in made_with.items() if not recipe or recipe == recipes.get(feature, recipe)
        )
