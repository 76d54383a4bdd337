"""The golden vectors of the original implementations (tests/data/golden): their weights, inputs and expectations.

Each golden folder holds `spec.json` (the weights to build), `inputs.npz`, `expected.npz` and, where needed,
`fixed.npz`. The weights are rebuilt here by the rule the goldens were made with (tests/data/README.md):
entry i of the spec is drawn from numpy's `default_rng([seed, i])` as float64 standard normals, shaped by its
kind, then cast once to its dtype. Nothing outside the repository is read.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

GOLDEN = Path(__file__).resolve().parent / "data" / "golden"


def _entry_values(entry: dict, index: int, seed: int, fixed: dict[str, np.ndarray]) -> np.ndarray:
    """One state-dict tensor of a golden spec, as the goldens' generator defines it."""
    name, shape, dtype, kind = entry["name"], tuple(entry["shape"]), np.dtype(entry["dtype"]), entry["kind"]
    if kind == "fixed":
        values = fixed[name]
        if values.shape != shape:
            raise ValueError(f"fixed array {name} has shape {values.shape}, the spec says {shape}")
        return values.astype(dtype)
    constants = {"zeros": 0.0, "int_zero": 0.0, "ones": 1.0}
    if kind in constants:
        return np.full(shape, constants[kind], np.float64).astype(dtype)
    z = np.asarray(np.random.default_rng([seed, index]).standard_normal(size=shape), np.float64)
    if kind == "normal":
        if "std" not in entry:
            raise ValueError(f"spec entry {name} has no std")  # every shipped normal entry carries its own
        values = z * float(entry["std"])
    elif kind == "bn_weight":
        values = 1.0 + 0.1 * z
    elif kind == "small":
        values = 0.1 * z
    elif kind == "running_var":
        values = 1.0 + 0.1 * np.abs(z)
    else:
        raise ValueError(f"spec entry {name} has an unknown kind {kind!r}")
    return values.astype(dtype)


def golden_arrays(folder: str, seed: int) -> dict[str, np.ndarray]:
    """The deterministic weights of golden/<folder> under the published checkpoint's key names, in spec order."""
    entries = json.loads((GOLDEN / folder / "spec.json").read_text())
    fixed_path = GOLDEN / folder / "fixed.npz"
    fixed = load_npz(folder, "fixed.npz") if fixed_path.exists() else {}
    return {entry["name"]: _entry_values(entry, index, seed, fixed) for index, entry in enumerate(entries)}


def golden_tensors(folder: str, seed: int) -> dict[str, torch.Tensor]:
    return {name: torch.from_numpy(array) for name, array in golden_arrays(folder, seed).items()}


def load_npz(folder: str, name: str) -> dict[str, np.ndarray]:
    with np.load(GOLDEN / folder / name) as npz:
        return {key: npz[key] for key in npz.files}
