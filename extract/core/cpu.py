"""What this CPU computes natively, as far as the precision of a forward pass goes.

bf16 on a CPU is only worth it (and only what OpenVINO really runs) where the cores have bf16 instructions:
x86 avx512_bf16 or amx_bf16, Arm's bf16 extension. Elsewhere torch emulates it (slower than fp32) and OpenVINO
quietly computes f32 under a bf16 hint, so `--precision bf16` is refused there instead.
"""

from __future__ import annotations

import functools
import platform
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")
BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})  # x86 (Linux names them so) and Arm's "Features"


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The instruction-set flags the kernel reports for the first CPU (empty where /proc/cpuinfo is absent)."""
    try:
        text = CPUINFO.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def cpu_name() -> str:
    try:
        for line in CPUINFO.read_text(encoding="utf-8", errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and value.strip():
                return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "this CPU"


def native_bf16() -> bool:
    """Whether the CPU has bf16 arithmetic (not only conversions)."""
    return bool(cpu_flags() & BF16_FLAGS)


def bf16_refusal() -> str | None:
    """Why --precision bf16 cannot run on this CPU, in one line; None where it can."""
    if native_bf16():
        return None
    import torch

    capability = torch.backends.cpu.get_cpu_capability()
    return (
        f"--precision bf16: {cpu_name()} has no native bf16 (no avx512_bf16, amx_bf16 or bf16 flag; torch's "
        f"kernels here are {capability}), where bf16 runs emulated and slower than fp32; use --precision fp32"
    )
