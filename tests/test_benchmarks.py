"""The benchmark scripts' own code paths run (their timings are never asserted: the scripts print ratios)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.fixture
def bench_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # the scripts import their neighbours by name, as when run


@pytest.mark.usefixtures("bench_path")
def test_the_training_step_benchmark_runs_our_step_as_the_trainer_does() -> None:
    """bench_train_step.py times our step against the authors' (their code is not here): ours must still run with
    the trainer's current loss API, and move the weights."""
    import bench_train_step
    from bench_img import make_batch

    from img_model.network.config import IMGConfig
    from img_model.network.model import IMG

    torch.manual_seed(0)
    config = IMGConfig()
    model = IMG(config)
    inputs, labels = make_batch(config, 2, 16, 5, torch.device("cpu"))
    before = [p.detach().clone() for p in model.parameters()]
    bench_train_step.our_step(model, inputs, labels)()
    moved = [not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True)]
    assert any(moved) and all(math.isfinite(float(p.detach().sum())) for p in model.parameters())


def test_the_process_tree_peak_counts_the_children_too() -> None:
    """benchmarks/process_tree.py sums the RSS of a command and its children at one moment: a parent holding
    ~150 MB while its child holds ~150 MB peaks near 300 MB, which neither process's ru_maxrss shows."""
    import sys

    from benchmarks.process_tree import run_measured

    hold = "import time; b = bytearray(150 * 2**20); b[::4096] = b'x' * len(b[::4096]); time.sleep({})"
    child = f"import subprocess, sys; subprocess.run([sys.executable, '-c', {hold.format(1.5)!r}]); {hold.format(0)}"
    parent = f"import subprocess, sys; {hold.format(0)}; subprocess.run([sys.executable, '-c', {child!r}])"
    run = run_measured([sys.executable, "-c", parent])
    assert run.returncode == 0, run.stderr
    assert 280 < run.peak_rss_mb < 600
    assert 280 < run.peak_anonymous_mb <= run.peak_rss_mb  # the bytearrays are anonymous memory
