"""Which ffmpeg binary we run, its version, and the input options every invocation shares."""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
from pathlib import Path

from extract.errors import UsageError

FFMPEG_ENV = "IMG_FFMPEG"

# Only local files may be opened: no http, no concat, no subfile, no data: URIs (design.md, issue 2).
INPUT_PROTOCOL_WHITELIST = "file"


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
    """The `-i` part of a command, with input protocols restricted to local files."""
    return ["-protocol_whitelist", INPUT_PROTOCOL_WHITELIST, "-i", local_input_url(path)]
