"""The torch device a command runs on: `--device` parsed, the chosen device named in the log, and GPUs that the
installed torch cannot use reported instead of silently running on the CPU.

A GPU can be present and unusable: a torch wheel built for a newer CUDA than the driver supports (torch's CUDA 13
wheels need an R580 driver), a CPU-only build, or a GPU older than the wheel's kernels (the CUDA 13 wheels have
none for V100 and P100). nvidia-smi, which ships with the driver, tells which GPUs are there.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from extract.core.errors import UsageError

if TYPE_CHECKING:
    import torch

log = logging.getLogger(f"img_vmr.{__name__}")

NVIDIA_SMI_TIMEOUT_S = 10.0
DEVICE_SPECS = "auto, cpu, cuda or cuda:N"


@dataclass(frozen=True)
class DriverGpu:
    """A GPU as nvidia-smi lists it."""

    name: str
    driver: str


def nvidia_smi_gpus() -> list[DriverGpu]:
    """The GPUs the NVIDIA driver sees; empty without nvidia-smi or when it fails."""
    executable = shutil.which("nvidia-smi")
    if executable is None:
        return []
    command = [executable, "--query-gpu=name,driver_version", "--format=csv,noheader"]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=NVIDIA_SMI_TIMEOUT_S, check=False)
    except (OSError, subprocess.SubprocessError):
        return []
    if done.returncode != 0:
        return []
    gpus = []
    for line in done.stdout.splitlines():
        name, _, driver = line.rpartition(",")
        if name.strip():
            gpus.append(DriverGpu(name.strip(), driver.strip()))
    return gpus


def arch_supported(capability: tuple[int, int], arch_list: Sequence[str]) -> bool:
    """Whether a torch build with these kernel architectures runs on a GPU of this compute capability.

    sm_XY kernels run on X.Y and later minor versions of the same major; compute_XY (PTX) is compiled at load
    time for X.Y and anything newer. An empty list (torch did not say) counts as supported.
    """
    if not arch_list:
        return True
    for arch in arch_list:
        kind, _, digits = arch.partition("_")
        if not digits.isdigit():
            continue
        built = (int(digits[:-1]), int(digits[-1]))
        if kind == "sm" and built[0] == capability[0] and built[1] <= capability[1]:
            return True
        if kind == "compute" and built <= capability:
            return True
    return False


def _torch_build(torch: Any) -> str:
    cuda = torch.version.cuda
    return f"torch {torch.__version__} ({f'CUDA {cuda}' if cuda else 'built without CUDA'})"


HIDING_VARIABLES = ("CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES")
NVIDIA_HIDDEN = ("void", "none", "")  # NVIDIA_VISIBLE_DEVICES values that give a container no GPU


def hiding_variable(torch: Any, reason: str | None) -> str | None:
    """`NAME='value'` when the environment, not the torch build, keeps the GPUs from this process: a set
    CUDA_VISIBLE_DEVICES that leaves torch no device (empty, -1, NoDevFiles, an index that is not there: CPU-only
    Slurm steps and Ray CPU workers set it so) or NVIDIA_VISIBLE_DEVICES=void/none; None otherwise. A driver that
    is too old (torch's warning, `reason`) or a CPU-only build is not the environment's doing."""
    if reason or not torch.version.cuda:
        return None
    nvidia = os.environ.get("NVIDIA_VISIBLE_DEVICES")
    if nvidia is not None and nvidia.strip().lower() in NVIDIA_HIDDEN:
        return f"NVIDIA_VISIBLE_DEVICES={nvidia!r}"
    cuda = os.environ.get("CUDA_VISIBLE_DEVICES")
    return f"CUDA_VISIBLE_DEVICES={cuda!r}" if cuda is not None else None


def _gpus_line(gpus: list[DriverGpu]) -> str:
    names = ", ".join(dict.fromkeys(gpu.name for gpu in gpus))
    return f"nvidia-smi sees {len(gpus)} GPU(s) ({names}; driver {gpus[0].driver})"


def _hidden_gpus(torch: Any, reason: str | None) -> str | None:
    """A one-line note when nvidia-smi sees GPUs that the environment hides from this process; None otherwise."""
    variable = hiding_variable(torch, reason)
    gpus = nvidia_smi_gpus() if variable else []
    if not gpus:
        return None
    return f"{_gpus_line(gpus)} that {variable} hides from this process; unset it (or name a GPU) to use them"


def _unusable_gpus(torch: Any, reason: str | None) -> str | None:
    """A one-line note when nvidia-smi sees GPUs that this torch does not use; None when it sees none or when the
    environment hides them (_hidden_gpus)."""
    if hiding_variable(torch, reason):
        return None
    gpus = nvidia_smi_gpus()
    if not gpus:
        return None
    why = f": {reason}" if reason else ""
    return (
        f"{_gpus_line(gpus)} that {_torch_build(torch)} cannot use{why}; install the torch build for this driver "
        "and GPU (docs/install.md, Torch for your GPU and driver)"
    )


def _cuda_available(torch: Any) -> tuple[bool, str | None]:
    """torch.cuda.is_available(), with the first line of torch's own warning about why not (an old driver)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        available = torch.cuda.is_available()
    reason = next((str(w.message).strip().splitlines()[0] for w in caught if str(w.message).strip()), None)
    return available, reason


def _unsupported_gpu(torch: Any, index: int) -> str | None:
    capability = torch.cuda.get_device_capability(index)
    if arch_supported(capability, torch.cuda.get_arch_list()):
        return None
    return (
        f"{torch.cuda.get_device_name(index)} (compute capability {capability[0]}.{capability[1]}) has no kernels "
        f"in {_torch_build(torch)}, built for {' '.join(torch.cuda.get_arch_list())}; install a torch build "
        "for this GPU (docs/install.md, Torch for your GPU and driver)"
    )


def _parse(spec: str, torch: Any) -> Any:
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise UsageError(f"--device {spec!r} is not a device; use {DEVICE_SPECS}") from None
    if device.type not in ("cpu", "cuda"):
        raise UsageError(f"--device {spec!r} is not supported; use {DEVICE_SPECS}")
    return device


def _auto(torch: Any) -> Any:
    available, reason = _cuda_available(torch)
    if not available:
        if note := _hidden_gpus(torch, reason):
            log.info("running on the CPU: %s", note)
        elif note := _unusable_gpus(torch, reason):
            log.warning("running on the CPU: %s", note)
        return torch.device("cpu")
    if problem := _unsupported_gpu(torch, 0):
        log.warning("running on the CPU: %s", problem)
        return torch.device("cpu")
    return torch.device("cuda", 0)


def _gpu(spec: str, index: int, torch: Any) -> Any:
    available, reason = _cuda_available(torch)
    if not available:
        note = _hidden_gpus(torch, reason) or _unusable_gpus(torch, reason) or "no CUDA GPU is visible here"
        raise UsageError(f"--device {spec}: {note}; or use --device cpu")
    if index >= torch.cuda.device_count():
        raise UsageError(f"--device {spec}: only {torch.cuda.device_count()} GPU(s) visible")
    if problem := _unsupported_gpu(torch, index):
        raise UsageError(f"--device {spec}: {problem}; or use --device cpu")
    return torch.device("cuda", index)


def _describe(device: Any, torch: Any) -> str:
    if device.type == "cpu":
        return f"device: cpu ({torch.get_num_threads()} threads; {_torch_build(torch)})"
    properties = torch.cuda.get_device_properties(device)
    return (
        f"device: {device} ({properties.name}, {properties.total_memory / 2**30:.0f} GiB, compute capability "
        f"{properties.major}.{properties.minor}; {_torch_build(torch)})"
    )


@dataclass(frozen=True)
class CudaDevice:
    """A GPU as torch sees it; `problem` says why this torch build cannot run on it (None: it can)."""

    index: int
    name: str
    memory_gib: float
    capability: tuple[int, int]
    problem: str | None


@dataclass(frozen=True)
class CudaReport:
    """What `img-extract doctor` says about GPUs: torch's CUDA build, its GPUs, and the driver's (nvidia-smi)."""

    torch_build: str
    arch_list: tuple[str, ...]
    available: bool
    devices: tuple[CudaDevice, ...]
    driver_gpus: tuple[DriverGpu, ...]
    unusable: str | None  # nvidia-smi sees GPUs that this torch cannot use, and why
    hidden: str | None  # nvidia-smi sees GPUs that CUDA_VISIBLE_DEVICES / NVIDIA_VISIBLE_DEVICES hide (not broken)


def cuda_report() -> CudaReport:
    import torch

    available, reason = _cuda_available(torch)
    devices = []
    if available:
        for index in range(torch.cuda.device_count()):
            properties = torch.cuda.get_device_properties(index)
            devices.append(
                CudaDevice(
                    index,
                    properties.name,
                    properties.total_memory / 2**30,
                    (properties.major, properties.minor),
                    _unsupported_gpu(torch, index),
                )
            )
    arch_list = tuple(torch.cuda.get_arch_list()) if torch.version.cuda else ()
    return CudaReport(
        _torch_build(torch),
        arch_list,
        available,
        tuple(devices),
        tuple(nvidia_smi_gpus()),
        None if available else _unusable_gpus(torch, reason),
        None if available else _hidden_gpus(torch, reason),
    )


def resolve_device(spec: str) -> torch.device:
    """The torch.device for --device SPEC (auto, cpu, cuda, cuda:N), logged with its GPU's name.

    auto takes GPU 0 when torch can use it, else the CPU, with a warning when the driver sees GPUs that torch
    cannot use; an explicit cuda that cannot run is a one-line UsageError that says why.
    """
    import torch

    if spec == "auto":
        device = _auto(torch)
    else:
        requested = _parse(spec, torch)
        device = _gpu(spec, requested.index or 0, torch) if requested.type == "cuda" else torch.device("cpu")
    log.info("%s", _describe(device, torch))
    return device
