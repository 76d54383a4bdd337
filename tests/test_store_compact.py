"""`img-extract compact`: many parts become a few, readers see the same store before, during and after."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

import extract.store.reader as store_module
from extract.core.errors import ProvenanceMismatchError, StoreLockedError, StoreWriteError
from extract.store import FailureRecord, FeatureStore, StoreWriter, Track, VideoRecord
from extract.store.compact import compact, plan_merge, write_merged
from extract.store.parts import list_parts, next_part_name, parts_dir
from tests.conftest import run_cli

CLIP_A = {"recipe": {"preset": "clip", "frames.fps": 1.0}, "software": {"img_vmr": "1"}, "runtime": {"device": "cpu"}}
CLIP_B = {**CLIP_A, "software": {"img_vmr": "2"}}
PANNS_B = {"recipe": {"preset": "panns"}, "software": {"img_vmr": "2"}, "runtime": {"device": "cpu"}}


def _track(rows: int, value: float, dim: int = 4) -> Track:
    spans = np.stack([np.arange(rows), np.arange(rows) + 1.0], axis=1)
    return Track(np.full((rows, dim), value, np.float32), spans, {"decoder": "ffmpeg"})


def _video(video_id: str, value: float, **tracks: int) -> VideoRecord:
    metadata = {"duration": value, "has_audio": True}
    return VideoRecord(video_id, metadata, {name: _track(rows, value) for name, rows in tracks.items()})


def _failure(video_id: str, *features: str, stage: str = "decode") -> FailureRecord:
    return FailureRecord(video_id, f"/{video_id}.mp4", stage, "VideoDecodeError", f"{video_id} broke", features, 1.0)


def _commit(store: Path, provenance: dict[str, Any], *records: VideoRecord | FailureRecord) -> None:
    writer = StoreWriter(store, provenance)
    for record in records:
        (writer.add_video if isinstance(record, VideoRecord) else writer.add_failure)(record)
    writer.close()


def _varied_store(store: Path) -> None:
    """Six parts from three runs: two software versions, duplicates, failures per track, a video with no track."""
    _commit(store, {"clip": CLIP_A}, _video("a", 1, clip=3), _video("b", 1, clip=2))
    _commit(store, {"clip": CLIP_A}, _video("c", 1, clip=4), _failure("d", "clip", "panns"))
    _commit(store, {"clip": CLIP_B, "panns": PANNS_B}, _video("a", 2, panns=5), _video("d", 2, clip=2))
    _commit(store, {"clip": CLIP_B, "panns": PANNS_B}, _video("b", 3, clip=6))  # b again: the later part wins
    _commit(store, {"clip": CLIP_B, "panns": PANNS_B}, _video("e", 1, clip=1), _failure("e", "panns", stage="audio"))
    broken = {"clip": {**CLIP_A, "recipe": {"preset": "clip", "frames.fps": float("nan")}}}
    _commit(store, broken, _failure("f", "clip"), VideoRecord("g", {"duration": 0.5, "has_audio": False}, {}))


def _snapshot(path: Path) -> dict[str, Any]:
    with FeatureStore(path) as store:
        return _everything(store)


def _everything(store: FeatureStore) -> dict[str, Any]:
    """Everything a reader can ask a store."""
    videos = {}
    for video_id in store.video_ids():
        tracks = {}
        for name in store.feature_names(video_id):
            track = store.track(video_id, name)
            tracks[name] = (track.features.tolist(), track.timestamps.tolist(), track.attrs)
            tracks[name] += (store.part_provenance(video_id, name),)
        videos[video_id] = (store.metadata(video_id), tracks, sorted(store.failed_features(video_id)))
    failures = [(f.video_id, f.features, f.stage, f.message, f.time) for f in store.failures()]
    return {"videos": videos, "failures": failures, "recipes": store.recipes()}


@pytest.fixture
def varied(tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    store = tmp_path / "feats.h5"
    _varied_store(store)
    return store, _snapshot(store)


def test_compaction_keeps_tracks_provenance_and_failures(varied) -> None:
    store, before = varied
    old = list_parts(parts_dir(store))
    report = compact(store)
    assert len(old) == 6 and report.merged == old and not report.damaged
    assert list_parts(parts_dir(store)) == report.written and len(report.written) == 2  # one per software version
    assert _snapshot(store) == before
    assert before["failures"] == [
        ("d", ("panns",), "decode", "d broke", 1.0),
        ("e", ("panns",), "audio", "e broke", 1.0),
        ("f", ("clip",), "decode", "f broke", 1.0),
    ]
    assert before["videos"]["b"][1]["clip"][0] == np.full((6, 4), 3.0).tolist()


def test_the_index_after_compaction_links_only_the_new_parts(varied) -> None:
    store, _ = varied
    report = compact(store)
    with h5py.File(store, "r") as index:
        linked = {index["videos"][v].get(f, getlink=True).filename for v in index["videos"] for f in index["videos"][v]}
        assert {Path(name).name for name in linked} <= {part.name for part in report.written}
        assert index["videos/b/clip/features"].shape == (6, 4)
        assert sorted(index["failures/d"]) == ["panns"]


def test_a_reader_open_during_compaction_reads_the_same_store(varied) -> None:
    store, before = varied
    with FeatureStore(store) as reader:
        reader.track("a", "clip")  # one old part held open, the others not yet opened
        compact(store)
        assert not any(part.exists() for part in reader.parts)
        assert _everything(reader) == before  # opening a removed part made it scan again
        assert reader.parts == list_parts(parts_dir(store))


def test_a_reader_that_listed_the_parts_before_compaction_lists_again(varied, monkeypatch) -> None:
    store, before = varied
    stale = list_parts(parts_dir(store))
    compact(store)
    listings = []

    def listing_from_before_the_compaction_once(folder: Path) -> list[Path]:
        listings.append(folder)
        return stale if len(listings) == 1 else sorted(folder.glob("part-*.h5"))

    monkeypatch.setattr(store_module, "list_parts", listing_from_before_the_compaction_once)
    assert _snapshot(store) == before
    assert len(listings) == 2


def test_parts_written_after_compaction_still_win(varied) -> None:
    store, _ = varied
    compact(store)
    _commit(store, {"clip": CLIP_B}, _video("b", 9, clip=1))
    with FeatureStore(store) as reader:
        assert reader.track("b", "clip").features.tolist() == [[9.0] * 4]


def test_compaction_waits_for_no_writer(varied) -> None:
    store, _ = varied
    writer = StoreWriter(store, {})
    with pytest.raises(StoreLockedError, match="being written by pid"):
        compact(store)
    writer.abandon()


def test_small_part_size_splits_by_video_never_inside_one(varied) -> None:
    store, before = varied
    report = compact(store, part_bytes=300)  # a: 256 bytes of tracks, c: 128, b: 192, d: 64, e: 32
    assert len(report.written) == 3
    for part in report.written:
        with h5py.File(part, "r") as f:
            for name in f["videos"]:
                assert set(f["videos"][name]) == set(before["videos"][name][1])  # every track of it, here
    assert _snapshot(store) == before


def test_shard_stores_merge_into_one_and_different_recipes_are_refused(tmp_path: Path) -> None:
    first, second, merged = tmp_path / "s0.h5", tmp_path / "s1.h5", tmp_path / "all.h5"
    _commit(first, {"clip": CLIP_A}, _video("a", 1, clip=2))
    _commit(second, {"clip": CLIP_A}, _video("b", 2, clip=3), _failure("c", "clip"))
    parts = list_parts(parts_dir(first)) + list_parts(parts_dir(second))
    parts_dir(merged).mkdir()
    with FeatureStore(merged, parts=parts) as view:
        write_merged(view, parts_dir(merged), plan_merge(view))
    with FeatureStore(merged) as store:
        assert store.video_ids() == ["a", "b"] and [f.video_id for f in store.failures()] == ["c"]
        assert store.track("b", "clip").features.shape == (3, 4)
    other = tmp_path / "other.h5"
    _commit(other, {"clip": {**CLIP_A, "recipe": {"preset": "clip", "frames.fps": 2.0}}}, _video("z", 1, clip=1))
    with (
        FeatureStore(merged, parts=parts + list_parts(parts_dir(other))) as view,
        pytest.raises(ProvenanceMismatchError, match="different recipes"),
    ):
        plan_merge(view)


def test_compact_command_merges_and_reports_a_damaged_part(varied) -> None:
    store, before = varied
    damaged = parts_dir(store) / "part-20000101T000000.000000-host-1-000001.h5"
    damaged.write_bytes(b"not hdf5")
    result = run_cli("compact", store)
    assert result.returncode == 1, result.stderr
    assert "merged 6 parts" in result.stderr and "into 2" in result.stderr
    assert f"damaged part left as it is: {damaged}" in result.stderr
    assert damaged.exists() and _snapshot(store) == before
    again = run_cli("compact", store)
    assert "nothing to merge" in again.stderr


def test_compact_command_names_a_missing_store(tmp_path: Path) -> None:
    result = run_cli("compact", tmp_path / "nothing.h5")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"img-extract: error: {tmp_path / 'nothing.h5'}: no such feature store; run img-extract with --out "
        f"{tmp_path / 'nothing.h5'}"
    ]


def test_a_compaction_that_fails_leaves_the_store_as_it_was(varied, monkeypatch: pytest.MonkeyPatch) -> None:
    """A full disk when the index is written used to leave the new parts beside the old ones: the store's size
    doubled on a full disk. A compaction refused for mixed recipes writes nothing either."""
    store, before = varied
    listing = sorted(parts_dir(store).iterdir())
    index_bytes = store.read_bytes()

    def disk_full(self: FeatureStore) -> None:
        raise StoreWriteError(f"cannot write the feature store {self.path}: no space left on device")

    with monkeypatch.context() as patched:
        patched.setattr(FeatureStore, "write_index", disk_full)
        with pytest.raises(StoreWriteError, match="no space left"):
            compact(store)
    assert sorted(parts_dir(store).iterdir()) == listing and store.read_bytes() == index_bytes
    assert _snapshot(store) == before
    other = store.with_name("other.h5")
    _commit(other, {"clip": {**CLIP_A, "recipe": {"preset": "clip", "frames.fps": 2.0}}}, _video("z", 1, clip=1))
    for part in list_parts(parts_dir(other)):
        part.rename(parts_dir(store) / next_part_name(listing[-1].name, 1))
    listing = sorted(parts_dir(store).iterdir())
    with pytest.raises(ProvenanceMismatchError, match="different recipes"):
        compact(store)
    assert sorted(parts_dir(store).iterdir()) == listing
