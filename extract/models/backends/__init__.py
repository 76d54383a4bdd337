"""Where a feature model's forward pass runs: PyTorch, or OpenVINO on the CPU, in fp32 or bf16.

Each extractor keeps one torch module per network (extract/models/); `load_network` hands back something to call
with the same tensors: the module itself (under bf16 autocast when asked), or the OpenVINO model converted from
it (extract/models/backends/openvino_runtime.py). `--backend auto` picks OpenVINO on a CPU when it is installed
(`pip install -e ".[openvino]"`) and torch on a GPU. A model OpenVINO cannot convert or compile runs on torch,
with one line in the log saying so; provenance records the backend that really ran and its version.

fp32 features of both backends agree within the golden tolerances (docs/performance.md, "Backends and precision on
the CPU"), so a store may hold rows of both under one recipe; bf16 is part of the recipe and never mixes with fp32
rows.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from extract.core.errors import UsageError
from extract.core.precision import Precision

log = logging.getLogger("img_vmr.extract")

BACKENDS = ("torch", "openvino")
BACKEND_CHOICES = ("auto", *BACKENDS)
INSTALL_OPENVINO = 'pip install -e ".[openvino]"'

Network = Callable[[torch.Tensor], torch.Tensor]


def openvino_installed() -> bool:
    return importlib.util.find_spec("openvino") is not None


def resolve_backend(spec: str, device: torch.device) -> str:
    """The backend `--backend spec` means on `device`: auto is OpenVINO on a CPU where it is installed."""
    if spec == "auto":
        return "openvino" if device.type == "cpu" and openvino_installed() else "torch"
    if spec == "openvino":
        if device.type != "cpu":
            raise UsageError(f"--backend openvino runs on the CPU, not {device}; use --device cpu or --backend torch")
        if not openvino_installed():
            raise UsageError(f"--backend openvino: OpenVINO is not installed; {INSTALL_OPENVINO}, or --backend torch")
    elif spec != "torch":
        raise UsageError(f"--backend {spec!r}: use {', '.join(BACKEND_CHOICES)}")
    return spec


def compute_threads(threads: int | None = None) -> int:
    """Threads for the forward pass, set once for torch and used by OpenVINO too, so that the two thread pools
    never hold more cores between them than torch was given (torch's default: the cores of this process)."""
    if threads is not None:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


@dataclass(frozen=True)
class LoadedNetwork:
    """A network ready to call, and the backend that really runs it (torch after a fallback)."""

    call: Network
    backend: str
    version: str

    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.call(inputs)


def _torch_network(module: torch.nn.Module, precision: Precision, device: torch.device) -> LoadedNetwork:
    def call(inputs: torch.Tensor) -> torch.Tensor:
        with precision.autocast(device):
            return module(inputs)

    return LoadedNetwork(call, "torch", torch.__version__)


def load_network(
    module: torch.nn.Module,
    example: torch.Tensor,
    *,
    backend: str,
    precision: Precision,
    device: torch.device,
    identity: Mapping[str, Any],
    weights_file: Path | None,
) -> LoadedNetwork:
    """`module` (eval mode, on `device`) ready to run on `backend` for inputs shaped like `example` (any batch).

    identity: what names this network's numbers besides the input shape (its name, the weights' sha256, the
    model config's); it keys the OpenVINO cache. An OpenVINO conversion or compile failure falls back to torch.
    """
    if backend == "torch":
        return _torch_network(module, precision, device)
    from extract.models.backends import openvino_runtime as ov

    try:
        model = ov.converted_model(module, example, identity, ov.cache_folder(weights_file))
        network = ov.OpenVinoNetwork(model, precision.name, compute_threads())
    except Exception as error:  # any conversion or compile failure: the torch module still runs
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        log.warning(
            "OpenVINO could not run %s (%s: %s); running it on torch instead",
            identity.get("name", "the model"),
            type(error).__name__,
            first[:200],
        )
        log.debug("OpenVINO failure", exc_info=True)
        return _torch_network(module, precision, device)
    if precision.name == "bf16" and network.runs != "bf16":
        raise UsageError(
            f"--precision bf16: OpenVINO computes {identity.get('name', 'the model')} in {network.runs} on this CPU "
            "(it has no native bf16); use --precision fp32"
        )
    module.to("meta")  # the compiled model holds its own weights: the torch copy would only double the memory
    return LoadedNetwork(network, "openvino", ov.openvino_version())
