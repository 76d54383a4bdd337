"""Options several img-extract commands take, and the bounds of their numbers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from extract.core.options import PositiveNumber

# Frames per second sampled: one frame every 1000 s at least (below, a video gives no frame at all), at most 240
# (high-speed footage; --fps 1e6 would make ffmpeg repeat every frame a million times a second, for hours).
FPS = PositiveNumber(0.001, 240.0)
# PANNs windows: Cnn14 needs 9,920 samples at 32 kHz (0.31 s); it was trained on AudioSet's 10-s clips (a larger
# window only costs memory: --audio-window 1e9 asked for 116 TiB).
AUDIO_WINDOW = PositiveNumber(0.31, 10.0)
AUDIO_HOP = PositiveNumber(0.01, 10.0)  # and at most the window (checked with the preset's window)
# Seconds per row of imported features: a millisecond to an hour.
ROW_SECONDS = PositiveNumber(0.001, 3600.0)
# Seconds without progress before a decoder or a Ray run is given up: less than 30 s would take a Ray worker
# process still starting (importing torch on a busy node) for a stall; a day is far beyond any real stall.
STALL_SECONDS = PositiveNumber(30.0, 86400.0)

# compact and merge write new parts alike
PART_SIZE = click.option(
    "--part-size",
    "part_mib",
    default=512,
    show_default=True,
    type=click.IntRange(min=1),
    help="Largest new part in MiB (each is built in memory before it is written).",
)


def resume_option(what: str, redo: str) -> Callable[[Any], Any]:
    """--resume/--no-resume: skip `what` already in the output (the default), or `redo` everything."""
    return click.option(
        "--resume/--no-resume",
        default=True,
        show_default=True,
        help=f"Skip {what} already in the output (--no-resume {redo}).",
    )
