"""Video ids as HDF5 names: any string round-trips exactly through escape_id / unescape_id."""

from __future__ import annotations

from urllib.parse import quote, unquote_to_bytes

_SAFE = "-_."


def escape_id(video_id: str) -> str:
    """Percent-encode everything but ASCII letters, digits and `-_.` (UTF-8 bytes for non-ASCII).

    '/' would create HDF5 sub-groups and a leading '.' could spell '.' or '..', so both are escaped.
    """
    if not video_id:
        raise ValueError("a video id cannot be empty")
    # surrogateescape: a file name that is not valid UTF-8 (Python holds its bytes as surrogates) keeps them.
    name = quote(video_id.encode("utf-8", "surrogateescape"), safe=_SAFE)
    return "%2E" + name[1:] if name.startswith(".") else name


def unescape_id(name: str) -> str:
    return unquote_to_bytes(name).decode("utf-8", "surrogateescape")


def storable_text(text: str) -> str:
    """text as an HDF5 string attribute can hold it: undecodable bytes of file names become U+FFFD."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
