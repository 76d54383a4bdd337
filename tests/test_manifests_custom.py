"""A user's own queries (JSONL): records, durations from the feature store, and one clear error per mistake."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from extract.store import StoreWriter, Track, VideoRecord
from manifests.custom import read_custom, read_rows
from manifests.errors import ManifestError
from manifests.records import QueryRecord
from tests.store_views import store_durations


def _write(path: Path, *rows: object) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def _error(path: Path, **kwargs: object) -> str:
    with pytest.raises(ManifestError) as error:
        read_custom(path, **kwargs)  # type: ignore[arg-type]
    assert "\n" not in str(error.value)
    return str(error.value)


def test_records_with_defaults_for_qid_split_and_duration_from_the_store(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "q.jsonl",
        {"video_id": "cooking_03", "start": 12.5, "end": 19, "query": "  she cracks an egg  "},
        "",
        {"video_id": "cooking_03", "start": 1, "end": 2, "query": "stir", "qid": 7, "split": "train", "duration": 40},
    )
    records, clipped = read_custom(path, durations={"cooking_03": 30.0})
    assert records == [
        QueryRecord("qid_0", "cooking_03", 12.5, 19.0, 30.0, "she cracks an egg", "test"),
        QueryRecord("7", "cooking_03", 1.0, 2.0, 40.0, "stir", "train"),
    ]
    assert clipped == 0


def test_durations_come_from_a_real_feature_store(tmp_path: Path) -> None:
    writer = StoreWriter(tmp_path / "feats.h5", {})
    track = Track(np.zeros((2, 4), np.float32), np.array([[0, 1], [1, 2]], np.float64))
    writer.add_video(VideoRecord("cooking_03", {"duration": 31.5, "fps": 30.0}, {"clip": track}))
    writer.close()
    durations = store_durations(tmp_path / "feats.h5")
    assert durations == {"cooking_03": 31.5}
    path = _write(tmp_path / "q.jsonl", {"video_id": "cooking_03", "start": 0, "end": 3, "query": "egg"})
    assert read_custom(path, durations, known_videos=durations)[0][0].duration == 31.5


def test_times_beyond_the_duration_are_clipped_and_counted(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = _write(
        tmp_path / "q.jsonl",
        {"video_id": "a", "start": -1.0, "end": 5, "query": "x", "duration": 10},
        {"video_id": "a", "start": 2, "end": 12.5, "query": "y", "duration": 10},
        {"video_id": "a", "start": 2, "end": 3, "query": "z", "duration": 10},
    )
    with caplog.at_level(logging.WARNING, logger="img_vmr"):
        records, clipped = read_custom(path)
    assert clipped == 2 and [(r.start, r.end) for r in records] == [(0.0, 5.0), (2.0, 10.0), (2.0, 3.0)]
    assert "2 spans reach outside [0, duration] and were clipped" in caplog.text


def test_missing_fields_are_named_with_the_line(tmp_path: Path) -> None:
    path = _write(tmp_path / "q.jsonl", {"video_id": "a", "start": 0, "end": 1, "query": "x"}, {"video_id": "a"})
    message = _error(path, durations={"a": 9.0})
    assert message == f"{path} line 2: missing start, end, query (needs video_id, start, end, query)"


def test_start_after_end_is_an_error(tmp_path: Path) -> None:
    path = _write(tmp_path / "q.jsonl", {"video_id": "a", "start": 5, "end": 1, "query": "x", "duration": 9})
    assert _error(path).endswith("line 1: start 5 is after end 1")


def test_empty_query_is_an_error_and_further_problems_are_counted(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "q.jsonl",
        {"video_id": "a", "start": 0, "end": 1, "query": "   ", "duration": 9},
        {"video_id": "a", "start": "0", "end": 1, "query": "x", "duration": 9},
        "not json",
    )
    assert _error(path) == f"{path} line 1: empty query (2 more problems)"


def test_unknown_video_ids_are_listed(tmp_path: Path) -> None:
    rows = [{"video_id": f"v{n}", "start": 0, "end": 1, "query": "x", "duration": 9} for n in range(12)]
    path = _write(tmp_path / "q.jsonl", *rows)
    message = _error(path, known_videos={"v0"})
    assert "11 video ids are not in the feature store: v1, v2," in message and "v10 and 1 more" in message


def test_missing_duration_without_a_store_says_how_to_fix_it(tmp_path: Path) -> None:
    path = _write(tmp_path / "q.jsonl", {"video_id": "a", "start": 0, "end": 1, "query": "x"})
    assert "no duration for video 'a'; add \"duration\" or pass the feature store" in _error(path)


def test_a_moment_starting_after_the_video_is_an_error(tmp_path: Path) -> None:
    path = _write(tmp_path / "q.jsonl", {"video_id": "a", "start": 12, "end": 13, "query": "x", "duration": 9})
    assert "start 12.0 is not before the end of the video (9.0 s)" in _error(path)


def test_duplicate_qids_are_an_error(tmp_path: Path) -> None:
    row = {"video_id": "a", "start": 0, "end": 1, "query": "x", "duration": 9, "qid": "q1"}
    path = _write(tmp_path / "q.jsonl", row, row)
    assert _error(path).endswith("line 2: qid 'q1' already used on line 1")


def test_non_utf8_file_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "q.jsonl"
    good = b'{"video_id": "a", "start": 0, "end": 1, "query": "cafe", "duration": 9}\n'
    path.write_bytes(good + good.replace(b"cafe", b"caf\xe9"))
    assert _error(path) == f"{path} is not UTF-8 text (byte 0xe9 on line 2); save it as UTF-8"


def test_empty_file_and_missing_file_are_errors(tmp_path: Path) -> None:
    assert "holds no queries" in _error(_write(tmp_path / "q.jsonl", ""))
    with pytest.raises(ManifestError, match="does not exist"):
        read_rows(tmp_path / "nothing.jsonl")


def test_a_span_entirely_before_the_video_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "q.jsonl"
    path.write_text('{"video_id": "v", "start": -5, "end": -1, "query": "a dog barks", "duration": 10}\n')
    with pytest.raises(ManifestError, match="end -1"):
        read_custom(path, None, None)
