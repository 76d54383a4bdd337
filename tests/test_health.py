"""Numbers as they are: how probabilities print, and the warnings about a run whose audio importance collapsed,
whose selection metric never moved from 0, or whose loss spiked."""

from __future__ import annotations

import math

import pytest

from extract.core.console import format_probability


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (None, "n/a"),
        (math.nan, "n/a"),
        (0.0, "0"),
        (1e-17, "< 0.001"),  # the collapsed head of issue 18, which "0.000" hid
        (0.000999, "< 0.001"),
        (0.001, "0.001"),
        (0.41, "0.410"),
        (1.0, "1.000"),
    ],
)
def test_a_probability_below_a_thousandth_prints_as_below_and_never_as_zero(value: float | None, shown: str) -> None:
    assert format_probability(value) == shown


def test_the_threshold_follows_the_digits() -> None:
    assert format_probability(0.00005, digits=4) == "< 0.0001"
    assert format_probability(0.0005, digits=4) == "0.0005"
