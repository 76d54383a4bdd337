"""Peak memory of a whole process tree: a command and every process it starts (ffmpeg decoders, workers).

`ru_maxrss` gives the peak of one process, and RUSAGE_CHILDREN only the largest child, never their sum at one
moment; the benchmarks want the sum (what the machine must hold), so it is sampled from /proc every few ms.

A child between vfork() and exec() (how Python's subprocess starts ffmpeg) shares its parent's memory, and /proc
shows the parent's whole RSS for it: summed naively, every ffmpeg start looks like the parent's memory twice for
a few ms (peaks of 2.3 GB against 1.4 GB between identical VGGish runs). Such a child (kcmp(KCMP_VM) says it
shares the parent's address space) is not counted.

Beside the total, the anonymous part (resident minus file-backed and shared pages, /proc/PID/statm) is sampled:
the file-backed part (mapped libraries, memory-mapped checkpoints) moves between identical runs with the page
cache (a fault on a mapped file also maps the neighbouring pages that happen to be cached), so a swing of the
total that the anonymous part does not show is the page cache, not the run's own memory.

    python benchmarks/process_tree.py -- img-extract videos/ --out x.h5    # prints wall time and peak RSS
"""

from __future__ import annotations

import ctypes
import os
import platform
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
SAMPLE_S = 0.01
_KCMP_VM = 1
_SYS_KCMP = {"x86_64": 312, "aarch64": 272}.get(platform.machine())
_LIBC = ctypes.CDLL(None, use_errno=True)


def _shares_memory(parent: int, child: int) -> bool:
    """Whether `child` runs in `parent`'s address space (a vfork()ed child that has not exec()ed yet)."""
    if _SYS_KCMP is None:
        return False
    return _LIBC.syscall(_SYS_KCMP, parent, child, _KCMP_VM, 0, 0) == 0


def _children(pid: int) -> list[int]:
    found = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                found += [int(child) for child in f.read().split()]
    except OSError:
        pass  # the process ended while it was read
    return found


def _rss_bytes(pid: int) -> tuple[int, int]:
    """(resident, anonymous resident) bytes of one process."""
    try:
        with open(f"/proc/{pid}/statm") as f:
            fields = f.read().split()
        resident, shared = int(fields[1]), int(fields[2])
        return resident * PAGE_SIZE, (resident - shared) * PAGE_SIZE
    except (OSError, IndexError, ValueError):
        return 0, 0


def tree_rss_parts(root: int) -> tuple[int, int]:
    """(resident, anonymous resident) bytes of `root` and all its descendants now."""
    total, anonymous = _rss_bytes(root)
    stack = [root]
    while stack:
        parent = stack.pop()
        for child in _children(parent):
            if not _shares_memory(parent, child):
                resident, private = _rss_bytes(child)
                total, anonymous = total + resident, anonymous + private
            stack.append(child)
    return total, anonymous


def tree_rss(root: int) -> int:
    """Resident bytes of `root` and all its descendants now."""
    return tree_rss_parts(root)[0]


class PeakSampler:
    """Samples the tree's resident bytes on a thread until stopped; `peak` is the largest sum seen, `peak_anonymous`
    the largest anonymous part (each at its own moment)."""

    def __init__(self, pid: int, interval: float = SAMPLE_S) -> None:
        self.pid, self.interval, self.peak, self.peak_anonymous = pid, interval, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="rss-sampler", daemon=True)

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        while not self._stop.is_set():
            total, anonymous = tree_rss_parts(self.pid)
            self.peak, self.peak_anonymous = max(self.peak, total), max(self.peak_anonymous, anonymous)
            self._stop.wait(self.interval)


@dataclass(frozen=True)
class TreeRun:
    wall_s: float
    peak_rss_mb: float
    returncode: int
    stderr: str
    peak_anonymous_mb: float = 0.0


def run_measured(
    command: Sequence[str], env: dict[str, str] | None = None, cwd: Path | None = None, timeout: float = 3600
) -> TreeRun:
    """Run `command` to its end; its wall time and the peak RSS of its process tree (MiB)."""
    start = time.perf_counter()
    process = subprocess.Popen(
        list(command), env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    with PeakSampler(process.pid) as sampler:
        try:
            _, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            _, stderr = process.communicate()
    wall = time.perf_counter() - start
    stderr_text = stderr.decode(errors="replace")
    return TreeRun(wall, sampler.peak / 2**20, process.returncode, stderr_text, sampler.peak_anonymous / 2**20)


def main() -> None:
    args = sys.argv[1:]
    if args[:1] == ["--"]:
        args = args[1:]
    if not args:
        sys.exit("usage: process_tree.py -- COMMAND [ARGS...]")
    run = run_measured(args)
    if run.returncode:
        sys.stderr.write(run.stderr)
    print(f"wall {run.wall_s:.2f} s, peak RSS of the process tree {run.peak_rss_mb:.0f} MiB, exit {run.returncode}")


if __name__ == "__main__":
    main()
