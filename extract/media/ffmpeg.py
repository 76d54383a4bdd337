"""Which ffmpeg binary we run, its version, and the input options every invocation shares."""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
from pathlib import Path

from extract.core.errors import UsageError

FFMPEG_ENV = "IMG_FFMPEG"

# Only local files may be opened: no http, no concat: or subfile: URLs, no data: URIs (design.md).
INPUT_PROTOCOL_WHITELIST = "file"

# Only container formats that hold their media in the file itself. ffmpeg picks a demuxer by the file's content,
# not its name, and some open other files through the allowed file protocol: a 65-byte text file named x.mp4
# that starts "ffconcat version 1.0" makes the concat demuxer read another video of the folder (so would hls,
# dash, image2 patterns). A name here matches ffmpeg's demuxer name lists, e.g. "mov" in "mov,mp4,m4a,3gp,...".
INPUT_FORMAT_WHITELIST = ",".join(
    (
        "mov",  # .mp4 .m4v .mov .3gp
        "matroska",  # .mkv .webm
        "avi",
        "mpeg",  # .mpg .mpeg program streams
        "mpegts",  # .ts
        "flv",
        "asf",  # .wmv
        "ogg",  # .ogv
        "mpegvideo",  # raw MPEG-1/2 video in .mpg files
        "m4v",  # raw MPEG-4 part 2 video in .m4v files
        "h264",
        "hevc",
    )
)


@functools.cache
def ffmpeg_path() -> str:
    """The ffmpeg to run: $IMG_FFMPEG if set, else the binary shipped by imageio-ffmpeg, else the system's."""
    configured = os.environ.get(FFMPEG_ENV)
    if configured:
        resolved = shutil.which(configured) or configured
        if not Path(resolved).is_file():
            raise UsageError(f"{FFMPEG_ENV}={configured} is not an executable file; unset it or point it at ffmpeg")
        return resolved
    try:
        import imageio_ffmpeg

        return imageio_ffmpeg.get_ffmpeg_exe()
    except (ImportError, RuntimeError):
        system = shutil.which("ffmpeg")
        if system is None:
            raise UsageError(
                "no ffmpeg found: pip install imageio-ffmpeg, install the system ffmpeg, or set IMG_FFMPEG"
            ) from None
        return system


@functools.cache
def ffmpeg_version() -> str:
    """The first line of `ffmpeg -version`, reduced to the version token (recorded in provenance)."""
    out = subprocess.run([ffmpeg_path(), "-version"], capture_output=True, text=True, check=False).stdout
    match = re.match(r"ffmpeg version (\S+)", out)
    return match.group(1) if match else "unknown"


def local_input_url(path: str | os.PathLike[str]) -> str:
    """An ffmpeg input URL that can only mean this local file, whatever characters its name holds."""
    return "file:" + str(Path(path).resolve())


def input_args(path: str | os.PathLike[str]) -> list[str]:
    """The `-i` part of a command (probing and decoding): local files only, in self-contained container formats."""
    return [
        "-protocol_whitelist",
        INPUT_PROTOCOL_WHITELIST,
        "-format_whitelist",
        INPUT_FORMAT_WHITELIST,
        "-i",
        local_input_url(path),
    ]
