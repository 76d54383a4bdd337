"""The arithmetic precision a model runs in, and the one rule for a device that cannot run it.

    fp32   full precision, everywhere
    bf16   autocast to bfloat16: on a GPU, and on a CPU whose cores have bf16 instructions (extract/core/cpu.py;
           elsewhere torch emulates it, slower than fp32, and OpenVINO quietly computes f32)
    fp16   autocast to float16 (with a gradient scaler when training): CUDA only

Every command applies the same rule (`Precision.resolve`): the precision asked for (--precision) runs, and a
precision the device cannot run is a one-line usage error; without --precision, img-eval and img-predict take the
precision the checkpoint's run trained in, and where the device cannot run it they run fp32 (said in the log).
What really ran is recorded: in extraction's provenance, img-eval's report and img-predict's answers.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from extract.core import cpu
from extract.core.errors import UsageError

if TYPE_CHECKING:
    import torch

log = logging.getLogger(f"img_vmr.{__name__}")

NAMES = ("fp32", "bf16", "fp16")
RULE = (
    "bf16 runs on a GPU or a CPU with bf16 instructions, fp16 on CUDA only; one a device cannot run is refused "
    "when asked for and falls back to fp32 when it comes from a checkpoint's run; the precision that ran is recorded."
)
# torch is imported where a precision is used, not with this module: every CLI reads NAMES and RULE to parse its
# options, and a usage error or --help must not wait seconds for torch to load.
_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


@dataclass(frozen=True)
class Precision:
    name: str = "fp32"

    def __post_init__(self) -> None:
        if self.name not in NAMES:
            raise UsageError(f"precision must be one of {', '.join(NAMES)}, not {self.name!r}")

    def __str__(self) -> str:
        return self.name

    @property
    def dtype(self) -> torch.dtype:
        import torch

        return getattr(torch, _DTYPES[self.name])

    def runs_on(self, device: torch.device) -> bool:
        if self.name == "fp32" or device.type == "cuda":
            return True
        return self.name == "bf16" and device.type == "cpu" and cpu.native_bf16()

    def effective(self, device: torch.device) -> Precision:
        """What runs on `device`: this precision, or fp32 where the device cannot run it (autocast never runs it
        there)."""
        return self if self.runs_on(device) else FP32

    def checked(self, device: torch.device) -> Precision:
        """This precision, when `device` can run it; a one-line UsageError saying why not otherwise."""
        if self.runs_on(device):
            return self
        if self.name == "bf16":
            raise UsageError(cpu.bf16_refusal() or f"--precision bf16 does not run on {device}; use --precision fp32")
        other = " or bf16" if Precision("bf16").runs_on(device) else ""
        raise UsageError(f"--precision {self} needs a CUDA GPU, and this runs on {device}: use fp32{other}")

    @classmethod
    def resolve(cls, asked: str | Precision | None, device: torch.device, recorded: str | None = None) -> Precision:
        """The precision a command runs in on `device` (the module's rule): `asked` (--precision) when given,
        refused in one line when the device cannot run it; else the `recorded` one of a checkpoint's run (fp32 in
        its place where the device cannot run it, logged); else fp32."""
        if asked is not None:
            precision = (asked if isinstance(asked, Precision) else cls(asked)).checked(device)
        else:
            precision = cls(recorded or "fp32")
            if not precision.runs_on(device):
                log.info("the run used %s, which does not run on %s; running in fp32", precision, device)
                precision = FP32
        log.info("precision: %s", precision)
        return precision

    @contextlib.contextmanager
    def autocast(self, device: torch.device) -> Iterator[None]:
        """torch.autocast to this precision on `device` (nothing for fp32, or for fp16 where it cannot run)."""
        if self.effective(device).name == "fp32":
            yield
            return
        import torch

        with torch.autocast(device.type, dtype=self.dtype):
            yield

    def grad_scaler(self, device: torch.device) -> torch.amp.GradScaler:
        """The gradient scaler of a training run: active for fp16 only."""
        import torch

        return torch.amp.GradScaler(device.type, enabled=self.effective(device).name == "fp16")


FP32 = Precision("fp32")
