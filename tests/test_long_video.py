"""A 20-minute video streams through decoding and windowing in bounded memory."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from extract.media.decode import AudioSampling, FrameSampling, iter_audio, iter_frames
from extract.media.probe import probe
from extract.models.windows import AudioWindows, FrameWindows
from tests.videos import ffmpeg

MINUTES = 20


@pytest.fixture(scope="module")
def long_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("long") / "twenty_minutes.mkv"
    seconds = MINUTES * 60
    ffmpeg(
        "-f",
        "lavfi",
        "-i",
        f"testsrc2=size=64x48:rate=2:duration={seconds}",
        "-f",
        "lavfi",
        "-i",
        f"sine=frequency=300:sample_rate=16000:duration={seconds}",
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        "-c:a",
        "pcm_s16le",
        str(path),
    )
    return path


def _peak_mb(function) -> tuple[float, int]:
    tracemalloc.start()
    try:
        count = function()
        return tracemalloc.get_traced_memory()[1] / 2**20, count
    finally:
        tracemalloc.stop()


def test_audio_windows_of_a_20_minute_video_stream_in_bounded_memory(long_video: Path) -> None:
    meta = probe(long_video)
    windower = AudioWindows(32000, 16000, 32000, keep_tail=True)

    def run() -> int:
        rows = 0
        for chunk in iter_audio(meta, AudioSampling(sample_rate=32000, chunk_seconds=10.0)):
            units = windower.push(chunk)
            rows += 0 if units is None else len(units)
        return rows + len(windower.finish() or [])

    peak, rows = _peak_mb(run)
    whole = MINUTES * 60 * 32000 * 4 / 2**20  # the decoded audio would be 146 MB
    print(f"audio: {rows} windows, peak traced memory {peak:.1f} MB vs {whole:.0f} MB for the whole track")
    assert rows == 1 + int(np.ceil((MINUTES * 60 - 1.0) / 0.5))
    assert peak < 20


def test_frame_windows_of_a_20_minute_video_stream_in_bounded_memory(long_video: Path) -> None:
    meta = probe(long_video)
    windower = FrameWindows(16, 16)

    def run() -> int:
        windows = 0
        for batch in iter_frames(meta, FrameSampling(fps=2.0, short_side=112, crop=112, chunk_frames=32)):
            units = windower.push(batch)
            windows += 0 if units is None else len(units)
        return windows + len(windower.finish() or [])

    peak, windows = _peak_mb(run)
    whole = MINUTES * 60 * 2 * 112 * 112 * 3 / 2**20  # 2400 frames would be 86 MB
    print(f"frames: {windows} windows, peak traced memory {peak:.1f} MB vs {whole:.0f} MB for all frames")
    assert windows == 150
    assert peak < 15
