"""Commands run against a full disk: a small tmpfs mounted in a private mount namespace (`unshare -rm`), filled
to the last byte, so that the kernel itself answers ENOSPC. Tests using it skip where unprivileged user
namespaces are not allowed."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

SIZE = "256k"


@dataclass(frozen=True)
class FullDiskRun:
    result: subprocess.CompletedProcess[str]
    left: list[str]  # the files on the disk after the command, the fillers excepted


def run_on_full_disk(disk: Path, command: Sequence[str | Path], timeout: float = 300) -> FullDiskRun:
    """Mount a small tmpfs at `disk` (created empty), fill it, run `command`, and list what it left there."""
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare(1) to mount a small tmpfs")
    disk.mkdir(parents=True, exist_ok=True)
    probe = subprocess.run(
        ["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o size={SIZE} tmpfs '{disk}'"], capture_output=True, text=True
    )
    if probe.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs in a user namespace here: {probe.stderr.strip()}")
    listing = disk.with_name(disk.name + ".left")
    fill = " ; ".join(f"dd if=/dev/zero of='{disk}/.filler{size}' bs={size} 2>/dev/null" for size in (4096, 1))
    script = (
        f"mount -t tmpfs -o size={SIZE} tmpfs '{disk}' && {{ {fill} ; true ; }} && {shlex.join(map(str, command))}; "
        f"status=$?; ls -A '{disk}' > '{listing}'; exit $status"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    result = subprocess.run(
        ["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, env=env, timeout=timeout
    )
    left = [name for name in listing.read_text().split() if not name.startswith(".filler")]
    return FullDiskRun(result, left)
