"""HERO's clip rule (extract/models/hero_clips.py): padding, the duration cut, the 32 sampled positions, streaming."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from extract.core.errors import UsageError
from extract.media.decode import FrameBatch
from extract.media.probe import probe
from extract.models.hero_clips import (
    ClipRule,
    ClipSource,
    HeroClips,
    clip_frame_index,
    kept_clips,
    padded_clip_frames,
    sample_positions,
)
from tests.videos import make_video

TWO_SECONDS = ClipRule()
THREE_HALVES = ClipRule(clip_seconds=Fraction(3, 2))


def test_a_partial_second_repeats_its_last_frame_and_an_odd_second_repeats_whole() -> None:
    clips = padded_clip_frames(70, TWO_SECONDS)  # 2.33 s -> 3 s (frame 69 x 20) -> 4 s (second 2 again)
    assert clips.shape == (2, 60)
    np.testing.assert_array_equal(clips[0], np.arange(60))
    second = [*range(60, 70), *[69] * 20]
    np.testing.assert_array_equal(clips[1], second + second)


def test_three_half_second_clips_pad_to_a_multiple_of_three_seconds() -> None:
    clips = padded_clip_frames(100, THREE_HALVES)  # 3.33 s -> 4 s -> 6 s: four clips of 45 frames
    assert clips.shape == (4, 45)
    last_second = [*range(90, 100), *[99] * 20]
    np.testing.assert_array_equal(clips.reshape(-1)[90:], last_second * 3)


def test_whole_seconds_are_not_padded() -> None:
    np.testing.assert_array_equal(padded_clip_frames(120, TWO_SECONDS), np.arange(120).reshape(2, 60))
    assert padded_clip_frames(1, TWO_SECONDS).tolist() == [[0] * 60]


@pytest.mark.parametrize(
    ("available", "duration", "kept"),
    [(3, 3.9, 2), (3, 4.0, 2), (3, 4.01, 3), (3, 9.0, 3), (3, None, 3), (3, -1.0, 3), (1, 0.01, 1)],
)
def test_the_stream_duration_decides_how_many_clips_are_kept(available, duration, kept) -> None:
    assert kept_clips(available, duration, TWO_SECONDS) == kept


def test_sampled_positions_depend_on_the_source_frame_rate() -> None:
    at_30 = sample_positions(30, TWO_SECONDS)  # linspace(0, 63, 32): every other frame, the last two clamped
    assert at_30.tolist() == [*range(0, 60, 2), 59, 59]
    at_25 = sample_positions(25, TWO_SECONDS)  # linspace(0, 52.33, 32): the first 1.77 s of the clip
    assert at_25[0] == 0 and at_25[-1] == 52
    at_60 = sample_positions(60, TWO_SECONDS)  # linspace(0, 127, 32): from the 16th on, all the last frame
    assert at_60[:15].tolist() == [0, 4, 8, 12, 16, 20, 24, 28, 32, 36, 40, 45, 49, 53, 57]
    assert (at_60[15:] == 59).all()


def test_a_clip_length_that_is_no_whole_number_of_frames_is_refused() -> None:
    with pytest.raises(UsageError, match="not a whole number of frames at 25 fps"):
        ClipRule(clip_seconds=Fraction(3, 2), frame_rate=25)


def _stream(total: int, chunk: int, windower: HeroClips) -> tuple[np.ndarray, np.ndarray]:
    """Frames whose pixels hold their index, pushed `chunk` at a time: (source frame of each input, spans)."""
    units = []
    for first in range(0, total, chunk):
        index = np.arange(first, min(first + chunk, total))
        frames = np.stack([np.full((2, 2, 3), i, np.uint8) for i in index])  # totals stay below 256
        units.append(windower.push(FrameBatch(frames, index / 30, np.full(len(index), 1 / 30))))
        assert len(windower._frames) <= windower.rule.clip_frames + windower.rule.frame_rate + chunk
    units = [u for u in [*units, windower.finish()] if u is not None]
    if not units:
        return np.zeros((0, 32), np.int64), np.zeros((0, 2))
    inputs = np.concatenate([u.inputs for u in units])
    return inputs[:, :, 0, 0, 0].astype(np.int64), np.concatenate([u.spans for u in units])


@pytest.mark.parametrize("rule", [TWO_SECONDS, THREE_HALVES], ids=["2s", "3/2s"])
@pytest.mark.parametrize("total", [1, 29, 44, 50, 59, 60, 61, 95, 119, 125, 200])
@pytest.mark.parametrize("chunk", [1, 7, 60, 500])
def test_streaming_gives_the_whole_video_rule(rule: ClipRule, total: int, chunk: int) -> None:
    for fps, duration in ((30, total / 30), (25, total / 30 - 0.1), (60, None)):
        got, spans = _stream(total, chunk, HeroClips(rule, ClipSource(fps, duration)))
        want = clip_frame_index(total, fps, duration, rule)
        np.testing.assert_array_equal(got, want)
        assert len(spans) == len(want)


def test_spans_run_from_the_first_to_the_end_of_the_last_frame_a_clip_holds() -> None:
    _, spans = _stream(70, 16, HeroClips(TWO_SECONDS, ClipSource(30, 70 / 30)))
    np.testing.assert_allclose(spans, [[0, 2], [2, 70 / 30]])
    _, spans = _stream(100, 16, HeroClips(THREE_HALVES, ClipSource(30, 4.6)))  # the 4th clip only repeats
    np.testing.assert_allclose(spans, [[0, 1.5], [1.5, 3], [3, 100 / 30], [3, 100 / 30]])


def test_start_reads_the_rate_and_duration_of_the_video_stream(tmp_path) -> None:
    stream = probe(make_video(tmp_path / "a.mp4", seconds=2.5, size="64x48", rate=25, audio=False))
    windower = HeroClips(TWO_SECONDS)
    windower.start(stream)
    assert windower.source == ClipSource(25, pytest.approx(2.5, abs=0.05))
    with pytest.raises(RuntimeError, match="call start"):
        HeroClips(TWO_SECONDS).push(FrameBatch(np.zeros((1, 2, 2, 3), np.uint8), np.zeros(1), np.ones(1)))
