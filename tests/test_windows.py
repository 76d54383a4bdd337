import numpy as np
import pytest

from extract.media.decode import AudioChunk, FrameBatch
from extract.models.windows import (
    AudioWindows,
    FrameWindows,
    audio_window_starts,
    frame_windows,
    i3d_rows,
    vslnet_windows,
)


def test_vslnet_rule_shifts_the_last_window_and_skips_the_last_frame() -> None:
    assert vslnet_windows(60, 24, 24) == [(0, 24), (24, 48), (35, 59)]
    assert vslnet_windows(25, 24, 24) == [(0, 24), (0, 24)]  # published quirk: a repeated window


def test_short_videos_get_one_padded_window() -> None:
    assert frame_windows(10, 24, 24) == [(0, 10)]
    assert frame_windows(1, 16, 16) == [(0, 1)]


def test_chunked_windows_extend_a_short_last_chunk_backwards() -> None:
    windows = frame_windows(20010, 16, 16, chunk=10000)
    assert windows[-1] == (19994, 20009)  # last chunk of 10 frames -> 16 frames from 19994, then the rule
    assert (9983, 9999) in windows and (10000, 10016) in windows


def test_i3d_rows_per_window() -> None:
    assert i3d_rows(24) == [(0, 16), (8, 24)]
    assert i3d_rows(16) == [(0, 16)]


def _stream_frames(total: int, windower: FrameWindows, chunk: int) -> tuple[list[tuple[int, int]], np.ndarray]:
    starts, spans = [], []
    for first in range(0, total, chunk):
        n = min(chunk, total - first)
        data = np.arange(first, first + n).reshape(n, 1, 1, 1).repeat(3, axis=3).astype(np.int64)
        batch = FrameBatch(data, np.arange(first, first + n) / 24.0, np.full(n, 1 / 24.0))
        for units in (windower.push(batch),):
            if units is not None:
                starts += [(int(u[0, 0, 0, 0]), int(u[-1, 0, 0, 0])) for u in units.inputs]
                spans.append(units.spans)
        assert len(windower._frames) <= windower.window + windower.stride + chunk + 1  # bounded buffer
    units = windower.finish()
    if units is not None:
        starts += [(int(u[0, 0, 0, 0]), int(u[-1, 0, 0, 0])) for u in units.inputs]
        spans.append(units.spans)
    return starts, np.concatenate(spans)


@pytest.mark.parametrize("total", [1, 5, 16, 23, 24, 25, 47, 48, 49, 100, 241])
@pytest.mark.parametrize("chunk", [1, 7, 32])
def test_streaming_frame_windows_equal_the_rule(total: int, chunk: int) -> None:
    got, spans = _stream_frames(total, FrameWindows(24, 24), chunk)
    expected = frame_windows(total, 24, 24)
    if total <= 24:
        assert got == [(0, total - 1)]
    else:
        assert got == [(a, b - 1) for a, b in expected]
    assert spans.shape[1:] == (2, 2)


@pytest.mark.parametrize("total", [40, 60, 63, 64, 70, 90])
def test_streaming_chunked_windows_equal_the_rule(total: int) -> None:
    got, _ = _stream_frames(total, FrameWindows(16, 16, chunk=30), 9)
    assert got == [(a, b - 1) for a, b in frame_windows(total, 16, 16, chunk=30)]


def test_window_rows_carry_the_time_of_their_frames() -> None:
    _, spans = _stream_frames(48, FrameWindows(24, 24), 48)
    np.testing.assert_allclose(spans[0], [[0, 16 / 24], [8 / 24, 1.0]])


@pytest.mark.parametrize("total", [100, 3200, 3201, 3300, 9999])
@pytest.mark.parametrize("keep_tail", [True, False])
def test_streaming_audio_windows_equal_the_rule(total: int, keep_tail: bool) -> None:
    windower = AudioWindows(window=1000, hop=500, sample_rate=1000, keep_tail=keep_tail)
    samples = np.arange(total, dtype=np.float32)
    got = []
    for first in range(0, total, 777):
        units = windower.push(AudioChunk(samples[first : first + 777], first / 1000))
        if units is not None:
            got.append(units)
    tail = windower.finish()
    if tail is not None:
        got.append(tail)
    inputs = np.concatenate([u.inputs for u in got])
    expected = audio_window_starts(total, 1000, 500, keep_tail)
    np.testing.assert_array_equal(inputs[:, 0], samples[expected])
    np.testing.assert_allclose(np.concatenate([u.spans for u in got])[:, 0], expected / 1000)
    np.testing.assert_allclose(np.concatenate([u.spans for u in got])[:, 1], np.minimum(expected + 1000, total) / 1000)
    assert inputs.shape[1] == 1000
