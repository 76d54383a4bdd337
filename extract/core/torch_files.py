"""PyTorch files read safely, and whether a state dict fits a model: the one way every loader does both.

`read_torch_file` is `torch.load(weights_only=True)` on the CPU (never arbitrary pickled code) with a one-line
error that says what the file looks like (an HDF5 store or a JSON file passed by mistake, objects that are not
loaded, a truncated or damaged archive) and what was expected. `check_fits` runs before
`load_state_dict(strict=True)`: missing, unexpected and mis-shaped keys become one line naming the source
instead of a multi-line RuntimeError. The feature models (I3D, VGGish, PANNs) and the IMG checkpoints use both.
"""

from __future__ import annotations

import pickle
import re
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path

import torch

from extract.core.errors import listed

LISTED_KEYS = 3  # keys named per problem kind; the rest are counted
# What files passed by mistake start with (the feature and text stores are HDF5; PyTorch files are zip archives).
FILE_SIGNATURES = {b"\x89HDF\r\n\x1a\n": "an HDF5 file (a feature or text store?)", b"{": "a JSON file"}

ErrorType = Callable[[str], Exception]


def read_torch_file(path: str | Path, expected: str, error: ErrorType) -> object:
    """What a PyTorch file holds, read with weights_only=True onto the CPU; `error(message)` (one line saying what
    the file looks like and that `expected` was expected) when it is missing or not a readable PyTorch file."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{path} does not exist")
    with path.open("rb") as handle:
        head = handle.read(8)
    kind = next((name for signature, name in FILE_SIGNATURES.items() if head.startswith(signature)), None)
    if kind is not None:
        raise error(f"{path} is {kind}, not a PyTorch file; expected {expected}")
    try:
        # Memory-mapped where the file is in torch's zip format (torch >= 1.6; the published I3D and VGGish files
        # predate it): its pages are the page cache's, read as the weights are used.
        return torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except Exception as exc:
        raise error(f"{torch_load_failure(path, exc)}; expected {expected}") from None


def read_state_dict(path: str | Path, expected: str, error: ErrorType) -> Mapping[str, torch.Tensor]:
    """read_torch_file of a file that must hold a mapping (a state dict, or a dict of entries)."""
    state = read_torch_file(path, expected, error)
    if not isinstance(state, Mapping):
        raise error(f"{path} holds a {type(state).__name__}, not a state dict; expected {expected}")
    return state


# torch's weights-only unpickler names the global a pickle asks for in both of its refusals: "unsupported GLOBAL
# posix.system whose module posix is blocked" and "Unsupported global: GLOBAL __main__.X was not an allowed global".
_ASKED_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")


def torch_load_failure(path: str | Path, error: Exception) -> str:
    """Why torch.load(weights_only=True) gave up on `path`, as the start of a one-line message (every torch.load
    of img-vmr words it here): a pickle that asks for anything but tensors and plain containers (os.system, a
    class of its own) "was refused for safety", naming what it asks for; anything else "is not a readable PyTorch
    file", with why in a few words (not torch's advice to load untrusted code)."""
    text = str(error)
    asked = _ASKED_GLOBAL.search(text)
    if asked:
        return (
            f"{path} was refused for safety: it asks for {asked.group(1)}, and only tensors and plain containers "
            "are loaded"
        )
    if "PytorchStreamReader" in text:  # the zip container is cut short or damaged
        reason = "truncated or damaged"
    elif isinstance(error, pickle.UnpicklingError | KeyError | EOFError | ValueError):
        reason = "another kind of file, or a damaged one"
    else:
        reason = next((line.strip() for line in text.splitlines() if line.strip()), type(error).__name__)
    return f"{path} is not a readable PyTorch file ({reason})"


def _shape(value: object) -> str:
    return str(tuple(value.shape)) if isinstance(value, torch.Tensor) else type(value).__name__


def check_fits(
    model: torch.nn.Module,
    state_dict: object,
    source: str,
    error: ErrorType,
    optional: Callable[[str], bool] = lambda key: False,
) -> Mapping[str, torch.Tensor]:
    """`state_dict` when it has exactly `model`'s keys with the same shapes, else `error` (one line naming
    `source`, the missing, unexpected and mis-shaped keys). Keys for which `optional(key)` holds may be missing."""
    name = type(model).__name__
    if not isinstance(state_dict, Mapping):
        raise error(f"{source} does not fit {name}: it holds a {type(state_dict).__name__}, not a state dict")
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict and not optional(k)]
    unexpected = [k for k in state_dict if k not in expected]
    wrong_shape = [
        f"{k} {_shape(v)} where the model has {tuple(expected[k].shape)}"
        for k, v in state_dict.items()
        if k in expected and _shape(v) != str(tuple(expected[k].shape))
    ]
    misfit = misfit_message(source, name, missing, unexpected, wrong_shape)
    if misfit:
        raise error(misfit)
    return state_dict


def misfit_message(source: str, name: str, missing: list[str], unexpected: list[str], wrong_shape: list[str]) -> str:
    """The one line saying how the weights of `source` do not fit the network `name` (the first LISTED_KEYS
    names of each problem kind, the rest counted), or "" when nothing is missing, unexpected or mis-shaped."""
    problems = [
        f"{label} {listed(keys, LISTED_KEYS)}"
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape", wrong_shape))
        if keys
    ]
    return f"{source} does not fit {name}: " + "; ".join(problems) if problems else ""


def batch_norm_counter(key: str) -> bool:
    """A BatchNorm's `num_batches_tracked`: checkpoints written before PyTorch 0.4.1 have none, and BatchNorm fills
    the counter itself when the loaded dict carries no version metadata (a plain `dict`)."""
    return key.endswith(".num_batches_tracked")
