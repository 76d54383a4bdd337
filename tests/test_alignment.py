import itertools

import numpy as np
import pytest

from extract.store import FeatureStore, StoreWriter, Track, VideoRecord
from img_model.data.alignment import (
    aligned_tracks,
    img_boundaries,
    img_resample,
    img_visual_sampling,
    pooled_spans,
    time_resample,
)


def _rows(n: int) -> np.ndarray:
    return np.arange(n, dtype=np.float64)[:, None] * np.array([[1.0, 10.0]])


def test_ten_rows_to_four_drop_the_last_row_as_img_does() -> None:
    # img_spec.md §2.2: means of rows {0,1}, {2,3,4}, {5,6,7} and row 8 alone; row 9 is dropped.
    out = img_resample(_rows(10), 4)
    np.testing.assert_allclose(out[:, 0], [0.5, 3.0, 6.0, 8.0])


def test_three_rows_to_seven_upsample_as_img_does() -> None:
    np.testing.assert_array_equal(img_resample(_rows(3), 7)[:, 0], [0, 0, 1, 1, 2, 2, 2])


def test_boundaries_round_half_to_even_and_clamp() -> None:
    # 6 rows to 4: k * 1.5 = 0, 1.5, 3, 4.5, 6 -> 0, 2, 3, 4, 6 -> clamped to 5 at the end.
    assert img_boundaries(6, 4).tolist() == [0, 2, 3, 4, 5]


def test_short_tracks_are_not_pooled() -> None:
    rows = _rows(5)
    assert img_visual_sampling(rows, 128) is rows


def test_pooled_spans_cover_their_source_rows() -> None:
    spans = np.stack([np.arange(10.0), np.arange(10.0) + 1], axis=1)
    np.testing.assert_array_equal(pooled_spans(spans, 4), [[0, 2], [2, 5], [5, 8], [8, 9]])


def test_time_alignment_averages_overlapping_audio_rows() -> None:
    audio = np.array([[0.0], [2.0], [4.0], [6.0]])
    audio_spans = np.array([[0.0, 0.5], [0.5, 1.0], [1.0, 1.5], [1.5, 2.0]])
    visual_spans = np.array([[0.0, 1.0], [1.0, 2.0], [5.0, 6.0]])
    out = time_resample(audio, audio_spans, visual_spans)
    np.testing.assert_allclose(out[:, 0], [1.0, 5.0, 6.0])  # the last has no overlap: nearest row


@pytest.mark.parametrize("rule", ["img", "time"])
def test_aligned_tracks_from_a_store(tmp_path, rule) -> None:
    spans_v = np.stack([np.arange(300.0), np.arange(300.0) + 1], axis=1)
    spans_a = np.stack([np.arange(0, 300, 0.96), np.arange(0, 300, 0.96) + 0.96], axis=1)
    tracks = {
        "i3d": Track(np.ones((300, 4), np.float32), spans_v),
        "vggish": Track(np.full((len(spans_a), 2), 255, np.uint8), spans_a),
    }
    writer = StoreWriter(tmp_path / "f.h5", {})
    writer.add_video(VideoRecord("v", {"has_audio": True}, tracks))
    writer.close()
    with FeatureStore(tmp_path / "f.h5") as store:
        aligned = aligned_tracks(store, "v", "i3d", "vggish", max_pos_len=128, rule=rule)
    assert aligned.visual.shape == (128, 4) and aligned.audio is not None and aligned.audio.shape == (128, 2)
    np.testing.assert_allclose(aligned.audio, 1.0)  # uint8 255 read back as 1.0
    assert aligned.spans[0, 0] == 0 and aligned.spans[-1, 1] <= 300


def test_img_resample_is_the_segment_mean_of_the_published_rule_for_every_length() -> None:
    rng = np.random.default_rng(0)
    for length in [*range(1, 140), 400, 1000]:
        rows = rng.standard_normal((length, 3)).astype(np.float32)
        for target in (1, 2, 7, 64, 128):
            bounds = img_boundaries(length, target)
            pairs = itertools.pairwise(bounds)
            expected = [rows[a:b].astype(np.float64).mean(axis=0) if b > a else rows[a] for a, b in pairs]
            np.testing.assert_allclose(img_resample(rows, target), np.array(expected), rtol=1e-12, atol=1e-12)
