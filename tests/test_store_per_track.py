"""The store's side of per-(video, feature) outcomes that the run relies on: failures per track, tracks that
accumulate across parts, and recipes fixed by tracks (not by failures)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from extract.core.errors import ProvenanceMismatchError
from extract.store import FailureRecord, FeatureStore, StoreWriter, Track, VideoRecord


def _recipe(fps: float) -> dict:
    return {
        "clip": {"recipe": {"preset": "clip", "frames.fps": fps}, "software": {}, "runtime": {}},
        "panns": {"recipe": {"preset": "panns"}, "software": {}, "runtime": {}},
    }


def _track(rows: int = 2) -> Track:
    return Track(np.ones((rows, 4), np.float32), np.stack([np.arange(rows), np.arange(rows) + 1.0], axis=1))


def _commit(store: Path, *records: VideoRecord | FailureRecord, fps: float = 1.0) -> StoreWriter:
    writer = StoreWriter(store, _recipe(fps))
    for record in records:
        (writer.add_video if isinstance(record, VideoRecord) else writer.add_failure)(record)
    writer.close()
    return writer


def _failure(video_id: str, *features: str) -> FailureRecord:
    return FailureRecord(video_id, f"/{video_id}.mp4", "audio", "VideoDecodeError", "broken audio", features)


def test_a_failed_track_next_to_committed_tracks_stays_a_failure(tmp_path: Path) -> None:
    store = tmp_path / "feats.h5"
    _commit(store, VideoRecord("v", {"has_audio": True}, {"clip": _track()}), _failure("v", "panns"))
    with FeatureStore(store) as reader:
        assert reader.feature_names("v") == ["clip"]
        assert [(f.video_id, f.features) for f in reader.failures()] == [("v", ("panns",))]
        assert reader.failed_features("v") == frozenset({"panns"})


def test_a_later_track_supersedes_only_its_own_failure(tmp_path: Path) -> None:
    store = tmp_path / "feats.h5"
    _commit(store, _failure("v", "clip", "panns"))
    _commit(store, VideoRecord("v", {"has_audio": True}, {"clip": _track()}))
    with FeatureStore(store) as reader:
        assert reader.failed_features("v") == frozenset({"panns"})
    _commit(store, VideoRecord("v", {"has_audio": True}, {"panns": _track(3)}))
    with FeatureStore(store) as reader:
        assert reader.failures() == [] and reader.feature_names("v") == ["clip", "panns"]
        assert reader.track("v", "clip").features.shape == (2, 4)  # tracks accumulate across parts


def test_a_part_of_failures_only_does_not_fix_the_recipe(tmp_path: Path) -> None:
    store = tmp_path / "feats.h5"
    _commit(store, _failure("v", "clip"), fps=float("nan"))
    writer = StoreWriter(store, _recipe(1.0))
    try:
        with FeatureStore(store) as existing:
            writer.check_provenance(existing)  # nothing committed with the failed recipe: no refusal
    finally:
        writer.abandon()
    _commit(store, VideoRecord("v", {}, {"clip": _track()}), fps=1.0)
    writer = StoreWriter(store, _recipe(2.0))
    try:
        changed = re.escape("frames.fps: 1.0 -> 2.0")
        with FeatureStore(store) as existing, pytest.raises(ProvenanceMismatchError, match=changed):
            writer.check_provenance(existing)
    finally:
        writer.abandon()
