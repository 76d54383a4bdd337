"""One exception type per failure family; each message is one actionable line for the user."""

import contextlib
import errno
import os
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TypeVar

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


class ModelUnavailableError(MissingWeightsError):
    """A model that is neither on disk nor downloadable now (the machine is offline, the hub cannot be reached, a
    transfer failed). The message, which says where to put the files, ends by naming what runs without any model."""

    def __init__(self, message: str) -> None:
        super().__init__(f"{message}; to see img-vmr work without downloads: img-pipeline tour --out tour/")


class StoreCorruptError(ImgVmrError):
    """A feature store file is unreadable or not an img-vmr store."""


class StoreReadError(ImgVmrError):
    """A store part exists but cannot be read now (too many open files, permissions, I/O): not damage."""


class OutputWriteError(ImgVmrError):
    """An output could not be written (disk full, I/O error): what was written before it is intact (every command
    writes under a temporary name and renames). `make_room` says what to free when the disk is full, else ""."""

    def __init__(self, message: str, make_room: str = "") -> None:
        super().__init__(message)
        self.make_room = make_room


class StoreWriteError(OutputWriteError):
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


FULL_DISK = (errno.ENOSPC, errno.EDQUOT)
WriteError = TypeVar("WriteError", bound=OutputWriteError)


def cannot_write(what: str, where: Path, error: OSError, kind: type[WriteError] = OutputWriteError) -> WriteError:
    """The one-line error for an OSError met while writing `what` (e.g. "the feature store X") in the folder
    `where`: "cannot write WHAT: no space left on device"; on a full disk `make_room` says how much is free there."""
    reason = os.strerror(error.errno) if error.errno else str(error).splitlines()[0]
    make_room = ""
    if error.errno in FULL_DISK:
        folder = next((p for p in (where, *where.parents) if p.is_dir()), Path("."))
        with contextlib.suppress(OSError):
            free = shutil.disk_usage(folder).free
            make_room = f"{free / 2**20:,.1f} MiB free in {folder}"
    return kind(f"cannot write {what}: {reason[:1].lower()}{reason[1:]}", make_room)


@contextlib.contextmanager
def writing(what: str, where: Path) -> Iterator[None]:
    """An OSError within the block is `cannot_write(what, where, error)`."""
    try:
        yield
    except OSError as error:
        raise cannot_write(what, where, error) from None
