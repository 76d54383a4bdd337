"""Versions of the software that produced a stored feature (the `software` part of provenance)."""

from __future__ import annotations

from typing import Any

from extract import __version__


def software_versions() -> dict[str, Any]:
    import h5py
    import numpy
    import torch
    import transformers

    return {
        "img_vmr": __version__,
        "numpy": numpy.__version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "h5py": h5py.version.version,
        "hdf5": h5py.version.hdf5_version,
    }
