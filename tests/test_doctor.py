"""img-extract doctor: ffmpeg, torch, GPUs, weights and models reported; broken requirements exit 1."""

from __future__ import annotations

import json
import os
import socket
import subprocess
from pathlib import Path

import pytest
import torch

from extract.models.weights import REGISTRY
from extract.run.doctor import check_cuda, check_models, check_weights
from tests.conftest import cli_entry, run_cli


def test_doctor_on_a_working_machine_names_ffmpeg_torch_and_every_weights_file(published_weights: Path) -> None:
    result = run_cli("doctor", "--weights-dir", published_weights)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("ffmpeg   ok ") and "ffmpeg" in lines[0]
    assert any(line.startswith(f"torch    ok     {torch.__version__}, ") for line in lines)
    for name in REGISTRY:
        assert any(f"{name}: present, " in line and str(published_weights) in line for line in lines), name
    assert lines[-1].startswith("nothing required is broken; offline: ")  # run_cli sets HF_HUB_OFFLINE=1


def test_doctor_fails_when_ffmpeg_does_not_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    broken = tmp_path / "ffmpeg"
    broken.write_text("#!/bin/sh\necho 'error while loading shared libraries' >&2\nexit 127\n")
    broken.chmod(0o755)
    monkeypatch.setenv("IMG_FFMPEG", str(broken))
    result = run_cli("doctor", "--json")
    assert result.returncode == 1
    checks = {check["name"]: check for check in json.loads(result.stdout)}
    assert checks["ffmpeg"]["status"] == "broken" and "exit status 127" in checks["ffmpeg"]["lines"][0]
    assert checks["torch"]["status"] == "ok"


def test_weights_are_checked_by_presence_unless_verify_hashes_them(published_weights: Path) -> None:
    fast = check_weights(published_weights, verify=False)
    compared = sum("checksums not compared (--verify)" in line for line in fast.lines)
    assert fast.status == "ok" and compared == len(REGISTRY)
    verified = check_weights(published_weights, verify=True)  # the goldens' weights, not the published files
    assert verified.status == "broken"
    assert any("not the published" in line and "rgb_imagenet.pt" in line for line in verified.lines)


def test_missing_weights_are_a_note_that_says_where_they_come_from(tmp_path: Path) -> None:
    check = check_weights(tmp_path, verify=False)  # conftest: offline
    assert check.status == "note"
    assert any(line.startswith("rgb_charades.pt: missing (presets i3d-charades-vslnet)") for line in check.lines)
    assert "offline" in check.lines[-1] and "img-extract weights fetch" in check.lines[-1]


def fake_nvidia_smi(folder: Path, monkeypatch: pytest.MonkeyPatch, gpu: str = "Tesla V100-SXM2-16GB") -> None:
    """An nvidia-smi on PATH that lists one GPU, as on a node whose driver sees it."""
    script = folder / "nvidia-smi"
    script.write_text(f'#!/bin/sh\necho "{gpu}, 535.104.05"\n')
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")
    for variable in ("CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES"):
        monkeypatch.delenv(variable, raising=False)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine whose torch sees no GPU")
def test_gpus_that_torch_cannot_use_are_broken(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_nvidia_smi(tmp_path, monkeypatch)
    check = check_cuda()
    assert check.status == "broken"
    assert "nvidia-smi sees 1 GPU(s) (Tesla V100-SXM2-16GB; driver 535.104.05)" in check.lines[0]
    assert check.lines[-1] == "nvidia-smi: 1 GPU(s), driver 535.104.05"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine whose torch sees no GPU")
@pytest.mark.skipif(not torch.version.cuda, reason="a CPU-only torch build cannot use any GPU: broken is right")
@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("CUDA_VISIBLE_DEVICES", ""),
        ("CUDA_VISIBLE_DEVICES", "-1"),
        ("CUDA_VISIBLE_DEVICES", "NoDevFiles"),
        ("NVIDIA_VISIBLE_DEVICES", "void"),
    ],
)
def test_gpus_hidden_by_the_environment_are_a_note_naming_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    """A CPU-only Slurm step or a Ray CPU worker hides the node's GPUs on purpose: not a broken machine."""
    fake_nvidia_smi(tmp_path, monkeypatch, gpu="NVIDIA H200")
    monkeypatch.setenv(variable, value)
    result = run_cli("doctor", "--json")
    checks = {check["name"]: check for check in json.loads(result.stdout)}
    assert checks["cuda"]["status"] == "note", checks["cuda"]
    assert checks["cuda"]["lines"][0] == (
        f"nvidia-smi sees 1 GPU(s) (NVIDIA H200; driver 535.104.05) that {variable}={value!r} hides from this "
        "process; unset it (or name a GPU) to use them"
    )
    assert result.returncode == 0, result.stdout  # nothing broken: the GPUs are hidden on purpose
    from extract.core.devices import resolve_device  # an explicit --device cuda says why in its usage error
    from extract.core.errors import UsageError

    with pytest.raises(UsageError, match=f"{variable}={value!r} hides"):
        resolve_device("cuda")


def test_models_come_from_weights_dir_or_are_named_missing_offline(tiny_clip: Path) -> None:
    check = check_models(tiny_clip)
    assert "offline (HF_HUB_OFFLINE=1" in check.lines[0]
    assert f"clip preset: openai/clip-vit-base-patch32 from {tiny_clip}" in check.lines
    assert any(line.startswith("text --embed bert: bert-base-uncased ") for line in check.lines)


def test_doctor_says_offline_when_the_hub_cannot_be_reached(tmp_path: Path) -> None:
    """No offline switch, but the hub's address refuses connections (a closed port): offline, not "online"."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again when the block ends
    switches = ("HF_HUB_OFFLINE", "IMG_VMR_OFFLINE", "TRANSFORMERS_OFFLINE")
    env = {name: value for name, value in os.environ.items() if name not in switches}
    env |= {
        "HF_ENDPOINT": f"http://127.0.0.1:{port}",
        "HF_HOME": str(tmp_path / "hf"),
        "IMG_WEIGHTS_DIR": str(tmp_path / "empty-cache"),
    }
    result = subprocess.run([*cli_entry(), "doctor"], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert "online" not in result.stdout
    models = next(line for line in lines if line.startswith("models "))
    assert models.endswith(f"; offline: the hub 127.0.0.1:{port} cannot be reached (Connection refused)"), models
    assert "clip preset: openai/clip-vit-base-patch32 not available offline (save it into --weights-dir " in (
        result.stdout
    )
    assert any("offline: copy the missing files into the cache or --weights-dir" in line for line in lines)
    assert lines[-1] == (
        "nothing required is broken; offline: models and weights not on disk cannot be downloaded "
        "(img-pipeline tour --out tour/ needs none)"
    )
