"""Where two provenance records (recipes of features, of texts, of models) differ, named in one line: the text
every "made differently" error of extraction, merging, training and evaluation shows."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from extract.core.errors import listed

LISTED_DIFFERENCES = 3


def differences(expected: Mapping[str, Any], actual: Mapping[str, Any], limit: int = LISTED_DIFFERENCES) -> str:
    """'key: expected -> actual, ...' for the first `limit` keys that differ (sorted), '' when none do."""
    changed = sorted(key for key in set(expected) | set(actual) if expected.get(key) != actual.get(key))
    return listed([f"{key}: {expected.get(key)!r} -> {actual.get(key)!r}" for key in changed], limit)
