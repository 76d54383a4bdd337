"""A store's whole content as comparable values, and how many parts hold each video (engine tests)."""

from __future__ import annotations

from pathlib import Path

from extract.store import FeatureStore, list_parts, parts_dir, video_durations


def contents(store_path: Path) -> dict:
    """Ids, metadata (but where the file was), every track bit for bit, and the failure records."""
    with FeatureStore(store_path) as store:
        videos = {
            video_id: (
                {k: v for k, v in store.metadata(video_id).items() if k != "source_path"},
                {name: track_bytes(store, video_id, name) for name in store.feature_names(video_id)},
            )
            for video_id in store.video_ids()
        }
        failures = sorted((f.video_id, f.features, f.stage, f.error_type) for f in store.failures())
    return {"videos": videos, "failures": failures}


def track_bytes(store: FeatureStore, video_id: str, name: str) -> tuple[bytes, bytes]:
    track = store.track(video_id, name)
    return track.features.tobytes(), track.timestamps.tobytes()


def records_per_video(store_path: Path) -> dict[str, int]:
    """How many parts hold a record of each video (exactly once: 1)."""
    counts: dict[str, int] = {}
    for part in list_parts(parts_dir(store_path)):
        with FeatureStore(store_path, parts=[part]) as single:
            for video_id in single.video_ids():
                counts[video_id] = counts.get(video_id, 0) + 1
    return counts


def store_durations(store_path: Path) -> dict[str, float]:
    """The videos' durations a store records (what `img-extract text --store` reads for queries without one)."""
    with FeatureStore(store_path) as store:
        return video_durations(store)
