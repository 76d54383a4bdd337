import contextlib
import errno
import json
import os
import resource
from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np
import pytest

from extract.core.errors import ProvenanceMismatchError, StoreCorruptError, StoreLockedError, StoreReadError, UsageError
from extract.store import FailureRecord, FeatureStore, StoreWriter, Track, VideoRecord, iter_tracks, parts_dir
from extract.store.ids import escape_id
from extract.store.inspect import describe
from extract.store.parts import read_attrs

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


# --- many parts, open files, damage ----------------------------------------------------------------------------


def _many_parts(store: Path, count: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """`count` parts of one video each, as a slow run leaves them (fsync skipped: durability is not the point)."""
    with monkeypatch.context() as patch:
        patch.setattr(os, "fsync", lambda fd: None)
        writer = StoreWriter(store, PROVENANCE)
        for i in range(count):
            writer.add_video(_video(f"v{i:04d}", rows=2 + i % 3))
            writer.commit()
        writer.close()


@contextlib.contextmanager
def _open_file_limit(soft: int) -> Iterator[None]:
    before = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, before[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, before)


def _lowest_free_fd() -> int:
    fd = os.dup(0)
    os.close(fd)
    return fd


def test_more_parts_than_open_files_allowed_are_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The issue's 300 parts under `ulimit -n 256`, halved to keep the test short."""
    store = tmp_path / "feats.h5"
    _many_parts(store, 160, monkeypatch)
    assert _lowest_free_fd() < 40, "this test needs a process with few open files"
    with _open_file_limit(128), FeatureStore(store) as reader:
        rows = {video_id: len(track.features) for video_id, track in iter_tracks(reader, "clip")}
        assert len(rows) == 160 and rows["v0159"] == 2 + 159 % 3
        assert len(reader._open_files) <= reader.max_open_files == 64
        report = describe(store)
    assert report["videos"] == 160 and report["parts"] == 160 and not report["corrupt_parts"]


def test_a_reader_out_of_file_descriptors_gives_back_its_own_handles(tmp_path: Path) -> None:
    store = tmp_path / "feats.h5"
    _write(store, _video("a", rows=2))
    _write(store, _video("b", rows=3))
    with FeatureStore(store) as reader:
        reader.track("a", "clip")  # holds the first part open
        with _open_file_limit(_lowest_free_fd()):  # and the process can open nothing more
            assert reader.track("b", "clip").features.shape == (3, 4)
        assert list(reader._open_files) == [sorted(reader.parts)[1]]


def test_running_out_of_file_descriptors_is_an_error_not_damage(tmp_path: Path) -> None:
    store = tmp_path / "feats.h5"
    _write(store, _video("a"))
    with FeatureStore(store) as reader, _open_file_limit(_lowest_free_fd()):
        with pytest.raises(StoreReadError, match=r"cannot open .*part-.* now: too many open files .*ulimit -n"):
            reader.track("a", "clip")
        assert not reader.corrupt_parts


def test_a_scan_that_cannot_open_a_part_reports_the_cause_not_damage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = tmp_path / "feats.h5"
    _write(store, _video("a"))
    real_open = h5py.File

    def out_of_descriptors(name, *args, **kwargs):
        if str(name).endswith(".h5") and "part-" in str(name):
            raise OSError(errno.EMFILE, "Unable to synchronously open file (errno = 24, 'Too many open files')")
        return real_open(name, *args, **kwargs)

    monkeypatch.setattr(h5py, "File", out_of_descriptors)
    with pytest.raises(StoreReadError, match="too many open files"):
        FeatureStore(store)


def test_a_truncated_part_is_reported_as_damaged(tmp_path: Path) -> None:
    store = tmp_path / "feats.h5"
    _write(store, _video("good"))
    _write(store, _video("cut"))
    cut = sorted(parts_dir(store).glob("part-*.h5"))[-1]
    cut.write_bytes(cut.read_bytes()[:-100])
    with FeatureStore(store) as reader:
        assert reader.video_ids() == ["good"]
        assert [(p, "truncated" in why) for p, why in reader.corrupt_parts] == [(cut, True)]


# --- failures per (video, feature) -----------------------------------------------------------------------------

BOTH = {
    "clip": PROVENANCE["clip"],
    "panns": {"recipe": {"preset": "panns"}, "software": {}},
}


def _failure(video_id: str, *features: str, stage: str = "audio", message: str = "broken") -> FailureRecord:
    return FailureRecord(video_id, f"/{video_id}.mp4", stage, "VideoDecodeError", message, features)


def test_a_later_track_supersedes_the_failure_of_that_track_only(tmp_path: Path) -> None:
    store = tmp_path / "feats.h5"
    _write(store, _failure("v", "clip", "panns", stage="decode"), provenance=BOTH)
    _write(store, _video("v"), provenance=BOTH)
    with FeatureStore(store) as reader:
        [failure] = reader.failures()
        assert failure.video_id == "v" and failure.features == ("panns",) and failure.stage == "decode"
        assert reader.failed_features("v") == {"panns"} and reader.failed_features("other") == frozenset()
        assert reader.feature_names("v") == ["clip"]


def test_one_part_holds_some_tracks_and_a_failure_for_the_others(tmp_path: Path) -> None:
    store = tmp_path / "feats.h5"
    _write(store, _video("v"), _failure("v", "panns"), provenance=BOTH)
    with FeatureStore(store) as reader:
        assert reader.feature_names("v") == ["clip"] and reader.failed_features("v") == {"panns"}
    with h5py.File(store, "r") as index:  # the index lists the failure per track
        assert index["failures/v/panns"].attrs["stage"] == "audio"
        assert "clip" in index["videos/v"] and "clip" not in index["failures/v"]


def test_two_failures_of_one_video_keep_their_own_reasons(tmp_path: Path) -> None:
    store = tmp_path / "feats.h5"
    records = (_failure("v", "panns", message="audio broken"), _failure("v", "clip", stage="compute", message="nan"))
    _write(store, *records, provenance=BOTH)
    with FeatureStore(store) as reader:
        reasons = {f.features: (f.stage, f.message) for f in reader.failures()}
        assert reasons == {("panns",): ("audio", "audio broken"), ("clip",): ("compute", "nan")}


def test_tracks_of_one_video_accumulate_across_parts_with_the_latest_metadata(tmp_path: Path) -> None:
    store = tmp_path / "feats.h5"
    first = _video("v", rows=3)
    second = VideoRecord("v", {"duration": 9.0}, {"panns": Track(np.zeros((5, 2), np.float32), np.zeros((5, 2)))})
    _write(store, first, provenance=BOTH)
    _write(store, second, provenance=BOTH)
    with FeatureStore(store) as reader:
        assert reader.feature_names("v") == ["clip", "panns"] and reader.metadata("v")["duration"] == 9.0
        assert reader.track("v", "clip").features.shape == (3, 4)


def test_a_store_written_with_one_failure_record_per_video_still_reads(tmp_path: Path) -> None:
    """Format 1 (before failures per track): /failures/<id> attrs name every feature of the run."""
    store = tmp_path / "feats.h5"
    folder = parts_dir(store)
    folder.mkdir()
    with h5py.File(folder / "part-20250101T000000.000000-host-1-000001.h5", "w") as f:
        f.attrs.update({"format": "img-vmr-feature-store", "format_version": 1})
        f.create_group("provenance").attrs["clip"] = json.dumps(PROVENANCE["clip"])
        old_video = f.create_group("videos").create_group("w")  # and no catalog: read attribute by attribute
        old_video.attrs.update({"video_id": "w", "duration": 2.5})
        old_video.create_group("clip").create_dataset("features", data=np.ones((2, 4), np.float32))
        old = f.create_group("failures").create_group("v")
        old.attrs.update(
            {
                "video_id": "v",
                "path": "/v.mp4",
                "stage": "decode",
                "error_type": "E",
                "message": "m",
                "features": "clip,panns",
                "time": 1.0,
            }
        )
    _write(store, _video("v"), provenance=BOTH)
    with FeatureStore(store) as reader:
        [failure] = reader.failures()
        assert (failure.features, failure.message) == (("panns",), "m")
        assert reader.metadata("w")["duration"] == 2.5 and reader.feature_names("w") == ["clip"]


def test_the_part_catalog_reads_back_as_the_attributes_do(tmp_path: Path) -> None:
    store = tmp_path / "feats.h5"
    odd = os.fsdecode(b"caf\xe9")
    metadata = {
        "path": odd,
        "rotation": np.int64(90),
        "fps": np.float32(29.97),
        "has_audio": np.bool_(False),
        "codec": None,
        "size": (640, 480),
        "truncated": True,
        "duration": float("inf"),
    }
    _write(store, VideoRecord(odd, metadata, {"clip": _video("x").tracks["clip"]}))
    [part] = parts_dir(store).glob("part-*.h5")
    with FeatureStore(store) as reader, h5py.File(part, "r") as f:
        assert reader.video_ids() == [odd]
        assert reader.metadata(odd) == read_attrs(f["videos"][escape_id(odd)].attrs)


def test_a_failure_only_part_does_not_fix_the_recipe(tmp_path: Path) -> None:
    store = tmp_path / "feats.h5"
    broken = {"clip": {"recipe": {"preset": "clip", "frames.fps": float("nan")}, "software": {}}}
    _write(store, _failure("v", "clip", stage="decode"), provenance=broken)
    writer = StoreWriter(store, PROVENANCE)
    with FeatureStore(store) as existing:
        writer.check_provenance(existing)  # the run that failed every video did not lock the store
    writer.add_video(_video("v"))
    writer.close()
    with FeatureStore(store) as reader:
        assert reader.provenance("clip") == PROVENANCE["clip"]["recipe"] and reader.failures() == []
    with h5py.File(store, "r") as index:
        assert json.loads(index["provenance"].attrs["clip"]) == PROVENANCE["clip"]["recipe"]


# --- the index ----------------------------------------------------------------------------------------------


def test_the_index_keeps_one_entry_per_video_from_the_latest_part(tmp_path: Path) -> None:
    """A crash right after a part was written can leave the same video in two parts: the later wins."""
    store = tmp_path / "feats.h5"
    _write(store, _video("v", rows=2), _video("w", rows=2))
    _write(store, _video("v", rows=7))
    latest = sorted(parts_dir(store).glob("part-*.h5"))[-1]
    with h5py.File(store, "r") as index:
        assert sorted(index["videos"]) == ["v", "w"]
        assert index["videos/v/clip/features"].shape == (7, 4)
        assert index["videos/v"].get("clip", getlink=True).filename.endswith(latest.name)


def test_the_index_refuses_to_link_a_part_that_is_gone(tmp_path: Path) -> None:
    store = tmp_path / "feats.h5"
    _write(store, _video("v"))
    _write(store, _video("w"))
    parts = sorted(parts_dir(store).glob("part-*.h5"))
    with FeatureStore(store, parts=parts) as view:
        parts[0].unlink()
        with pytest.raises(StoreCorruptError, match="holds tracks but no longer exists"):
            view.write_index()


def test_part_names_sort_after_the_newest_part_even_when_the_clock_is_behind(tmp_path: Path) -> None:
    store = tmp_path / "feats.h5"
    _write(store, _video("v", rows=2))
    future = parts_dir(store) / "part-29990101T000000.000000-elsewhere-1-000001.h5"
    sorted(parts_dir(store).glob("part-*.h5"))[0].rename(future)
    _write(store, _video("v", rows=5))
    assert sorted(parts_dir(store).glob("part-*.h5"))[-1].name.startswith("part-29990101T000000.000001-")
    with FeatureStore(store) as reader:
        assert reader.track("v", "clip").features.shape == (5, 4)
