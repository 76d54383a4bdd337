"""--device: parsed into a torch.device, named in the log, and GPUs that torch cannot use reported."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from extract.core.devices import arch_supported, nvidia_smi_gpus, resolve_device
from extract.core.errors import UsageError
from tests.conftest import run_cli
from tests.videos import make_video

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine whose torch sees no GPU")


def _driver_sees(answer: str, folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Put an nvidia-smi on PATH that answers like the driver of a GPU node whose GPUs this torch cannot use."""
    folder.mkdir()
    script = folder / "nvidia-smi"
    script.write_text(f'#!/bin/sh\necho "{answer}"\n')
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")


@pytest.fixture
def driver_sees_a_v100(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _driver_sees("Tesla V100-SXM2-16GB, 535.104.05", tmp_path / "driver", monkeypatch)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("gpu", "--device 'gpu' is not a device; use auto, cpu, cuda or cuda:N"),
        ("cuda:x", "--device 'cuda:x' is not a device; use auto, cpu, cuda or cuda:N"),
        ("mps", "--device 'mps' is not supported; use auto, cpu, cuda or cuda:N"),
    ],
)
def test_bad_device_specs_are_one_line_usage_errors(spec: str, message: str) -> None:
    with pytest.raises(UsageError) as error:
        resolve_device(spec)
    assert str(error.value) == message


def test_cpu_is_logged_with_the_torch_build(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="img_vmr")
    assert resolve_device("cpu") == torch.device("cpu")
    assert f"device: cpu ({torch.get_num_threads()} threads; torch {torch.__version__} (" in caplog.text


def test_nvidia_smi_lines_are_read(driver_sees_a_v100: None) -> None:
    gpus = nvidia_smi_gpus()
    assert [(gpu.name, gpu.driver) for gpu in gpus] == [("Tesla V100-SXM2-16GB", "535.104.05")]


@no_cuda
def test_auto_warns_when_the_driver_sees_gpus_that_torch_cannot_use(
    driver_sees_a_v100: None, caplog: pytest.LogCaptureFixture
) -> None:
    assert resolve_device("auto") == torch.device("cpu")
    warning = next(r.getMessage() for r in caplog.records if r.levelname == "WARNING")
    assert warning.startswith("running on the CPU: nvidia-smi sees 1 GPU(s) (Tesla V100-SXM2-16GB; driver 535.104.05)")
    assert f"that torch {torch.__version__}" in warning and "docs/install.md, Torch for your GPU and driver" in warning


@no_cuda
def test_auto_without_any_gpu_says_nothing_more(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no nvidia-smi
    assert resolve_device("auto") == torch.device("cpu")
    assert not [r for r in caplog.records if r.levelname == "WARNING"]


@no_cuda
def test_explicit_cuda_that_torch_cannot_use_says_why(driver_sees_a_v100: None) -> None:
    with pytest.raises(UsageError) as error:
        resolve_device("cuda:0")
    message = str(error.value)
    assert message.startswith("--device cuda:0: nvidia-smi sees 1 GPU(s) (Tesla V100-SXM2-16GB; driver 535.104.05)")
    assert message.endswith("; or use --device cpu") and "\n" not in message


@pytest.mark.parametrize(
    ("capability", "arch_list", "supported"),
    [
        ((7, 0), ["sm_75", "sm_80", "sm_90", "sm_100", "sm_120"], False),  # V100 on a CUDA 13 wheel
        ((6, 0), ["sm_50", "sm_60", "sm_70", "sm_80"], True),  # P100 on a CUDA 12.6 wheel
        ((8, 6), ["sm_80", "sm_90"], True),  # same major, later minor
        ((10, 0), ["sm_80", "sm_90", "compute_90"], True),  # PTX compiled at load time
        ((7, 5), ["sm_80", "compute_80"], False),
        ((9, 0), [], True),
    ],
)
def test_kernel_architectures_decide_whether_a_gpu_runs(capability, arch_list, supported: bool) -> None:
    assert arch_supported(capability, arch_list) is supported


@no_cuda
def test_extraction_logs_its_device_and_the_gpus_it_cannot_use(tmp_path: Path, tiny_clip: Path, monkeypatch) -> None:
    make_video(tmp_path / "v" / "a.mp4", seconds=1, audio=False)
    _driver_sees("Tesla P100-PCIE-16GB, 470.82.01", tmp_path / "driver", monkeypatch)
    result = run_cli(tmp_path / "v", "--out", tmp_path / "f.h5", "--clip-model", tiny_clip, "--no-progress")
    assert result.returncode == 0, result.stderr
    assert "img-extract: running on the CPU: nvidia-smi sees 1 GPU(s) (Tesla P100-PCIE-16GB; driver 470.82.01)" in (
        result.stderr
    )
    assert "img-extract: device: cpu (" in result.stderr
