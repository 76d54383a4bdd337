"""Pickles of numpy arrays read without running anything: an unpickler that builds numpy arrays, dicts, lists and
plain values and refuses every other class or function, and checks the size each array claims against the bytes
the pickle holds before numpy allocates it (a damaged or hostile header claiming terabytes is one line, not an
out-of-memory traceback). The feature import (extract/store/interop.py) and the Caffe2 checkpoints of SlowFast
(extract/models/slowfast.py) read theirs with it.
"""

from __future__ import annotations

import io
import math
import pickle
from pathlib import Path
from typing import Any

import numpy as np

# What numpy needs to rebuild arrays (numpy 1.x and 2.x module names), and nothing else.
_RECONSTRUCT = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct")}
_ALLOWED_GLOBALS = _RECONSTRUCT | {
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("collections", "OrderedDict"),
    ("_codecs", "encode"),  # how Python 3 writes bytes (an array's data) at pickle protocol 2
}


def byte_size(nbytes: int) -> str:
    """1536 -> '1.5 KiB': a byte count for a one-line message."""
    value, unit = float(nbytes), "bytes"
    for bigger in ("KiB", "MiB", "GiB", "TiB", "PiB", "EiB"):
        if value < 1024:
            break
        value, unit = value / 1024, bigger
    return f"{nbytes} bytes" if unit == "bytes" else f"{value:.1f} {unit}"


def claimed_bytes(shape: Any, dtype: np.dtype) -> int:
    """The bytes an array of `shape` and `dtype` takes (Python ints: no overflow); ValueError for a shape that is
    not a tuple of non-negative integers."""
    dims = (shape,) if isinstance(shape, int) else shape
    if not isinstance(dims, tuple | list) or not all(isinstance(n, int) and n >= 0 for n in dims):
        raise ValueError(f"shape {shape!r} is not a tuple of non-negative integers")
    return math.prod(dims) * dtype.itemsize


class SizeClaimError(pickle.UnpicklingError):
    """A pickled array claims a size its pickle does not hold."""


class _CheckedArray(np.ndarray):
    """What the unpickler builds arrays as: numpy's own __setstate__ after the state's shape is checked against its
    data (numpy computes the size in C, where a shape like (2**62, 2**62) overflows into a MemoryError)."""

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise pickle.UnpicklingError("an array's state is not numpy's")
        shape, dtype, _, data = state[-4:]
        if not isinstance(dtype, np.dtype):
            raise pickle.UnpicklingError(f"an array's dtype is {type(dtype).__name__}")
        claimed = claimed_bytes(shape, dtype)
        if isinstance(data, bytes | bytearray) and claimed != len(data):
            raise SizeClaimError(
                f"it claims a {tuple(shape)} {dtype} array ({byte_size(claimed)}) with {byte_size(len(data))} of data"
            )
        super().__setstate__(state)


class ArraysOnlyUnpickler(pickle.Unpickler):
    """Builds numpy arrays, dicts and plain values, nothing else; every array's claimed size is checked against
    the pickle's own length before numpy allocates it (its data can only come from the pickle itself)."""

    def __init__(self, data: bytes, encoding: str = "ASCII") -> None:
        super().__init__(io.BytesIO(data), encoding=encoding)
        self._file_bytes = len(data)
        self._budget = len(data)  # bytes the arrays built so far may still take

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _RECONSTRUCT:
            return self._reconstruct
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"it asks for {module}.{name}")

    def _reconstruct(self, subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
        if subtype is not np.ndarray:
            raise pickle.UnpicklingError(f"it asks for an array of type {getattr(subtype, '__name__', subtype)!r}")
        kind = np.dtype(dtype)
        claimed = claimed_bytes(shape, kind)
        if claimed > self._budget:
            file_bytes = byte_size(self._file_bytes)
            raise SizeClaimError(f"it claims a {shape} {kind} array ({byte_size(claimed)}) in a file of {file_bytes}")
        self._budget -= claimed
        return np.ndarray.__new__(_CheckedArray, shape, kind)


def unpickle_arrays(path: Path, encoding: str = "ASCII") -> Any:
    """What a pickle of numpy arrays in dicts, lists and plain values holds; a pickle that asks for any other class
    or function raises `pickle.UnpicklingError`. encoding="latin1" reads Python 2 pickles (Caffe2 checkpoints)."""
    return plain_arrays(ArraysOnlyUnpickler(Path(path).read_bytes(), encoding=encoding).load())


def plain_arrays(value: Any) -> Any:
    """`value` with every checked array inside dicts, lists and tuples seen as a plain numpy array."""
    if isinstance(value, np.ndarray):
        return value.view(np.ndarray)
    if isinstance(value, dict):
        return {k: plain_arrays(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(plain_arrays(v) for v in value)
    return value
