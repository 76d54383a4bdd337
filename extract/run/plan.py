"""The plan of a run: which (video, feature) tracks are missing, as a plain list of work items.

A work item is one video and the tracks it still needs. The list is what an engine executes; `--shard i/N`
keeps the videos whose id hashes to shard i before planning (extract/run/shard.py). Nothing in it refers to
threads, models or open files.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from extract.media.sources import VideoSource
from extract.run.shard import Shard


@dataclass(frozen=True)
class WorkItem:
    """One video and the feature tracks to compute for it (in the order they were requested)."""

    video_id: str
    path: Path
    features: tuple[str, ...]
    silent: bool = False  # the store already records this video without audio (an empty audio stream)
    attempt: int = 0  # engines that retry a video after a lost worker count its tries (events of older ones are stale)


class StoreView(Protocol):
    """What planning reads from an existing store (extract.store.FeatureStore has it)."""

    def __contains__(self, video_id: object) -> bool: ...
    def metadata(self, video_id: str) -> dict[str, Any]: ...
    def feature_names(self, video_id: str | None = None) -> list[str]: ...
    def failed_features(self, video_id: str, recipes: Mapping[str, str] | None = None) -> frozenset[str]: ...


@dataclass
class Plan:
    items: list[WorkItem] = field(default_factory=list)
    considered: int = 0  # videos of the sources (of the shard) that were looked at
    complete: int = 0  # videos that have every requested track (or nothing to have: audio of a silent video)
    skipped_failed: int = 0  # videos left out because their missing tracks failed before (--retry-failed)
    retried_other_recipe: int = 0  # videos whose tracks failed before with another recipe: tried again with this one
    truncated_kept: int = 0  # complete videos whose file was truncated (--retry-failed extracts them again)

    @property
    def features(self) -> set[str]:
        return {name for item in self.items for name in item.features}


def plan_run(
    sources: Sequence[VideoSource],
    store: StoreView | None,
    modalities: Mapping[str, str],
    *,
    resume: bool = True,
    retry_failed: bool = False,
    limit: int | None = None,
    shard: Shard | None = None,
    recipes: Mapping[str, str] | None = None,
) -> Plan:
    """Work items for every video with a missing track.

    modalities: requested feature name -> "visual" | "audio", in request order. A track is missing unless the
    store has it, or it is an audio track of a video the store records without audio. Tracks that failed before
    are retried only with retry_failed, which also re-extracts every track of a truncated video (a re-download
    fixes those). Without resume every track is computed again (later parts win). With a shard, only the videos
    of that shard are planned (and counted). recipes ({feature: recipe_id} of this run): a track that failed
    with another recipe is tried again without retry_failed (a failure made with a bad --fps says nothing about a
    good one).
    """
    plan = Plan()
    for source in sources:
        if shard is not None and not shard.holds(source.video_id):
            continue
        plan.considered += 1
        video_id = source.video_id
        if store is None or not resume:
            plan.items.append(WorkItem(video_id, source.path, tuple(modalities)))
            continue
        metadata = store.metadata(video_id) if video_id in store else {}
        wanted = _missing_tracks(store, video_id, metadata, modalities, retry_failed)
        if not wanted:
            plan.complete += 1
            plan.truncated_kept += bool(metadata.get("truncated"))
            continue
        failed = store.failed_features(video_id) if recipes is None else store.failed_features(video_id, recipes)
        todo = tuple(name for name in wanted if retry_failed or name not in failed)
        if recipes is not None and not retry_failed:
            plan.retried_other_recipe += bool(set(todo) & store.failed_features(video_id))
        plan.skipped_failed += len(todo) < len(wanted)
        if todo:
            silent = not metadata.get("has_audio", True)
            plan.items.append(WorkItem(video_id, source.path, todo, silent))
    if limit is not None:
        plan.items = plan.items[:limit]
    return plan


def _missing_tracks(
    store: StoreView, video_id: str, metadata: Mapping[str, Any], modalities: Mapping[str, str], retry_failed: bool
) -> list[str]:
    """The requested tracks this video does not have yet (failed ones included)."""
    if video_id not in store or (retry_failed and metadata.get("truncated")):
        return list(modalities)
    have = set(store.feature_names(video_id))
    silent = not metadata.get("has_audio", True)
    return [name for name, kind in modalities.items() if name not in have and not (silent and kind == "audio")]
