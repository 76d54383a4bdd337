"""A `--devices cpu,cpu` run with stand-in models (tests.standin_models.SlowOnce) in a process of its own, for
tests that signal or kill it: `python -m tests.devices_driver VIDEOS OUT MARKERS SECONDS`.

It prints `workers <pid> <pid>` once the workers are ready, `committed <videos>` when the run ends, and exits
143 when stopped by SIGTERM (130 by SIGINT), 3 when a worker was lost, 0 when the run finished.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import torch

from extract.core.console import is_sigterm, sigterm_raises
from extract.core.errors import WorkerLostError
from extract.media.sources import scan_folder
from extract.models.base import ExtractorOptions
from extract.models.presets import get_preset
from extract.run import ExtractionRun, RunConfig, RunStopped
from tests.standin_models import SlowOnce


def main(videos: Path, out: Path, markers: Path, seconds: float) -> int:
    console = logging.StreamHandler()  # what the parent and the workers log goes to stderr
    console.setLevel(logging.INFO)
    logging.getLogger("img_vmr").addHandler(console)
    preset = get_preset("clip").with_options(weights="mean-colour")
    config = RunConfig(progress=False, batch_size=1, commit_every=1, devices=("cpu", "cpu"))
    build = SlowOnce(markers, seconds)
    run = ExtractionRun(scan_folder(videos), out, [preset], ExtractorOptions(torch.device("cpu")), config, build)
    with sigterm_raises():
        try:
            run.engine().prepare()
            print("workers", *(process.pid for process in run.engine().processes), flush=True)
            try:
                summary = run.run()
            except RunStopped as stopped:
                print("committed", stopped.summary.committed_videos, flush=True)
                print(f"stopped: {type(stopped.cause).__name__}: {stopped.cause}", file=sys.stderr, flush=True)
                if isinstance(stopped.cause, WorkerLostError):
                    return 3
                return 143 if is_sigterm(stopped.cause) else 130
            print("committed", summary.committed_videos, flush=True)
            return 0
        finally:
            run.close()


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), float(sys.argv[4])))
