"""A torch network run by OpenVINO on the CPU: converted once, cached on disk, compiled for this run.

`openvino.convert_model` turns the extractor's own torch module (the one definition of the network) into an
OpenVINO model with a dynamic batch dimension; the result is saved as IR (`.xml` + `.bin`) in a cache folder
beside the weights (`.img-vmr-openvino/`, or the weights cache when that folder is read-only), under a name
made of everything that decides it: the weights' sha256 (and model config), the input shape, the IR's precision
and the OpenVINO version. A second run, or another process, reads the IR instead of converting again (I3D: ~7 s).

Between processes: the conversion of one key runs under a lock file beside it (extract.core.files's writer lock),
so two processes starting together convert once; the files are written under temporary names and renamed
(extract.core.files.write_atomically), the .bin before the .xml that readers look for, so a reader never sees half
an IR. One dynamic-batch compile serves every batch size: as fast as one compile per batch shape here
(benchmarks/bench_extract.py; docs/performance.md, "Backends and precision on the CPU").
"""

from __future__ import annotations

import hashlib
import json
import logging
import mmap
import os
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

log = logging.getLogger("img_vmr.extract")

CACHE_FOLDER = ".img-vmr-openvino"
CONVERT_WAIT_S = 900.0  # another process converting the same model: wait this long for its IR
# The IR keeps the torch weights' fp32; bf16 is a compile-time hint (INFERENCE_PRECISION_HINT), not a second IR.
IR_PRECISION = "fp32"
_OV_PRECISION = {"fp32": "f32", "bf16": "bf16"}


def openvino_version() -> str:
    import openvino

    return openvino.get_version().split("-", 1)[0]


def cache_key(identity: Mapping[str, Any], input_shape: tuple[int, ...]) -> str:
    """The name of a converted model: sha256 of the network's identity, its input shape (batch as -1), the IR's
    precision and the OpenVINO version that converted it."""
    facts = {
        **identity,
        "input_shape": list(input_shape),
        "ir_precision": IR_PRECISION,
        "openvino": openvino_version(),
    }
    return hashlib.sha256(json.dumps(facts, sort_keys=True, default=str).encode()).hexdigest()


def cache_folder(weights_file: Path | None) -> Path:
    """Beside the weights when that folder can be written, else in the weights cache ($IMG_WEIGHTS_DIR)."""
    from extract.models.weights import default_weights_dir

    if weights_file is not None and os.access(weights_file.parent, os.W_OK):
        return weights_file.parent / CACHE_FOLDER
    return default_weights_dir() / CACHE_FOLDER


def _save_ir(model: Any, xml: Path) -> None:
    """Save an OpenVINO model as xml + bin under `xml`'s name, each file written atomically, the .bin first."""
    import openvino

    from extract.core.files import write_atomically

    with tempfile.TemporaryDirectory(dir=xml.parent, prefix=".convert-") as tmp:
        staged = Path(tmp) / xml.name
        openvino.save_model(model, staged, compress_to_fp16=False)
        for suffix in (".bin", ".xml"):
            source = staged.with_suffix(suffix)
            with open(source, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
                view = memoryview(mapped)  # the page cache, not a copy in this process's memory
                try:
                    write_atomically(xml.with_suffix(suffix), view)
                finally:
                    view.release()


def converted_model(network: torch.nn.Module, example: torch.Tensor, identity: Mapping[str, Any], folder: Path) -> Any:
    """The OpenVINO model of `network` for inputs shaped like `example` with any batch size: read from `folder`
    if converted before, else converted now and saved there."""
    import openvino

    from extract.core.files import acquire_writer_lock, release_writer_lock

    shape = (-1, *example.shape[1:])
    key = cache_key(identity, shape)
    xml = folder / f"{identity.get('name', 'model')}-{key[:20]}.xml"
    core = openvino.Core()
    if xml.is_file():
        return core.read_model(xml)
    folder.mkdir(parents=True, exist_ok=True)
    lock = acquire_writer_lock(
        folder,
        xml,
        name=xml.with_suffix(".lock").name,
        wait_s=CONVERT_WAIT_S,
        on_wait=lambda holder: log.info("waiting for %s, which is converting the same model to OpenVINO", holder),
    )
    try:
        if xml.is_file():  # converted by the process we waited for
            return core.read_model(xml)
        log.info("converting %s to OpenVINO (once; cached in %s)", identity.get("name", "the model"), folder)
        # Tracing warns about every shape-dependent Python branch (I3D's "same" padding, CLIP's size check): the
        # shapes are fixed but the batch, which those branches do not read.
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = openvino.convert_model(network, example_input=example, input=[shape])
        _save_ir(model, xml)
        return model
    finally:
        release_writer_lock(lock)


class OpenVinoNetwork:
    """Calls a compiled OpenVINO model like the torch network it was converted from: tensor in, tensor out."""

    def __init__(self, model: Any, precision: str, threads: int) -> None:
        import openvino

        config = {
            "INFERENCE_PRECISION_HINT": _OV_PRECISION[precision],  # explicit: bf16 CPUs default to bf16
            "PERFORMANCE_HINT": "LATENCY",  # one stream: the engine runs one batch at a time
            "INFERENCE_NUM_THREADS": threads,  # the same count as torch's (backends.compute_threads)
        }
        self.compiled = openvino.Core().compile_model(model, "CPU", config)
        self.precision = precision
        # What it really computes in: a CPU without bf16 answers f32 to a bf16 hint.
        self.runs = self.compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()

    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        array = np.ascontiguousarray(inputs.detach().to(torch.float32).numpy())
        return torch.from_numpy(self.compiled(array)[0])
