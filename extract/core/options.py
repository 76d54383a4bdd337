"""Command-line options that several img-vmr commands take, and the bounded number type, so that each says the
same thing in every --help and refuses the same values at parse time."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from extract.core.precision import NAMES, RULE

WEIGHTS_DIR_HELP = (
    "Folder with model weights for offline use: published files by name, saved Hugging Face models as "
    "DIR/<name> (default $IMG_WEIGHTS_DIR or ~/.cache/img-vmr)."
)
DEVICE_HELP = "auto, cpu, cuda or cuda:N."


class PositiveNumber(click.ParamType):
    """A finite number above zero, within [least, most] when given: nan, inf, 0, negative values and numbers outside
    the range are refused at parse time (a number that cannot work would fail every video, or never finish)."""

    name = "number"

    def __init__(self, least: float = 0.0, most: float = math.inf) -> None:
        self.least, self.most = least, most

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        try:
            number = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number", param, ctx)
        if not math.isfinite(number) or number <= 0:
            self.fail(f"{value!r} is not a finite positive number", param, ctx)
        if not self.least <= number <= self.most:
            self.fail(f"{value!r} is not between {self.least:g} and {self.most:g}", param, ctx)
        return number


class BoundedNumber(click.ParamType):
    """A finite number within [least, most] (nan and inf refused at parse time, which click.FloatRange lets through
    for nan)."""

    name = "number"

    def __init__(self, least: float, most: float) -> None:
        self.least, self.most = least, most

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        try:
            number = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number", param, ctx)
        if not math.isfinite(number) or not self.least <= number <= self.most:
            self.fail(f"{value!r} is not a finite number from {self.least:g} to {self.most:g}", param, ctx)
        return number


def weights_dir_option(help_text: str = WEIGHTS_DIR_HELP) -> Callable[[Any], Any]:
    return click.option("--weights-dir", type=click.Path(path_type=Path, file_okay=False), default=None, help=help_text)


def precision_option(default: str) -> Callable[[Any], Any]:
    """--precision fp32|bf16|fp16 with the one rule (extract/core/precision.py) in its help; `default` says what
    the command does without it."""
    return click.option(
        "--precision",
        type=click.Choice(NAMES),
        default=None,
        help=f"Autocast precision: fp32, bf16 or fp16 (default: {default}). {RULE}",
    )
