import dataclasses
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from extract.core.errors import VideoDecodeError
from extract.media.decode import AudioSampling, FrameSampling, iter_audio, iter_frames
from extract.media.ffmpeg import input_args
from extract.media.probe import NOT_A_CONTAINER, probe, read_stream_attrs
from extract.store import StoreWriter, Track, VideoRecord
from tests.store_views import store_durations
from tests.videos import REAL_VIDEO, ffmpeg, make_video


def test_real_activitynet_video_metadata() -> None:
    meta = probe(REAL_VIDEO)
    assert (meta.width, meta.height, meta.fps, meta.frame_count) == (480, 360, 30.0, 420)
    assert meta.header_duration == pytest.approx(14.05, abs=0.01)
    assert meta.has_audio and meta.audio_codec == "aac" and meta.audio_sample_rate == 44100
    assert meta.codec == "h264"


def test_video_without_audio_is_not_an_error(tmp_path: Path) -> None:
    meta = probe(make_video(tmp_path / "silent.mp4", audio=False))
    assert meta.has_audio is False and meta.frame_count == 50


def test_rotated_video_reports_displayed_size(tmp_path: Path) -> None:
    plain = make_video(tmp_path / "plain.mp4", size="320x240", audio=False)
    rotated = tmp_path / "rotated.mp4"
    ffmpeg("-display_rotation", "90", "-i", str(plain), "-c", "copy", str(rotated))
    meta = probe(rotated)
    assert meta.rotation in (90, 270)
    assert (meta.width, meta.height) == (240, 320)


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"", r"empty \(0 bytes\)"), (b"this is a text file, not a video\n" * 20, "not a readable media file")],
)
def test_unreadable_files_give_one_line(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "bad.mp4"
    path.write_bytes(content)
    with pytest.raises(VideoDecodeError, match=message) as error:
        probe(path)
    assert "\n" not in str(error.value) and str(path) in str(error.value)


def test_audio_only_file_has_no_video_stream(tmp_path: Path) -> None:
    path = tmp_path / "song.mp4"
    ffmpeg("-f", "lavfi", "-i", "sine=duration=1", "-c:a", "aac", str(path))
    with pytest.raises(VideoDecodeError, match="no video stream"):
        probe(path)


def test_truncated_mp4_is_reported(tmp_path: Path) -> None:
    whole = make_video(tmp_path / "whole.mp4", seconds=3)
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with pytest.raises(VideoDecodeError, match=r"cut\.mp4: not a readable media file \(moov atom not found"):
        probe(cut)


def test_network_playlists_are_not_followed(tmp_path: Path) -> None:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(0.2)
    port = server.getsockname()[1]
    playlist = tmp_path / "innocent.m3u8"
    playlist.write_text(
        f"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10,\nhttp://127.0.0.1:{port}/s.ts\n#EXT-X-ENDLIST\n"
    )
    with pytest.raises(VideoDecodeError):
        probe(playlist)
    with pytest.raises(TimeoutError):
        server.accept()
    server.close()


def test_inputs_are_opened_as_local_files_only() -> None:
    args = input_args("concat:a.mp4|b.mp4")
    assert args[:2] == ["-protocol_whitelist", "file"] and args[-2] == "-i"
    assert args[-1].startswith("file:/") and args[-1].endswith("concat:a.mp4|b.mp4")


def test_a_concat_script_named_mp4_does_not_pull_in_another_video(tmp_path: Path) -> None:
    other = make_video(tmp_path / "private.mp4", seconds=2)
    script = tmp_path / "innocent.mp4"
    script.write_text("ffconcat version 1.0\nfile private.mp4\n")
    with pytest.raises(VideoDecodeError, match=r"innocent\.mp4: not a readable media file") as error:
        probe(script)
    assert "\n" not in str(error.value)
    # The decoders refuse it too, even handed the metadata of a real video.
    meta = dataclasses.replace(probe(other), path=str(script))
    with pytest.raises(VideoDecodeError):
        next(iter(iter_frames(meta, FrameSampling(fps=1.0, short_side=64, crop=0))))
    with pytest.raises(VideoDecodeError):
        next(iter(iter_audio(meta, AudioSampling())))


@pytest.mark.parametrize("suffix", [".mp4", ".mkv", ".webm", ".avi", ".mov", ".mpg", ".ts", ".flv", ".wmv", ".ogv"])
def test_every_listed_container_is_still_read(tmp_path: Path, suffix: str) -> None:
    extra = {".webm": ("-c:v", "libvpx"), ".ogv": ("-c:v", "libtheora"), ".wmv": ("-c:v", "wmv2")}
    path = make_video(tmp_path / f"clip{suffix}", seconds=1, audio=False, extra=extra.get(suffix, ()))
    assert probe(path).frame_count > 0


def _half_downloaded(whole: Path) -> Path:
    """The first half of the file's bytes, as `head -c` leaves an interrupted download."""
    cut = whole.with_name(f"half-{whole.name}")
    with cut.open("wb") as out:
        subprocess.run(["head", "-c", str(whole.stat().st_size // 2), str(whole)], stdout=out, check=True)
    return cut


def test_half_downloaded_faststart_mp4_is_flagged_truncated(tmp_path: Path) -> None:
    whole = make_video(tmp_path / "whole.mp4", seconds=4, extra=("-movflags", "+faststart"))
    meta = probe(_half_downloaded(whole))
    assert meta.header_duration == pytest.approx(4.0, abs=0.05)  # the header is whole: it comes first
    assert meta.stream_end < 3.0 and meta.truncated
    attrs = meta.as_attrs()
    assert attrs["truncated"] is True and attrs["header_duration"] == meta.header_duration
    assert attrs["stream_end"] == meta.stream_end and "frame_starts" not in attrs
    complete = probe(whole)
    assert not complete.truncated and complete.stream_end == pytest.approx(4.0, abs=0.05)


def test_a_soundtrack_that_outlasts_the_picture_is_not_truncation(tmp_path: Path) -> None:
    meta = probe(make_video(tmp_path / "long audio.mp4", seconds=2, audio_seconds=5))
    assert meta.header_duration == pytest.approx(5.0, abs=0.05) and meta.stream_end == pytest.approx(2.0)
    assert meta.audio_end == pytest.approx(5.0, abs=0.05) and not meta.truncated


def test_old_stores_attribute_names_are_read_under_the_new_ones() -> None:
    old = {"duration": 14.05, "video_end": 14.0, "fps": 30.0}
    assert read_stream_attrs(old) == {"header_duration": 14.05, "stream_end": 14.0, "fps": 30.0}
    new = probe(REAL_VIDEO).as_attrs()
    assert read_stream_attrs(new) == new and new["truncated"] is False


def test_a_subtitle_file_named_like_a_video_is_refused_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "captions.mp4"
    path.write_text("1\n00:00:01,000 --> 00:00:02,000\nhello\n")
    with pytest.raises(VideoDecodeError) as error:
        probe(path)
    assert str(error.value) == f"{path}: not a readable media file ({NOT_A_CONTAINER})"


def test_unreadable_bytes_give_ffmpegs_reason_not_a_warning_on_the_way(tmp_path: Path) -> None:
    path = tmp_path / "noise.mp4"  # these bytes pass for an mp4 "with low score of 1, misdetection possible!"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    with pytest.raises(VideoDecodeError) as error:
        probe(path)
    message = str(error.value)
    assert message.startswith(f"{path}: not a readable media file (moov atom not found")
    assert "misdetection" not in message and "Error opening" not in message and "\n" not in message


def test_random_bytes_give_the_reason_inside_ffmpegs_wrapper(tmp_path: Path) -> None:
    path = tmp_path / "noise.bin"
    path.write_bytes(b"\x00\x17garbage" * 500)
    with pytest.raises(VideoDecodeError) as error:
        probe(path)
    assert str(error.value).startswith(f"{path}: not a readable media file (Invalid data found when processing input")


def test_durations_of_a_store_come_from_todays_and_older_names(tmp_path: Path) -> None:
    writer = StoreWriter(tmp_path / "feats.h5", {})
    track = Track(np.zeros((2, 4), np.float32), np.array([[0, 1], [1, 2]], np.float64))
    writer.add_video(VideoRecord("today", probe(REAL_VIDEO).as_attrs(), {"clip": track}))
    writer.add_video(VideoRecord("before", {"duration": 31.5, "video_end": 31.4}, {"clip": track}))
    writer.close()
    assert store_durations(tmp_path / "feats.h5") == {"today": pytest.approx(14.05, abs=0.01), "before": 31.5}


def test_an_audio_stream_without_packets_is_no_audio(tmp_path: Path) -> None:
    path = tmp_path / "empty audio.mkv"
    ffmpeg(
        "-f",
        "lavfi",
        "-i",
        "testsrc2=size=64x48:rate=25:duration=2",
        "-f",
        "lavfi",
        "-i",
        "anullsrc=sample_rate=16000,atrim=end_sample=0",
        "-map",
        "0:v",
        "-map",
        "1:a",
        "-c:v",
        "libx264",
        "-c:a",
        "pcm_s16le",
        str(path),
    )
    meta = probe(path)
    assert meta.audio_codec == "pcm_s16le"  # the stream is declared ...
    assert not meta.has_audio and meta.audio_end is None  # ... but holds nothing to decode


@pytest.mark.slow  # a 3-s probe at real time
def test_a_probe_that_keeps_listing_is_not_stopped_and_a_silent_one_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, real_time_ffmpeg: Callable[[], None]
) -> None:
    """The stream-copy pass of a long file can take minutes; its limit counts silence, not the whole pass."""
    from extract.media import ffmpeg as ffmpeg_binary
    from extract.media import probe as probe_module
    from extract.media.watchdog import progress_reports

    video = make_video(tmp_path / "v.mp4", seconds=3, size="64x48")
    monkeypatch.setattr(probe_module, "PROBE_STALL_S", 1.0)
    real_time_ffmpeg()  # the pass now takes 3 s, listing packets as it reads them
    lines: list[int] = []
    with progress_reports(lambda: lines.append(1)):
        meta = probe(video)
    assert meta.frame_count == 75 and meta.has_audio and len(lines) > 75
    silent = tmp_path / "silent-ffmpeg"
    silent.write_text("#!/bin/sh\nexec sleep 30\n")
    silent.chmod(0o755)
    monkeypatch.setenv("IMG_FFMPEG", str(silent))
    ffmpeg_binary.ffmpeg_path.cache_clear()
    with pytest.raises(VideoDecodeError, match=r"v\.mp4: probing listed nothing for 1 s and was stopped"):
        probe(video)
