"""The shared golden vectors (../shared/golden): weights rebuilt by make_weights.py, inputs and expectations."""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import numpy as np
import torch

SHARED = Path(__file__).resolve().parents[2] / "shared"
GOLDEN = SHARED / "golden"


@functools.cache
def _make_weights():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("make_weights", GOLDEN / "make_weights.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def golden_arrays(folder: str, seed: int) -> dict[str, np.ndarray]:
    """The deterministic weights of golden/<folder> under the published checkpoint's key names."""
    make_weights = _make_weights()
    entries, _ = make_weights.load_spec(GOLDEN / folder / "spec.json")
    fixed_path = GOLDEN / folder / "fixed.npz"
    fixed = make_weights.load_fixed(fixed_path if fixed_path.exists() else None)
    return make_weights.make_weights(entries, seed=seed, fixed=fixed)


def golden_tensors(folder: str, seed: int) -> dict[str, torch.Tensor]:
    return {name: torch.from_numpy(array) for name, array in golden_arrays(folder, seed).items()}


def load_npz(folder: str, name: str) -> dict[str, np.ndarray]:
    with np.load(GOLDEN / folder / name) as npz:
        return {key: npz[key] for key in npz.files}
