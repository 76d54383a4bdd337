"""Videos whose audio or length is damaged the way real downloads are, made with the project's ffmpeg."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tests.videos import ffmpeg, make_video

VIDEO = ("-f", "lavfi", "-i", "testsrc2=size=160x120:rate=25:duration={seconds}")
ENCODE = ("-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-c:a", "aac")


def _video_input(seconds: float) -> list[str]:
    return [arg.format(seconds=seconds) for arg in VIDEO]


def make_empty_audio_video(path: Path, seconds: float = 2.0) -> Path:
    """An mkv whose audio stream exists but holds zero packets (what some recorders and cutters leave)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    silence = ["-f", "lavfi", "-i", "anullsrc=r=44100:cl=mono,atrim=end_sample=0"]
    ffmpeg(*_video_input(seconds), *silence, "-map", "0", "-map", "1", *ENCODE, str(path))
    return path


def make_broken_audio_video(path: Path, seconds: float = 2.0) -> Path:
    """An mkv with a good video stream and an AAC stream whose every packet is corrupted (undecodable)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tone = ["-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=44100:duration={seconds}"]
    ffmpeg(*_video_input(seconds), *tone, "-map", "0", "-map", "1", *ENCODE, "-bsf:a", "noise=amount=1", str(path))
    return path


def make_truncated_video(path: Path, whole: Path, seconds: float = 6.0) -> Path:
    """A faststart mp4 (index first) cut to half its bytes: the header still says the full duration."""
    make_video(whole, seconds=seconds, size="160x120", extra=("-movflags", "+faststart"))
    path.parent.mkdir(parents=True, exist_ok=True)
    data = whole.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def make_corrupted_video(path: Path, whole: Path, seconds: float = 4.0) -> Path:
    """A faststart mp4 whose media data is noise after its first 16 kB: the index is whole (it probes), the first
    keyframe decodes, nearly every later packet does not (ffmpeg gives up: "Decode error rate ... exceeds")."""
    make_video(whole, seconds=seconds, size="160x120", extra=("-movflags", "+faststart"))
    data = bytearray(whole.read_bytes())
    start = data.index(b"mdat") + 4 + 16000
    data[start:] = np.random.default_rng(1).integers(0, 256, len(data) - start, dtype=np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes(data))
    return path


def make_renamed_playlist(path: Path) -> Path:
    """An HLS playlist named like an mp4 (what a downloader may leave); the input format whitelist refuses HLS."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXTINF:1,\nsegment.ts\n#EXT-X-ENDLIST\n")
    return path
