"""benchmarks/gpu_check.sh: its dry run (every step on the CPU with tiny inputs) and its time boxes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.gpu_check import PRESET_NAMES, STEPS, gpu_samples

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"


def gpu_check(*args: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "PYTHON": sys.executable, **(env or {})}
    return subprocess.run([str(SCRIPT), *map(str, args)], capture_output=True, text=True, env=environment, timeout=900)


def test_nvidia_smi_samples_give_mean_and_max_utilisation_and_memory() -> None:
    lines = ["12, 800\n", "90, 2048\n", "[N/A], [N/A]\n", "60, 1024\n"]
    assert gpu_samples(lines) == {"samples": 3, "utilisation_mean_pct": 54.0, "utilisation_max_pct": 90.0,
                                  "memory_max_mib": 2048.0}  # fmt: skip
    assert gpu_samples(["No devices were found\n"]) is None


def test_a_step_past_its_timeout_is_killed_recorded_and_the_check_goes_on(tmp_path: Path) -> None:
    result = gpu_check("--dry-run", "--out", tmp_path, "--steps", "setup,train-step", "--timeout-s", "2",
                       "--deadline-s", "3")  # fmt: skip
    assert result.returncode == 1, result.stdout + result.stderr
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["steps"]["setup"]["status"] == "timeout" and report["steps"]["setup"]["timeout_s"] == 2
    assert report["steps"]["train-step"] == {"status": "not run", "reason": report["steps"]["train-step"]["reason"]}
    assert "out of time" in report["steps"]["train-step"]["reason"]
    assert "| setup | timeout |" in (tmp_path / "gpu_check.md").read_text()


@pytest.mark.slow
def test_the_dry_run_runs_every_step_on_the_cpu(tmp_path: Path) -> None:
    """Every step the GPU run makes, with tiny inputs; a stand-in nvidia-smi feeds the utilisation sampler."""
    driver = tmp_path / "driver"
    driver.mkdir()
    smi = driver / "nvidia-smi"  # answers the sampler's query only: no GPU for the device checks
    smi.write_text('#!/bin/sh\ncase "$*" in *utilization.gpu*) while true; do echo "37, 1024"; sleep 0.1; done;; '
                   "esac\nexit 9\n")  # fmt: skip
    smi.chmod(0o755)
    out = tmp_path / "out"
    result = gpu_check("--dry-run", "--out", out, env={"PATH": f"{driver}{os.pathsep}{os.environ['PATH']}"})
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads((out / "gpu_check.json").read_text())
    assert list(report["steps"]) == [step.name for step in STEPS]
    assert {name: entry["status"] for name, entry in report["steps"].items()} == {s.name: "ok" for s in STEPS}
    steps = {name: entry["result"] for name, entry in report["steps"].items()}
    assert "2 skipped" in steps["cuda-tests"]["summary"]  # the CUDA-only tests, collected and skipped on a CPU
    for name in PRESET_NAMES:
        extraction = steps[f"extract:{name}"]
        assert extraction["clips_per_s"] > 0 and extraction["bound"] in ("decode", "compute")
        assert extraction["gpu"]["utilisation_mean_pct"] == 37.0 and extraction["gpu"]["memory_max_mib"] == 1024.0
    assert set(steps["precision"]["min_cosine_to_fp32"]) == {"clip", "i3d-charades-vslnet", "vggish", "panns"}
    assert steps["train-step"]["fp32"]["ms_per_step"] > 0 and "bf16" in steps["train-step"]
    assert steps["ddp"]["same_run"] is True  # 2 gloo processes on the CPU
    markdown = (out / "gpu_check.md").read_text()
    assert "| i3d-anet-vslnet |" in markdown and "| bf16 |" in markdown and "| panns |" in markdown
