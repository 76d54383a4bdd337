"""Failure families of training and evaluation; each message is one actionable line (see extract/errors.py)."""

from collections.abc import Sequence

from extract.errors import ImgVmrError

LISTED = 5  # items a one-line message names; the rest are counted


def listed(items: Sequence[str], limit: int = LISTED) -> str:
    """'a, b, c, d, e (+3 more)': the first `limit` items of a one-line message, and how many more there are."""
    shown = ", ".join(items[:limit])
    return shown + (f" (+{len(items) - limit} more)" if len(items) > limit else "")


class DataError(ImgVmrError):
    """The queries, features and text cannot be put together into a dataset (missing, stale or mismatched)."""


class CheckpointMismatchError(ImgVmrError):
    """A checkpoint does not fit the features, text or run it is used with."""


class TrainingDivergedError(ImgVmrError):
    """The loss became NaN or infinite; training stopped and kept the last good checkpoint."""


class QueryError(ImgVmrError):
    """A query that cannot be answered: empty, or with no word the checkpoint's vocabulary knows."""
