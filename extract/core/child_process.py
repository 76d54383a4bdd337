"""Child processes that end with their parent: the decode and model workers of img-extract --devices and the
DataLoader workers of img-train / img-eval. Without it a parent killed with SIGKILL (the OOM killer, a
scheduler) leaves its children running, holding its files and memory."""

from __future__ import annotations

import contextlib
import os
import sys

PR_SET_PDEATHSIG = 1  # linux/prctl.h


def end_with_parent(parent_pid: int, signum: int) -> bool:
    """Ask the kernel to send this process `signum` when its parent dies (Linux; nothing elsewhere). False when the
    parent is gone already, so that nobody would send it. The kernel watches the parent's *thread* that started
    this process: start children from a thread that lives as long as the parent (its main thread)."""
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signum, 0, 0, 0)
    return os.getppid() == parent_pid
