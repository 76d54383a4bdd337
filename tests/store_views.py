"""A store's whole content as comparable values, and how many parts hold each video (engine tests)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

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


def store_differences(left_path: Path, right_path: Path) -> list[str]:
    """What differs between two stores' contents (as `contents` sees them), one short line per difference: the
    video, the metadata key with both values, or the track with both shapes and the largest difference."""
    left, right = contents(left_path), contents(right_path)
    lines = []
    for video_id in sorted(set(left["videos"]) | set(right["videos"])):
        if video_id not in left["videos"] or video_id not in right["videos"]:
            lines.append(f"{video_id}: only in {'right' if video_id not in left['videos'] else 'left'}")
            continue
        (left_meta, _), (right_meta, _) = left["videos"][video_id], right["videos"][video_id]
        for key in sorted(set(left_meta) | set(right_meta)):
            if left_meta.get(key) != right_meta.get(key):
                lines.append(f"{video_id}: metadata {key}: {left_meta.get(key)!r} != {right_meta.get(key)!r}")
        with FeatureStore(left_path) as a, FeatureStore(right_path) as b:
            for name in sorted(set(a.feature_names(video_id)) | set(b.feature_names(video_id))):
                lines.extend(f"{video_id}: {name} {line}" for line in _track_differences(a, b, video_id, name))
    if left["failures"] != right["failures"]:
        lines.append(f"failures: {left['failures']} != {right['failures']}")
    return lines


def _track_differences(a: FeatureStore, b: FeatureStore, video_id: str, name: str) -> list[str]:
    if name not in a.feature_names(video_id) or name not in b.feature_names(video_id):
        return ["is in one store only"]
    lines = []
    for part in ("features", "timestamps"):
        x, y = getattr(a.track(video_id, name), part), getattr(b.track(video_id, name), part)
        if x.shape != y.shape or x.dtype != y.dtype:
            lines.append(f"{part}: {x.dtype}{list(x.shape)} != {y.dtype}{list(y.shape)}")
        elif x.tobytes() != y.tobytes():
            gap = np.abs(x.astype(np.float64) - y.astype(np.float64))
            lines.append(f"{part}: {int((gap > 0).sum())} of {gap.size} values differ, by at most {gap.max():.3g}")
    return lines


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
