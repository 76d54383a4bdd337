"""Versions of the software that produced a stored feature (the `software` part of provenance)."""

from __future__ import annotations

from importlib import metadata
from typing import Any

from extract import __version__


def software_versions(*libraries: str) -> dict[str, Any]:
    """img-vmr's, numpy's, torch's and HDF5's versions, and those of the installed `libraries` that computed the
    features (e.g. transformers for text encoders), read from their metadata rather than by importing them."""
    import h5py
    import numpy
    import torch

    return {
        "img_vmr": __version__,
        "numpy": numpy.__version__,
        "torch": torch.__version__,
        **{library: metadata.version(library) for library in libraries},
        "h5py": h5py.version.version,
        "hdf5": h5py.version.hdf5_version,
    }
