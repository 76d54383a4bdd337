"""Comparing provenance records (recipes of features and text) and naming where two differ, in one line."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from img_model.errors import LISTED, listed


def differences(expected: Mapping[str, Any], actual: Mapping[str, Any], limit: int = LISTED) -> str:
    """'key: expected -> actual, ...' for the first `limit` keys that differ (sorted), '' when none do."""
    changed = sorted(key for key in set(expected) | set(actual) if expected.get(key) != actual.get(key))
    return listed([f"{key}: {expected.get(key)!r} -> {actual.get(key)!r}" for key in changed], limit)
