"""The text store: what goes in comes out by qid, crash-safe parts, resume, provenance checks, one writer."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from extract.core.errors import ProvenanceMismatchError, StoreCorruptError, StoreLockedError
from extract.text.store import TextBatch, TextStore, TextStoreWriter
from manifests.records import QueryRecord

PROVENANCE = {"recipe": {"kind": "bert", "model": "tiny", "max_length": 8}, "software": {}, "runtime": {}}


def _records(*sentences: str, first: int = 0) -> list[QueryRecord]:
    return [QueryRecord(f"qid_{first + i}", "v1", 1.0, 2.5, 30.0, s, "test") for i, s in enumerate(sentences)]


def _batch(records: list[QueryRecord], dim: int = 4) -> TextBatch:
    """Token features whose values say which query and token they belong to."""
    tokens = [["[CLS]", *r.sentence.split(), "[SEP]"] for r in records]
    features = [
        np.full((len(t), dim), float(r.qid[4:]), np.float32) + np.arange(len(t))[:, None]
        for r, t in zip(records, tokens, strict=True)
    ]
    ids = [np.arange(len(t), dtype=np.int32) for t in tokens]
    pooled = np.stack([f[0] for f in features])
    return TextBatch(records, tokens, [False] * len(records), {"token_ids": ids, "features": features}, pooled)


def test_queries_read_back_by_qid_with_padding_mask(tmp_path: Path) -> None:
    records = _records("a person opens the door", "sits", "")
    writer = TextStoreWriter(tmp_path / "text.h5", "bert", PROVENANCE)
    writer.commit(_batch(records))
    writer.close()
    with TextStore(tmp_path / "text.h5") as store:
        assert store.kind == "bert" and store.provenance == PROVENANCE and len(store) == 3
        assert store.records() == records
        assert store.tokens("qid_1") == ["[CLS]", "sits", "[SEP]"]
        np.testing.assert_array_equal(store.features("qid_1")[:, 0], [1, 2, 3])
        np.testing.assert_array_equal(store.pooled("qid_1"), np.full(4, 1.0))
        features, mask = store.batch(["qid_1", "qid_0"])
        assert features.shape == (2, 7, 4) and mask.tolist() == [[1, 1, 1, 0, 0, 0, 0], [1] * 7]
        assert not features[0, 3:].any()
        assert store.features("qid_2").shape == (2, 4)  # an empty query keeps its special tokens
    assert not (tmp_path / "text.h5.parts").exists()


def test_glove_ids_and_vocabulary_round_trip(tmp_path: Path) -> None:
    records = _records("door opens", "zebra")
    batch = TextBatch(
        records,
        [["door", "opens"], ["zebra"]],
        [False, False],
        token_arrays={"word_ids": [np.array([2, 3], np.int32), np.array([1], np.int32)]},
        char_ids=[[np.array([3, 2, 2, 1], np.int32), np.array([2, 1, 1, 1, 1], np.int32)], [np.array([1] * 5)]],
    )
    writer = TextStoreWriter(tmp_path / "g.h5", "glove", PROVENANCE)
    writer.commit(batch)
    vectors = np.arange(6, dtype=np.float32).reshape(2, 3)
    writer.close({"words": ("<PAD>", "<UNK>", "door", "opens"), "vectors": vectors, "chars": ("<PAD>", "<UNK>", "o")})
    with TextStore(tmp_path / "g.h5") as store:
        assert store.word_ids("qid_0").tolist() == [2, 3] and store.word_ids("qid_1").tolist() == [1]
        assert [c.tolist() for c in store.char_ids("qid_0")] == [[3, 2, 2, 1], [2, 1, 1, 1, 1]]
        assert [c.tolist() for c in store.char_ids("qid_1")] == [[1] * 5]
        words, stored_vectors, chars = store.vocabulary()
        assert words == ["<PAD>", "<UNK>", "door", "opens"] and chars == ["<PAD>", "<UNK>", "o"]
        np.testing.assert_array_equal(stored_vectors, vectors)


def test_a_killed_run_resumes_from_its_committed_parts(tmp_path: Path) -> None:
    records = _records("one", "two", "three", "four")
    writer = TextStoreWriter(tmp_path / "text.h5", "bert", PROVENANCE)
    writer.commit(_batch(records[:2]))
    writer._lock_handle.close()  # the process dies: no close(), its lock goes with it
    (tmp_path / "text.h5.parts" / ".part-000002.h5.999.tmp").write_bytes(b"half a part")
    with pytest.raises(StoreCorruptError, match="unfinished there, re-run it to finish"):
        TextStore(tmp_path / "text.h5")
    resumed = TextStoreWriter(tmp_path / "text.h5", "bert", PROVENANCE)
    todo = resumed.todo(records)
    assert [r.qid for r in todo] == ["qid_2", "qid_3"]
    resumed.commit(_batch(todo))
    resumed.close()
    with TextStore(tmp_path / "text.h5") as store:
        assert store.qids() == ["qid_0", "qid_1", "qid_2", "qid_3"]
        np.testing.assert_array_equal(store.features("qid_3")[:, 0], [3, 4, 5])
    assert not (tmp_path / "text.h5.parts").exists()


def test_adding_queries_keeps_the_stored_ones_and_a_changed_sentence_is_recomputed(tmp_path: Path) -> None:
    path = tmp_path / "text.h5"
    first = TextStoreWriter(path, "bert", PROVENANCE)
    first.commit(_batch(_records("one", "two")))
    first.close()
    records = _records("one", "TWO changed", "three")
    second = TextStoreWriter(path, "bert", PROVENANCE)
    todo = second.todo(records)
    assert [r.sentence for r in todo] == ["TWO changed", "three"]
    second.commit(_batch(todo))
    second.close()
    with TextStore(path) as store:
        assert sorted(store.qids()) == ["qid_0", "qid_1", "qid_2"] and len(store) == 3
        assert store.tokens("qid_1") == ["[CLS]", "TWO", "changed", "[SEP]"]
        assert store.records()[store.row("qid_1")].sentence == "TWO changed"
        with h5py.File(path, "r", locking=False) as f:
            assert f.attrs["tokens"] == len(f["tokens/features"]) == 3 + 4 + 3


def test_a_different_recipe_is_refused_unless_no_resume(tmp_path: Path) -> None:
    path = tmp_path / "text.h5"
    writer = TextStoreWriter(path, "bert", PROVENANCE)
    writer.commit(_batch(_records("one")))
    writer.close()
    other = {**PROVENANCE, "recipe": {**PROVENANCE["recipe"], "max_length": 16}}
    with pytest.raises(ProvenanceMismatchError, match=r"max_length: 8 -> 16\); use another --out, or --no-resume"):
        TextStoreWriter(path, "bert", other)
    assert not (tmp_path / "text.h5.parts").exists()
    replacing = TextStoreWriter(path, "bert", other, resume=False)
    assert replacing.todo(_records("one")) == _records("one")
    replacing.commit(_batch(_records("one")))
    replacing.close()
    with TextStore(path) as store:
        assert store.provenance["recipe"]["max_length"] == 16 and [r.sentence for r in store.records()] == ["one"]


def test_a_second_writer_is_refused(tmp_path: Path) -> None:
    writer = TextStoreWriter(tmp_path / "text.h5", "bert", PROVENANCE)
    with pytest.raises(StoreLockedError, match=r"is being written by pid \d+"):
        TextStoreWriter(tmp_path / "text.h5", "bert", PROVENANCE)
    writer.close()


def test_a_non_store_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "text.h5").write_bytes(b"not hdf5")
    with pytest.raises(StoreCorruptError, match="not readable as HDF5"):
        TextStoreWriter(tmp_path / "text.h5", "bert", PROVENANCE)


def test_a_rerun_on_other_queries_keeps_only_those_with_their_current_labels(tmp_path: Path) -> None:
    path = tmp_path / "text.h5"
    first = TextStoreWriter(path, "bert", PROVENANCE)
    records = _records("opens the door", "sits down")
    first.todo(records)
    first.commit(_batch(records))
    first.close()
    second = TextStoreWriter(path, "bert", PROVENANCE)
    relabelled = [QueryRecord("qid_0", "v9", 4.0, 6.0, 40.0, "opens the door", "train")]
    assert second.todo(relabelled) == []  # same sentence: its features are reused, not recomputed
    second.close()
    with TextStore(path) as store:
        assert store.records() == relabelled
        np.testing.assert_array_equal(store.features("qid_0")[:, 0], [0, 1, 2, 3, 4])
