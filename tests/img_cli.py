"""Running img-train and img-eval as users do (real subprocesses), and a tiny synthetic dataset for them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from img_model.data.synthetic import SyntheticDataset, SyntheticSpec, read_audio_matters, write_audio_matters

# A few seconds of training on 2 CPU cores: the learning check's small IMG, smaller still.
TINY_CONFIG = """\
[model]
dim = 16
num_heads = 2
char_dim = 4
char_kernel_channels = [2, 2, 2, 2]
max_pos_len = 24
positional_encoding = "temporal"
fusion_gru_layers = 1
predictor_conv_layers = 1
encoder_conv_layers = 1

[train]
epochs = 2
batch_size = 8
learning_rate = 0.003

[runtime]
workers = 0
threads = 1
"""
TINY_SPEC = SyntheticSpec(
    train_videos_per_family=6, test_videos_per_family=2, min_steps=12, max_steps=24, silent_videos=1
)


def tiny_dataset(folder: Path) -> SyntheticDataset:
    data = write_audio_matters(folder, TINY_SPEC)
    (folder / "tiny.toml").write_text(TINY_CONFIG, encoding="utf-8")
    return data


def train_args(data: SyntheticDataset, out: Path, *extra: str) -> list[str]:
    """img-train's arguments for `data` with its tiny.toml (tiny_dataset), writing the run to `out`."""
    return [
        *data.cli_data_args(),
        "--config",
        str(data.folder / "tiny.toml"),
        "--out",
        str(out),
        "--no-progress",
        *extra,
    ]


def train_tiny_checkpoint(folder: Path) -> tuple[SyntheticDataset, Path]:
    """The tiny synthetic dataset in folder/data and a checkpoint trained on it for one epoch, in this process
    (torch's thread count restored afterwards): folder/run/best.pt."""
    from dataclasses import replace

    import torch

    from img_model.data.dataset import DataSources
    from img_model.train.config import resolve
    from img_model.train.run_data import model_inputs, prepare_data
    from img_model.train.trainer import Trainer

    data = tiny_dataset(folder / "data")
    run = resolve(
        folder / "data" / "tiny.toml",
        {
            "data": {
                "dataset": str(data.annotations),
                "features": (str(data.features),),
                "visual": data.visual,
                "audio": data.audio,
                "text": str(data.text),
            },
            "train": {"epochs": 1, "evals_per_epoch": 1},
            "runtime": {"progress": False},
        },
    )
    sources = DataSources(run.data)
    run = replace(run, model=replace(run.model, **model_inputs(sources)))
    threads = torch.get_num_threads()
    try:
        Trainer(run, prepare_data(run, sources), folder / "run").fit()
    finally:
        torch.set_num_threads(threads)
    return data, folder / "run" / "best.pt"


@dataclass(frozen=True)
class LearningCheck:
    """The learning check's run (conftest's `learning_check`, made once per pytest run and only read):
    `img-pipeline tour --out tour` (pipelines/tour.py), which writes the synthetic audio-matters data, trains
    LEARNING_CHECK_CONFIG on it through img-train into tour/run/ and evaluates run/best.pt through img-eval
    (`--json --predictions --report --threads 1`). `summary` is what the tour printed."""

    data: SyntheticDataset
    checkpoint: Path
    predictions: Path
    report: Path
    summary: str

    def rows(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.predictions.read_text().splitlines()]


def train_learning_check(folder: Path) -> LearningCheck:
    """The learning check made by the tour in folder/tour (about 25 s of CPU)."""
    tour = folder / "tour"
    toured = run_img_pipeline("tour", "--out", tour, "--no-progress")
    assert toured.returncode == 0, toured.stderr
    data, run = read_audio_matters(tour / "data"), tour / "run"
    return LearningCheck(data, run / "best.pt", tour / "predictions.jsonl", tour / "report.html", toured.stdout)


def _command(module: str, script: str, args: tuple[str | Path, ...]) -> tuple[list[str], dict[str, str]]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    installed = Path(sys.executable).parent / script
    entry = [str(installed)] if installed.exists() else [sys.executable, "-m", module]
    return [*entry, *map(str, args)], env


def _run(module: str, script: str, args: tuple[str | Path, ...], timeout: float) -> subprocess.CompletedProcess[str]:
    command, env = _command(module, script, args)
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout)


def run_img_train(*args: str | Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return _run("img_model.cli.train", "img-train", args, timeout)


def run_img_eval(*args: str | Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return _run("img_model.cli.evaluate", "img-eval", args, timeout)


def run_img_predict(*args: str | Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return _run("img_model.cli.predict", "img-predict", args, timeout)


def start_img_train(*args: str | Path) -> subprocess.Popen[str]:
    """img-train started in the background (stdout and stderr piped), e.g. to be killed mid-run."""
    command, env = _command("img_model.cli.train", "img-train", args)
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def start_img_predict(*args: str | Path) -> subprocess.Popen[str]:
    """img-predict started in the background (stdout and stderr piped): several can run at once."""
    command, env = _command("img_model.cli.predict", "img-predict", args)
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def run_img_pipeline(*args: str | Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return _run("pipelines.cli", "img-pipeline", args, timeout)


def start_img_pipeline(*args: str | Path) -> subprocess.Popen[str]:
    """img-pipeline started in the background (stdout and stderr piped), e.g. to be stopped mid-run."""
    command, env = _command("pipelines.cli", "img-pipeline", args)
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
