"""Test inputs that several test files read and none changes (the tiny CLIP, the goldens' weights, the real run),
made once per pytest run and shared by its xdist workers: each worker's session fixture asks `made_once`, the
first to ask makes the input while holding a lock, the others wait for it and read what it made.

The folder is under the run's temporary folder (the one above the workers' own), so a run never reads what an
earlier run made. A make that failed leaves no mark of completion: the next worker to ask makes it again."""

from __future__ import annotations

import fcntl
import os
import pickle
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest

Made = TypeVar("Made")


def run_folder(factory: pytest.TempPathFactory) -> Path:
    """The temporary folder of this whole pytest run: under xdist the folder that holds every worker's own."""
    basetemp = factory.getbasetemp()
    return basetemp.parent if os.environ.get("PYTEST_XDIST_WORKER") else basetemp


def made_once(factory: pytest.TempPathFactory, name: str, make: Callable[[Path], Made]) -> Made:
    """What make(folder) returned, made into run_folder/name by the first worker that asks (a picklable value:
    paths, a dataclass of paths). The value is written last, under a temporary name then renamed: a worker that
    finds it finds the folder complete."""
    root = run_folder(factory)
    folder, value_file = root / name, root / f"{name}.made"
    with open(root / f"{name}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also when the worker dies
        if value_file.exists():
            return pickle.loads(value_file.read_bytes())
        shutil.rmtree(folder, ignore_errors=True)  # what a failed make left
        folder.mkdir()
        value = make(folder)
        partial = value_file.with_suffix(f".{os.getpid()}.tmp")
        partial.write_bytes(pickle.dumps(value))
        os.replace(partial, value_file)
        return value
