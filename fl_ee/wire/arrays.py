"""Flower Arrays as NumPy arrays and torch tensors, without parsing each one's ``.npy`` header.

A Flower ``Array`` keeps a NumPy array as the bytes of a ``.npy`` file, and
``Array.numpy()`` reads them back with ``np.load``, which parses the file's header with
``ast.literal_eval``: about 50 µs an array, 1.6 ms for the 32 tensors of the default
``cnn``, paid on the client for the model it receives and on the server for each update.
The ``Array`` also holds the dtype and shape, so the data are the last ``nbytes`` of its
bytes: :func:`as_numpy` reads them from there, and takes ``Array.numpy()`` where that is not
so (an array stored in Fortran order, a dtype NumPy cannot rebuild from its name).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from flwr.app import Array, ArrayRecord

_C_ORDER = b"'fortran_order': False"  # in the header of every .npy file np.save writes in C order


def as_numpy(array: Array) -> np.ndarray:
    """``array.numpy()``: the same values, dtype and shape, writable and owning its memory."""
    try:
        dtype = np.dtype(array.dtype)
    except TypeError:
        return array.numpy()
    data = array.data
    offset = len(data) - dtype.itemsize * math.prod(array.shape)
    if dtype.hasobject or offset <= 0 or _C_ORDER not in data[:offset]:
        return array.numpy()
    return np.frombuffer(data, dtype=dtype, offset=offset).reshape(array.shape).copy()


def torch_state(record: ArrayRecord) -> dict[str, torch.Tensor]:
    """``record.to_torch_state_dict()`` through :func:`as_numpy`."""
    return {key: torch.from_numpy(as_numpy(array)) for key, array in record.items()}
