"""Failure families of training and evaluation; each message is one actionable line (see extract/core/errors.py)."""

from extract.core.errors import LISTED as LISTED  # one listing rule for every one-line message (re-exported)
from extract.core.errors import ImgVmrError
from extract.core.errors import listed as listed


class DataError(ImgVmrError):
    """The queries, features and text cannot be put together into a dataset (missing, stale or mismatched)."""


class CheckpointMismatchError(ImgVmrError):
    """A checkpoint does not fit the features, text or run it is used with."""


class TrainingDivergedError(ImgVmrError):
    """The loss became NaN or infinite; training stopped and kept the last good checkpoint."""


class QueryError(ImgVmrError):
    """A query that cannot be answered: empty, or with no word the checkpoint's vocabulary knows."""
