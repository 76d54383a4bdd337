from pathlib import Path

import h5py
import numpy as np
import pytest

from extract.errors import ProvenanceMismatchError, StoreCorruptError, StoreLockedError, UsageError
from extract.store import FailureRecord, FeatureStore, StoreWriter, Track, VideoRecord, parts_dir

PROVENANCE = {"clip": {"recipe": {"preset": "clip", "frames.fps": 1.0}, "software": {"ffmpeg": "x"}}}


def _video(video_id: str, rows: int = 3, dim: int = 4) -> VideoRecord:
    spans = np.stack([np.arange(rows), np.arange(rows) + 1.0], axis=1)
    track = Track(np.full((rows, dim), rows, np.float32), spans, {"decoder": "ffmpeg"})
    return VideoRecord(video_id, {"duration": float(rows), "has_audio": True, "fps": 25.0}, {"clip": track})


def _write(store: Path, *records: VideoRecord | FailureRecord, provenance=PROVENANCE) -> StoreWriter:
    writer = StoreWriter(store, provenance)
    for record in records:
        (writer.add_video if isinstance(record, VideoRecord) else writer.add_failure)(record)
    writer.close()
    return writer


def test_tracks_round_trip_with_timestamps_and_metadata(tmp_path: Path) -> None:
    store = tmp_path / "feats.h5"
    _write(store, _video("a/b c", rows=3), _video("日本", rows=5))
    with FeatureStore(store) as reader:
        assert reader.video_ids() == ["a/b c", "日本"]
        track = reader.track("日本", "clip")
        assert track.features.shape == (5, 4) and track.timestamps.shape == (5, 2)
        assert track.timestamps[-1].tolist() == [4.0, 5.0] and track.attrs["decoder"] == "ffmpeg"
        assert reader.metadata("a/b c")["duration"] == 3.0
        assert reader.provenance("clip") == PROVENANCE["clip"]["recipe"]
        assert reader.part_provenance("a/b c", "clip")["software"] == {"ffmpeg": "x"}


def test_index_file_links_tracks_for_plain_h5py(tmp_path: Path) -> None:
    store = tmp_path / "feats.h5"
    _write(store, _video("x", rows=2))
    _write(store, _video("y", rows=4))
    with h5py.File(store, "r") as index:
        assert sorted(index["videos"]) == ["x", "y"]
        assert index["videos/y/clip/features"].shape == (4, 4)
        assert isinstance(index["videos/x"].get("clip", getlink=True), h5py.ExternalLink)


def test_a_later_success_supersedes_an_earlier_failure(tmp_path: Path) -> None:
    store = tmp_path / "feats.h5"
    _write(store, FailureRecord("v", "/v.mp4", "decode", "VideoDecodeError", "broken"))
    with FeatureStore(store) as reader:
        assert [f.video_id for f in reader.failures()] == ["v"]
    _write(store, _video("v"))
    with FeatureStore(store) as reader:
        assert reader.failures() == [] and reader.video_ids() == ["v"]


def test_unfinished_parts_are_ignored_and_cleaned(tmp_path: Path) -> None:
    store = tmp_path / "feats.h5"
    _write(store, _video("done"))
    stale = parts_dir(store) / "part-29990101T000000.000000-host-1-000001.h5.tmp"
    stale.write_bytes(b"half a part")
    with FeatureStore(store) as reader:
        assert reader.video_ids() == ["done"]
    StoreWriter(store, PROVENANCE).close()
    assert not stale.exists()


def test_a_damaged_part_is_reported_and_the_rest_stays_readable(tmp_path: Path) -> None:
    store = tmp_path / "feats.h5"
    _write(store, _video("good"))
    (parts_dir(store) / "part-29990101T000000.000000-host-1-000001.h5").write_bytes(b"garbage")
    with FeatureStore(store) as reader:
        assert reader.video_ids() == ["good"]
        assert len(reader.corrupt_parts) == 1


def test_second_writer_is_refused_while_the_first_holds_the_store(tmp_path: Path) -> None:
    store = tmp_path / "feats.h5"
    first = StoreWriter(store, PROVENANCE)
    with pytest.raises(StoreLockedError, match="being written by pid"):
        StoreWriter(store, PROVENANCE)
    first.close()
    StoreWriter(store, PROVENANCE).close()


def test_different_recipe_under_the_same_name_is_refused(tmp_path: Path) -> None:
    store = tmp_path / "feats.h5"
    _write(store, _video("v"))
    other = {"clip": {"recipe": {"preset": "clip", "frames.fps": 2.0}, "software": {}}}
    writer = StoreWriter(store, other)
    with FeatureStore(store) as existing, pytest.raises(ProvenanceMismatchError, match=r"frames.fps: 1.0 -> 2.0"):
        writer.check_provenance(existing)
    writer.abandon()


def test_reading_a_missing_store_names_the_fix(tmp_path: Path) -> None:
    with pytest.raises(StoreCorruptError, match="no such feature store"):
        FeatureStore(tmp_path / "nothing.h5")


def test_out_pointing_at_a_foreign_file_is_refused(tmp_path: Path) -> None:
    foreign = tmp_path / "thesis.h5"
    foreign.write_bytes(b"not ours")
    with pytest.raises(UsageError, match="not an img-vmr store"):
        StoreWriter(foreign, PROVENANCE)
    assert foreign.read_bytes() == b"not ours"


def test_track_reads_only_what_is_asked(tmp_path: Path) -> None:
    store = tmp_path / "feats.h5"
    _write(store, *[_video(f"v{i}", rows=10, dim=8) for i in range(20)])
    with FeatureStore(store) as reader:
        assert len(reader) == 20
        reader.track("v3", "clip")
        assert len(reader._open_files) == 1  # one part opened; no track other than v3 was read
