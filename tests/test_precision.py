"""One precision rule (extract/core/precision.py) for every command: bf16 runs on a GPU or a CPU with bf16
instructions, fp16 on CUDA only (refused when asked for where it cannot run, a run's precision falls back to fp32
there), the rule is in every --help and what ran is recorded. Before, extraction ran fp32 on the CPU whatever was
asked, img-eval evaluated a bf16 run in bf16 and img-predict answered it in fp32."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from extract.cli.main import main as img_extract
from extract.core import cpu
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


def test_extraction_on_the_cpu_runs_bf16_where_it_can_records_it_and_refuses_fp16(
    tmp_path: Path, tiny_clip: Path
) -> None:
    make_video(tmp_path / "videos" / "a.mp4", seconds=2.0)

    def extract(precision: str, out: Path):  # type: ignore[no-untyped-def]
        args = ("--out", out, "--clip-model", tiny_clip, "--device", "cpu", "--precision", precision)
        return run_cli(tmp_path / "videos", *args)

    bf16 = extract("bf16", tmp_path / "bf16.h5")
    if cpu.native_bf16():
        assert bf16.returncode == 0, bf16.stderr
        with FeatureStore(tmp_path / "bf16.h5") as store:
            assert store.provenance("clip")["precision"] == "bf16"  # it recorded fp32: the CPU ran fp32 whatever
    else:  # this CPU emulates bf16 (slower than fp32): refused, as fp16 is, before anything is written
        assert bf16.returncode == 2
        assert bf16.stderr.strip().splitlines()[-1].startswith("img-extract: error: --precision bf16: ")
        assert not (tmp_path / "bf16.h5.parts").exists()
    refused = extract("fp16", tmp_path / "fp16.h5")
    assert refused.returncode == 2
    other = "fp32 or bf16" if cpu.native_bf16() else "fp32"
    assert refused.stderr.strip().splitlines()[-1] == (
        f"img-extract: error: --precision fp16 needs a CUDA GPU, and this runs on cpu: use {other}"
    )
    assert not (tmp_path / "fp16.h5.parts").exists()
