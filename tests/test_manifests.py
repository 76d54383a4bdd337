"""Dataset manifests on the real annotation files (tests/data): counts, qids and clipping of img_spec.md §1."""

from __future__ import annotations

import functools
import json

import pytest

from manifests import activitynet, charades
from manifests.errors import ManifestError
from manifests.records import split_counts
from manifests.registry import DATASETS, DatasetQueries, load_dataset
from tests.testdata import annotations_dir

DATA = annotations_dir()


@functools.cache
def dataset(name: str) -> DatasetQueries:
    return load_dataset(name, DATA)


def test_charades_sta_counts_match_the_spec() -> None:
    queries = dataset("charades-sta")
    assert split_counts(queries.records) == {"train": 12408, "test": 3720}
    assert len({r.video_id for r in queries.split("train")}) == 5338
    assert len({r.video_id for r in queries.split("test")}) == 1334


def test_charades_qids_are_the_authors_in_file_order() -> None:
    queries = dataset("charades-sta")
    assert [r.qid for r in queries.records] == [f"qid_{n}" for n in range(16128)]
    first = queries.records[0]
    assert (first.video_id, first.start, first.end, first.duration) == ("AO8RW", 0.0, 6.9, 33.67)
    assert first.sentence == "a person is putting a book on a shelf."


def test_charades_end_times_are_clipped_to_the_duration_as_often_as_the_spec_counts() -> None:
    assert dataset("charades-sta").clipped == {"train": 1802, "test": 562}
    assert dataset("charades-am").clipped["test"] == 197
    for record in dataset("charades-sta").records:
        assert 0.0 <= record.start < record.end <= record.duration


def test_charades_am_trains_on_charades_sta_and_tests_on_a_subset_of_its_test_qids() -> None:
    am, sta = dataset("charades-am"), dataset("charades-sta")
    assert split_counts(am.records) == {"train": 12408, "test": 1196}
    assert am.split("train") == sta.split("train")
    assert len({r.video_id for r in am.split("test")}) == 592
    sta_test = {r.qid: r for r in sta.split("test")}
    assert all(sta_test[r.qid] == r for r in am.split("test"))
    assert [r.qid for r in am.split("test")][:3] == ["qid_12409", "qid_12410", "qid_12408"]  # its own order


def test_activitynet_counts_and_rebuilt_train_qids() -> None:
    queries = dataset("activitynet")
    assert split_counts(queries.records) == {"train": 37421, "test": 17502, "val": 17028}
    assert [r.qid for r in queries.split("train")] == [f"qid_{n}" for n in range(37421)]
    assert [r.qid for r in queries.split("test")] == [f"qid_{n}" for n in range(37421, 54923)]
    assert [r.qid for r in queries.split("val")] == [f"qid_{n}" for n in range(54923, 71951)]
    assert len({r.video_id for r in queries.split("train")}) == 10009
    assert len({r.video_id for r in queries.split("test")}) == 4916
    assert "v_0dkIbKXXFzI" not in {r.video_id for r in queries.split("test")}


def test_activitynet_clipping_and_the_four_empty_train_spans_kept() -> None:
    queries = dataset("activitynet")
    assert queries.clipped == {"train": 261, "test": 134, "val": 111}
    assert sum(r.start >= r.end for r in queries.split("train")) == 4
    assert sum(r.start >= r.end for r in queries.split("test")) == 0
    assert all(r.start >= 0.0 and r.end <= r.duration for r in queries.records)


def test_activitynet_sentences_are_stripped_and_typo_fixed_in_val_1() -> None:
    test = dataset("activitynet").split("test")
    assert test[1].sentence == "The coach helps the guy in red with the proper body placement and lifting technique."
    assert not any("plying" in r.sentence.split() for r in test)


def test_vocabulary_splits_are_train_and_test() -> None:
    assert all(manifest.vocabulary_splits == ("train", "test") for manifest in DATASETS.values())


def test_malformed_charades_line_is_one_line_error() -> None:
    with pytest.raises(ManifestError, match="line 2: expected 'VID START END##qid_N##sentence'"):
        charades.parse_queries("AO8RW 0.0 6.9##qid_0##a.\nAO8RW 0.0 6.9##a person.\n", {"AO8RW": 30.0}, "train", "f")


def test_charades_video_without_duration_is_named() -> None:
    with pytest.raises(ManifestError, match=r"without a duration in charades.json \(first: ZZZZZ\)"):
        charades.parse_queries("ZZZZZ 0.0 6.9##qid_0##a.\n", {"AO8RW": 30.0}, "train", "f")


def test_activitynet_lists_of_different_lengths_are_refused() -> None:
    text = json.dumps({"v_a": {"duration": 9.0, "timestamps": [[0, 1], [1, 2]], "sentences": ["x"]}})
    with pytest.raises(ManifestError, match="v_a has lists of different lengths"):
        activitynet.parse_queries(text, "train", "f", number_from=0)


def test_unknown_dataset_names_the_known_ones() -> None:
    with pytest.raises(ManifestError, match="known: charades-sta, charades-am, activitynet"):
        load_dataset("charades", DATA)
