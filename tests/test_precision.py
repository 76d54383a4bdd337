"""One precision rule (extract/core/precision.py) for every command: bf16 runs on the CPU too, fp16 needs CUDA
(refused when asked for on a CPU, a run's fp16 falls back to fp32), the rule is in every --help and what ran is
recorded. Before, extraction ran fp32 on the CPU whatever was asked, img-eval evaluated a bf16 run in bf16 and
img-predict answered it in fp32."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from extract.cli.main import main as img_extract
from extract.core.precision import RULE
from extract.store import FeatureStore
from img_model.cli.evaluate import main as img_eval
from img_model.cli.predict import main as img_predict
from img_model.cli.train import main as img_train
from pipelines.cli import main as img_pipeline
from tests.conftest import run_cli
from tests.videos import make_video


@pytest.mark.parametrize(
    ("command", "args"),
    [(img_extract, ["run"]), (img_train, ["train"]), (img_eval, []), (img_predict, ["answer"]), (img_pipeline, [])],
    ids=["img-extract", "img-train", "img-eval", "img-predict", "img-pipeline"],
)
def test_every_command_states_the_one_precision_rule_in_its_help(command, args: list[str]) -> None:
    result = CliRunner().invoke(command, [*args, "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert " ".join(RULE.split()) in " ".join(result.output.split())


def test_extraction_runs_bf16_on_the_cpu_records_it_and_refuses_fp16(tmp_path: Path, tiny_clip: Path) -> None:
    make_video(tmp_path / "videos" / "a.mp4", seconds=2.0)
    done = run_cli(
        tmp_path / "videos",
        "--out",
        tmp_path / "bf16.h5",
        "--clip-model",
        tiny_clip,
        "--device",
        "cpu",
        "--precision",
        "bf16",
    )
    assert done.returncode == 0, done.stderr
    with FeatureStore(tmp_path / "bf16.h5") as store:
        assert store.provenance("clip")["precision"] == "bf16"  # it recorded fp32: the CPU ran fp32 whatever was asked
    refused = run_cli(
        tmp_path / "videos",
        "--out",
        tmp_path / "fp16.h5",
        "--clip-model",
        tiny_clip,
        "--device",
        "cpu",
        "--precision",
        "fp16",
    )
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines()[-1] == (
        "img-extract: error: --precision fp16 needs a CUDA GPU, and this runs on cpu: use bf16 or fp32"
    )
    assert not (tmp_path / "fp16.h5.parts").exists()
