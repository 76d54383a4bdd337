import dataclasses
import socket
from pathlib import Path

import pytest

from extract.decode import AudioSampling, FrameSampling, iter_audio, iter_frames
from extract.errors import VideoDecodeError
from extract.ffmpeg_binary import input_args
from extract.probe import probe
from tests.videos import REAL_VIDEO, ffmpeg, make_video


def test_real_activitynet_video_metadata() -> None:
    meta = probe(REAL_VIDEO)
    assert (meta.width, meta.height, meta.fps, meta.frame_count) == (480, 360, 30.0, 420)
    assert meta.duration == pytest.approx(14.05, abs=0.01)
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
