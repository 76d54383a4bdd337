"""Files written whole or not at all, and the lock held by the one writer of a folder.

`write_atomically` is the only way img-vmr replaces a file a reader may open (store parts and indexes, text
stores, checkpoints, shard records, manifests, reports, predictions, GloVe indexes, pipeline records): the
content goes to a temporary name beside the target, is fsync'd, renamed over the target, and the folder is
fsync'd, so a kill or a power cut leaves the old file or the new one, never half of one. When anything fails
(a full disk, an interrupt) the temporary file is removed and the error goes on to the caller.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any, BinaryIO

from extract.core.errors import StoreLockedError, UsageError

Content = bytes | bytearray | memoryview | str | Callable[[BinaryIO], None]


def fsync_path(path: Path) -> None:
    """fsync a file or a folder by its path (a folder: so that a rename in it survives a power cut)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temporary_name(path: Path) -> Path:
    """The temporary name write_atomically uses beside `path` by default: hidden, and unique per process."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def write_atomically(path: Path, content: Content, tmp: Path | None = None) -> None:
    """Replace `path` by `content` (bytes, or text written as UTF-8, or a function that writes into the open
    binary file) all at once: temporary name, fsync, rename, fsync of the folder. `tmp`: another temporary name
    (in the same folder), for files whose leftovers a writer recognises by name. OSError (or whatever `content`
    raised) with no temporary file left behind."""
    tmp = tmp or temporary_name(path)
    try:
        with open(tmp, "wb") as handle:
            if callable(content):
                content(handle)
            else:
                handle.write(content.encode("utf-8") if isinstance(content, str) else content)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise
    fsync_path(path.parent)


def check_writable(folder: Path) -> None:
    """OSError unless a file can be created in `folder` (a probe file, removed at once)."""
    probe = folder / f".write-test-{os.getpid()}"
    os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
    probe.unlink()


def install_file(written: Path, path: Path) -> None:
    """Rename a file that was written whole and fsync'd beside `path` (a verified download) over `path`, and fsync
    the folder: write_atomically's last step, for a file whose bytes arrived some other way."""
    os.replace(written, path)
    fsync_path(path.parent)


def install_folder(tmp: Path, folder: Path) -> bool:
    """Rename a folder whose files were written (and fsync'd) under the temporary name `tmp` into place, and fsync
    the parent; False (and `tmp` left to the caller) when `folder` exists already (another process was first)."""
    try:
        os.rename(tmp, folder)
    except OSError:
        if not folder.is_dir():
            raise
        return False
    fsync_path(folder.parent)
    return True


# --- the one writer of a folder --------------------------------------------------------------------------------

LOCK_NAME = "writer.lock"


def acquire_writer_lock(
    folder: Path,
    target: Path,
    name: str = LOCK_NAME,
    wait_s: float = 0.0,
    on_wait: Callable[[str], None] | None = None,
) -> IO[str]:
    """flock folder/`name` for the one writer of `target` (a store, a cache), waiting up to `wait_s` for its holder
    (`on_wait(holder)` is called once when it has to wait); StoreLockedError naming the holder if it is still taken.
    The lock file says who holds it ("pid N on HOST since ..."); the lock goes with the process that holds it."""
    handle = open(folder / name, "a+")  # noqa: SIM115 - held open for the writer's lifetime
    deadline = time.monotonic() + wait_s
    waiting = False
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            if time.monotonic() >= deadline:
                handle.close()
                message = f"{target} is being written by {holder}; wait for it to finish or use another --out"
                raise StoreLockedError(message, holder) from None
            if on_wait is not None and not waiting:
                on_wait(holder)
            waiting = True
            time.sleep(0.2)
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%dT%H:%M:%S')}\n")
    handle.flush()
    return handle


def release_writer_lock(handle: IO[str] | None) -> None:
    if handle is not None:
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


def load_toml_file(path: Path, named: str, kind: str, missing_hint: str = "") -> dict[str, Any]:
    """The TOML file at `path`, or a one-line UsageError: `named` is how the messages name it (e.g. "--config
    FILE"), `kind` what the file should be ("an experiment"), `missing_hint` what follows "does not exist"."""
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise UsageError(f"{named} does not exist{missing_hint}") from None
    except (OSError, UnicodeDecodeError) as error:
        raise UsageError(f"{named} cannot be read ({getattr(error, 'strerror', None) or error})") from None
    except tomllib.TOMLDecodeError as error:
        raise UsageError(f"{named} is not valid TOML ({error})") from None
    except RecursionError:  # the standard library's parser recurses once per level of nesting
        raise UsageError(f"{named} nests arrays or tables hundreds of levels deep: not {kind}") from None


def jsonl_objects(text: str, where: str, expected: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) of each non-blank line of a JSONL text, or a one-line UsageError: `where` names the file
    as the messages do ("manifest videos.jsonl"), `expected` what a line holds ('an object with "query"')."""
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as error:
            raise UsageError(f"{where} line {number}: not JSON ({error.msg})") from None
        except RecursionError:  # the parser recurses once per level of nesting
            raise UsageError(f"{where} line {number}: nested hundreds of levels deep; expected {expected}") from None
        if not isinstance(item, dict):
            raise UsageError(f"{where} line {number}: expected {expected}")
        yield number, item
