"""One exception type per failure family; each message is one actionable line for the user."""

from collections.abc import Sequence

LISTED = 5  # items a one-line message names; the rest are counted


def listed(items: Sequence[str], limit: int = LISTED) -> str:
    """'a, b, c, d, e (+3 more)': the first `limit` items of a one-line message, and how many more there are."""
    shown = ", ".join(items[:limit])
    return shown + (f" (+{len(items) - limit} more)" if len(items) > limit else "")


class ImgVmrError(Exception):
    """Base class of every error img-extract turns into a one-line message."""


class UsageError(ImgVmrError):
    """The command line or its inputs are wrong before any video is touched (exit code 2)."""


class VideoDecodeError(ImgVmrError):
    """A video (or its audio) could not be probed or decoded; becomes a failure record for that video."""


class MissingWeightsError(ImgVmrError):
    """A model's weights are not where they should be."""


class StoreCorruptError(ImgVmrError):
    """A feature store file is unreadable or not an img-vmr store."""


class StoreReadError(ImgVmrError):
    """A store part exists but cannot be read now (too many open files, permissions, I/O): not damage."""


class StoreWriteError(ImgVmrError):
    """A part or the index could not be written (disk full, I/O error); what was pending stays pending."""


class StoreLockedError(ImgVmrError):
    """Another process is writing the same feature store; `holder` is the line it wrote ("pid N on HOST ...")."""

    def __init__(self, message: str, holder: str = "another process") -> None:
        super().__init__(message)
        self.holder = holder


class ProvenanceMismatchError(ImgVmrError):
    """Features with different provenance would be mixed under one name."""


class WorkerLostError(ImgVmrError):
    """A worker process (or every model actor) died: what it had committed stays, re-running resumes the rest."""
