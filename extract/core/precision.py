"""The arithmetic precision a model runs in, and the one rule for a device that cannot run it.

    fp32   full precision, everywhere
    bf16   autocast to bfloat16, on a GPU and on the CPU alike (torch autocasts bf16 on both)
    fp16   autocast to float16 (with a gradient scaler when training): CUDA only

Every command applies the same rule (`Precision.resolve`): the precision asked for (--precision) runs, and fp16
asked for on a CPU is a one-line usage error; without --precision, img-eval and img-predict take the precision
the checkpoint's run trained in, and a run's fp16 on a CPU falls back to fp32 (said in the log). What really ran
is recorded: in extraction's provenance, img-eval's report and img-predict's answers.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from extract.core.errors import UsageError

log = logging.getLogger(f"img_vmr.{__name__}")

NAMES = ("fp32", "bf16", "fp16")
RULE = (
    "bf16 autocasts on a GPU and on the CPU; fp16 needs CUDA (asked for on a CPU it is refused; a run's fp16 "
    "falls back to fp32 there); the precision that ran is recorded."
)
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


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
        return _DTYPES[self.name]

    def runs_on(self, device: torch.device) -> bool:
        return self.name != "fp16" or device.type == "cuda"

    def effective(self, device: torch.device) -> Precision:
        """What runs on `device`: this precision, or fp32 for fp16 without CUDA (autocast never runs it there)."""
        return self if self.runs_on(device) else FP32

    def checked(self, device: torch.device) -> Precision:
        """This precision, when `device` can run it; a one-line UsageError otherwise (fp16 without CUDA)."""
        if not self.runs_on(device):
            raise UsageError(f"--precision {self} needs a CUDA GPU, and this runs on {device}: use bf16 or fp32")
        return self

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
                log.info("the run used %s, which needs a CUDA GPU; running in fp32 on %s", precision, device)
                precision = FP32
        log.info("precision: %s", precision)
        return precision

    @contextlib.contextmanager
    def autocast(self, device: torch.device) -> Iterator[None]:
        """torch.autocast to this precision on `device` (nothing for fp32, or for fp16 where it cannot run)."""
        if self.effective(device).name == "fp32":
            yield
            return
        with torch.autocast(device.type, dtype=self.dtype):
            yield

    def grad_scaler(self, device: torch.device) -> torch.amp.GradScaler:
        """The gradient scaler of a training run: active for fp16 only."""
        return torch.amp.GradScaler(device.type, enabled=self.effective(device).name == "fp16")


FP32 = Precision("fp32")
