"""Video ids as HDF5 names: any string round-trips exactly through escape_id / unescape_id."""

from __future__ import annotations

from urllib.parse import quote, unquote

_SAFE = "-_."


def escape_id(video_id: str) -> str:
    """Percent-encode everything but ASCII letters, digits and `-_.` (UTF-8 bytes for non-ASCII).

    '/' would create HDF5 sub-groups and a leading '.' could spell '.' or '..', so both are escaped.
    """
    if not video_id:
        raise ValueError("a video id cannot be empty")
    name = quote(video_id, safe=_SAFE, encoding="utf-8", errors="strict")
    return "%2E" + name[1:] if name.startswith(".") else name


def unescape_id(name: str) -> str:
    return unquote(name, encoding="utf-8", errors="strict")
