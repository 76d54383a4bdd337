"""The cross-video batcher on its own: fake units, no decoding, no model."""

from __future__ import annotations

import numpy as np
import pytest

from extract.models.base import Units
from extract.run.batcher import Batcher


def _units(video: int, count: int, start: int = 0) -> Units:
    """Units whose input value says (video, index), so every row can be traced back."""
    index = np.arange(start, start + count)
    inputs = np.stack([np.full(count, video), index], axis=1).astype(np.float32)
    return Units(inputs, np.stack([index, index + 1.0], axis=1))


def test_batches_are_filled_across_videos_in_arrival_order() -> None:
    batcher: Batcher[str] = Batcher({"clip": 4})
    batcher.add("clip", "a", _units(1, 3))
    assert batcher.full_batches() == []  # 3 of 4: wait for more
    batcher.add("clip", "b", _units(2, 3))
    (batch,) = batcher.full_batches()
    assert [(p.key, len(p.units)) for p in batch.pieces] == [("a", 3), ("b", 1)]
    assert batch.inputs()[:, 0].tolist() == [1, 1, 1, 2]
    assert batcher.pending("clip") == 2
    (rest,) = batcher.all_batches()
    assert [(p.key, p.units.spans[:, 0].tolist()) for p in rest.pieces] == [("b", [1.0, 2.0])]
    assert batcher.pending() == 0


def test_a_long_video_streams_through_several_batches() -> None:
    batcher: Batcher[str] = Batcher({"clip": 4})
    batcher.add("clip", "long", _units(1, 10))
    assert [len(b) for b in batcher.full_batches()] == [4, 4]
    assert [len(b) for b in batcher.all_batches()] == [2]


def test_split_hands_each_piece_its_own_rows() -> None:
    batcher: Batcher[str] = Batcher({"i3d": 5})
    batcher.add("i3d", "a", _units(1, 2))
    batcher.add("i3d", "b", _units(2, 3))
    (batch,) = batcher.full_batches()
    rows = batch.inputs()[:, None, :].repeat(2, axis=1)  # two rows per unit, as I3D gives
    for piece, piece_rows in batch.split(rows):
        assert piece_rows.shape == (len(piece.units), 2, 2)
        np.testing.assert_array_equal(piece_rows[:, 0], piece.units.inputs)


def test_features_batch_separately_with_their_own_sizes() -> None:
    batcher: Batcher[str] = Batcher({"clip": 2, "panns": 3})
    batcher.add("clip", "a", _units(1, 2))
    batcher.add("panns", "a", _units(1, 2))
    assert [(b.feature, len(b)) for b in batcher.full_batches()] == [("clip", 2)]
    assert [(b.feature, len(b)) for b in batcher.all_batches()] == [("panns", 2)]


def test_dropping_a_failed_video_keeps_the_others_in_order() -> None:
    batcher: Batcher[str] = Batcher({"clip": 8, "panns": 8})
    batcher.add("clip", "a", _units(1, 2))
    batcher.add("clip", "bad", _units(2, 3))
    batcher.add("panns", "bad", _units(2, 1))
    batcher.add("clip", "c", _units(3, 2))
    assert batcher.drop("bad", ["clip"]) == 3
    assert batcher.pending("clip") == 4 and batcher.pending("panns") == 1  # only the named feature
    assert batcher.drop("bad") == 1 and batcher.pending("panns") == 0  # every feature
    (batch,) = batcher.all_batches()
    assert [p.key for p in batch.pieces] == ["a", "c"]


def test_empty_units_are_not_queued_and_sizes_must_be_positive() -> None:
    batcher: Batcher[str] = Batcher({"clip": 2})
    batcher.add("clip", "a", _units(1, 0))
    assert batcher.pending() == 0 and batcher.all_batches() == []
    with pytest.raises(ValueError, match="positive"):
        Batcher({"clip": 0})
