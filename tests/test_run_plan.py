"""Planning per (video, feature): which tracks a run computes, from what a store already holds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from extract.media.sources import VideoSource
from extract.run.plan import WorkItem, plan_run

MODALITIES = {"clip": "visual", "panns": "audio", "vggish": "audio"}


class FakeStore:
    """What planning reads, from plain dicts: video id -> (metadata, tracks, failed features)."""

    def __init__(self, videos: dict[str, tuple[dict[str, Any], set[str], set[str]]]) -> None:
        self.videos = videos

    def __contains__(self, video_id: object) -> bool:
        return video_id in self.videos and bool(self.videos[video_id][1] or self.videos[video_id][0])

    def metadata(self, video_id: str) -> dict[str, Any]:
        return self.videos[video_id][0]

    def feature_names(self, video_id: str | None = None) -> list[str]:
        return sorted(self.videos[video_id][1]) if video_id is not None else []

    def failed_features(self, video_id: str) -> frozenset[str]:
        return frozenset(self.videos[video_id][2]) if video_id in self.videos else frozenset()


def _sources(*ids: str) -> list[VideoSource]:
    return [VideoSource(video_id, Path(f"/videos/{video_id}.mp4")) for video_id in ids]


def _features(items: list[WorkItem]) -> dict[str, tuple[str, ...]]:
    return {item.video_id: item.features for item in items}


def test_only_missing_tracks_are_planned() -> None:
    store = FakeStore(
        {"a": ({"has_audio": True}, {"clip"}, set()), "b": ({"has_audio": True}, {"clip", "panns"}, set())}
    )
    plan = plan_run(_sources("a", "b", "new"), store, {"clip": "visual", "panns": "audio"})
    assert _features(plan.items) == {"a": ("panns",), "new": ("clip", "panns")}
    assert plan.complete == 1 and plan.skipped_failed == 0


def test_audio_tracks_of_a_video_without_audio_are_not_missing() -> None:
    store = FakeStore({"silent": ({"has_audio": False}, {"clip"}, set())})
    plan = plan_run(_sources("silent"), store, MODALITIES)
    assert plan.items == [] and plan.complete == 1
    more = plan_run(_sources("silent"), store, {"clip": "visual", "i3d": "visual", "panns": "audio"})
    assert more.items == [WorkItem("silent", Path("/videos/silent.mp4"), ("i3d",), silent=True)]


def test_failed_tracks_wait_for_retry_failed_and_only_they_are_retried() -> None:
    store = FakeStore(
        {
            "audio broke": ({"has_audio": True}, {"clip"}, {"panns"}),
            "all broke": ({}, set(), {"clip", "panns"}),
        }
    )
    plan = plan_run(_sources("audio broke", "all broke"), store, {"clip": "visual", "panns": "audio"})
    assert plan.items == [] and plan.skipped_failed == 2
    retry = plan_run(
        _sources("audio broke", "all broke"), store, {"clip": "visual", "panns": "audio"}, retry_failed=True
    )
    assert _features(retry.items) == {"audio broke": ("panns",), "all broke": ("clip", "panns")}


def test_a_new_track_is_planned_next_to_a_failed_one_that_is_not_retried() -> None:
    store = FakeStore({"v": ({"has_audio": True}, {"clip"}, {"panns"})})
    plan = plan_run(_sources("v"), store, MODALITIES)
    assert _features(plan.items) == {"v": ("vggish",)} and plan.skipped_failed == 1


def test_truncated_videos_are_kept_unless_retry_failed_then_fully_redone() -> None:
    store = FakeStore({"half": ({"has_audio": True, "truncated": True}, {"clip", "panns"}, set())})
    kept = plan_run(_sources("half"), store, {"clip": "visual", "panns": "audio"})
    assert kept.items == [] and kept.truncated_kept == 1
    redo = plan_run(_sources("half"), store, {"clip": "visual", "panns": "audio"}, retry_failed=True)
    assert _features(redo.items) == {"half": ("clip", "panns")}


def test_no_resume_plans_everything_and_limit_cuts_the_list() -> None:
    store = FakeStore({"a": ({"has_audio": True}, {"clip"}, set())})
    plan = plan_run(_sources("a", "b", "c"), store, {"clip": "visual"}, resume=False, limit=2)
    assert _features(plan.items) == {"a": ("clip",), "b": ("clip",)}


def test_items_are_plain_values_a_scheduler_can_slice() -> None:
    plan = plan_run(_sources("a", "b", "c", "d"), None, {"clip": "visual"})
    shard = plan.items[1::2]
    assert [item.video_id for item in shard] == ["b", "d"]
    assert len({*plan.items}) == 4  # hashable, comparable: safe to send to another process or machine
