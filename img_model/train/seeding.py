"""Seeding every random number generator of a training run, and capturing and restoring their states, so that
`img-train --resume` continues bit for bit (the states travel in last.pt, img_model/checkpoint.py)."""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch


def rng_state(device: torch.device | None = None) -> dict[str, Any]:
    """Every global generator's state (Python, numpy, torch CPU and CUDA), in types torch.load(weights_only) reads;
    `device`: the GPU the run draws on, recorded so that a resume on another GPU index draws the same."""
    kind, keys, position, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
        if device is not None and device.type == "cuda":
            state["cuda_device"] = device.index or 0
    return state


def set_rng_state(state: Mapping[str, Any], device: torch.device | None = None) -> None:
    """Restore `rng_state`'s generators; `device`: the GPU this run draws on takes the state of the one the saved
    run drew on (each process of a distributed run draws on its own GPU, in step with rank 0's)."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        for index, cuda_state in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state, index)
        if device is not None and device.type == "cuda" and "cuda_device" in state:
            torch.cuda.set_rng_state(state["cuda"][state["cuda_device"]], device)


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (CPU and every GPU). `seed=0` is seed 0 (the authors' code skips 0, §7.16)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
