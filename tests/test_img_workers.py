"""img-train's DataLoader workers: as many as can help (at most the CPUs and the batches, one line says so), and
none left behind when img-train is killed with SIGKILL. `workers = 100000` used to fork until the OOM killer ended
img-train (and other users' jobs), and its orphaned workers stayed asleep for over 10 minutes."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from img_model.data.synthetic import SyntheticDataset
from tests.img_cli import run_img_train, start_img_train, tiny_dataset, train_args

WORKERS_GONE_S = 1.0  # the kernel signals them as their parent dies; torch's own watchdog looks every 5 s


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> SyntheticDataset:
    return tiny_dataset(tmp_path_factory.mktemp("tiny"))


def _stat(pid: int) -> list[str] | None:
    """/proc/PID/stat's fields after the command name (state, ppid, ..., starttime), None when there is none."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()


def _children(parent: int) -> dict[int, str]:
    """The processes whose parent is `parent`, with their start times (to tell them from a later reuse of the pid)."""
    children = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _stat(int(entry.name))) is not None and int(fields[1]) == parent:
            children[int(entry.name)] = fields[19]
    return children


def _running(pid: int, started: str) -> bool:
    fields = _stat(pid)
    return fields is not None and fields[19] == started and fields[0] not in ("Z", "X")  # a zombie has ended


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the process table in /proc (Linux)")
def test_dataloader_workers_end_within_a_second_of_img_train_killed_with_sigkill(
    tiny: SyntheticDataset, tmp_path: Path
) -> None:
    process = start_img_train(*train_args(tiny, tmp_path / "run", "--workers", "2", "--epochs", "500"))
    try:
        workers: dict[int, str] = {}
        deadline = time.monotonic() + 300
        while len(workers) < 2 and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
            workers = _children(process.pid)
        assert len(workers) >= 2, f"no DataLoader workers appeared: {process.poll()}"
        process.send_signal(signal.SIGKILL)  # the OOM killer or a scheduler: no handler runs
        process.wait(timeout=60)
        gone_by = time.monotonic() + WORKERS_GONE_S
        while any(_running(pid, started) for pid, started in workers.items()) and time.monotonic() < gone_by:
            time.sleep(0.01)
        left = [pid for pid, started in workers.items() if _running(pid, started)]
        assert not left, f"workers {left} outlived img-train by {WORKERS_GONE_S} s"
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=60)
        for pid, started in workers.items():  # never leave a process behind, even when the test fails
            if _running(pid, started):
                os.kill(pid, signal.SIGKILL)


def test_more_workers_than_batches_or_cpus_run_as_many_as_can_help_and_say_so(
    tiny: SyntheticDataset, tmp_path: Path
) -> None:
    result = run_img_train(*train_args(tiny, tmp_path / "run", "--workers", "8", "--epochs", "1"))
    assert result.returncode == 0, result.stderr
    # 15 training queries in batches of 8: 2 batches; the selection and test splits are 1 batch each
    cpus = len(os.sched_getaffinity(0))
    reason = f"the CPUs this process may use: {cpus}" if cpus <= 2 else "its batches: 2"
    assert f"8 DataLoader workers asked for; {min(cpus, 2)} run for training ({reason})" in result.stderr
    for split in ("train-val", "test"):
        assert f"8 DataLoader workers asked for; 1 run for evaluating {split} (its batches: 1)" in result.stderr
