"""Reading published PyTorch checkpoints and checking that they fit a model, with one-line errors.

Every model loader (I3D, VGGish, PANNs) reads its file with `load_torch_file` and builds its model with
`build_loaded`, which calls `check_state_dict` before `load_state_dict(strict=True)`, so a wrong or damaged file
becomes one `MissingWeightsError` line that names the file and the offending keys instead of a multi-line
RuntimeError.

Memory: a file in torch's zip format is memory-mapped (its pages are the page cache's, read as the weights are
used), and the model is built on the meta device and handed the loaded tensors themselves, so the weights are in
memory once: building VGGish first and copying its 288 MB in made the run's peak 2 x 288 MB higher.
"""

from __future__ import annotations

import pickle
import re
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from torch import nn

from extract.errors import MissingWeightsError, listed

_LISTED_KEYS = 3  # keys named per problem kind; the rest are counted


def load_torch_file(path: str | Path) -> object:
    """`torch.load` on CPU with `weights_only=True`; a missing or unreadable file raises `MissingWeightsError`."""
    path = Path(path)
    if not path.is_file():
        raise MissingWeightsError(f"{path} does not exist")
    try:
        # mmap needs the zip format (torch >= 1.6); the published I3D and VGGish files predate it.
        return torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except Exception as exc:
        raise MissingWeightsError(f"{torch_load_failure(path, exc)}; download the published file again") from exc


# torch's weights-only unpickler names the global a pickle asks for in both of its refusals: "unsupported GLOBAL
# posix.system whose module posix is blocked" and "Unsupported global: GLOBAL __main__.X was not an allowed global".
_ASKED_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")


def torch_load_failure(path: Path, error: Exception) -> str:
    """Why torch.load(weights_only=True) gave up on `path`, as the start of a one-line message (every torch.load
    of img-vmr words it here): a pickle that asks for anything but tensors and plain containers (os.system, a
    class of its own) "was refused for safety", naming what it asks for; anything else "is not a readable PyTorch
    file", with why in a few words (not torch's advice to load untrusted code)."""
    text = str(error)
    asked = _ASKED_GLOBAL.search(text)
    if asked:
        return (f"{path} was refused for safety: it asks for {asked.group(1)}, and only tensors and plain "
                "containers are loaded")  # fmt: skip
    if "PytorchStreamReader" in text:  # the zip container is cut short or damaged
        reason = "truncated or damaged"
    elif isinstance(error, pickle.UnpicklingError | KeyError | EOFError | ValueError):
        reason = "another kind of file, or a damaged one"
    else:
        reason = next((line.strip() for line in text.splitlines() if line.strip()), type(error).__name__)
    return f"{path} is not a readable PyTorch file ({reason})"


def _shape(value: object) -> str:
    return str(tuple(value.shape)) if isinstance(value, torch.Tensor) else type(value).__name__


def _listed(keys: list[str]) -> str:
    return listed(keys, _LISTED_KEYS)


def check_state_dict(model: torch.nn.Module, state_dict: object, source: str) -> None:
    """Raise `MissingWeightsError` unless `state_dict` has exactly `model`'s keys with the same shapes.

    A missing `*.num_batches_tracked` is accepted: checkpoints written before PyTorch 0.4.1 have none, and
    BatchNorm fills the counter itself when the loaded dict carries no version metadata (a plain `dict`).
    """
    name = type(model).__name__
    if not isinstance(state_dict, Mapping):
        raise MissingWeightsError(
            f"{source} does not fit {name}: it holds a {type(state_dict).__name__}, not a state dict"
        )
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict and not k.endswith(".num_batches_tracked")]
    unexpected = [k for k in state_dict if k not in expected]
    wrong_shape = [
        f"{k} {_shape(v)} where the model has {tuple(expected[k].shape)}"
        for k, v in state_dict.items()
        if k in expected and _shape(v) != str(tuple(expected[k].shape))
    ]
    problems = [
        f"{label} {_listed(keys)}"
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape", wrong_shape))
        if keys
    ]
    if problems:
        raise MissingWeightsError(f"{source} does not fit {name}: " + "; ".join(problems))


def build_loaded(make: Callable[[], nn.Module], state_dict: object, source: str) -> nn.Module:
    """`make()` in eval mode holding `state_dict`'s own tensors (cast to the model's dtypes where they differ).

    The model is built on the meta device (no memory, no random initialisation) and checked against the dict
    first (`check_state_dict`). A plain-dict copy drops any version metadata, so BatchNorm fills the
    num_batches_tracked counters that files written before PyTorch 0.4.1 lack. Buffers that a module computes in
    its constructor rather than loads (non-persistent) would stay on the meta device: build those after.
    """
    with torch.device("meta"):
        model = make()
    check_state_dict(model, state_dict, source)
    assert isinstance(state_dict, Mapping)
    expected = model.state_dict()
    tensors = {
        key: value.to(expected[key].dtype) if value.dtype != expected[key].dtype else value
        for key, value in state_dict.items()
    }
    model.load_state_dict(tensors, strict=True, assign=True)
    return model.eval()
