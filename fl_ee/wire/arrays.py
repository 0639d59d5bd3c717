"""Flower Arrays from and to NumPy arrays and torch tensors, without writing or parsing each ``.npy`` header.

A Flower ``Array`` keeps a NumPy array as the bytes of a ``.npy`` file. ``Array.numpy()``
reads them back with ``np.load``, which parses the file's header with ``ast.literal_eval``,
and ``Array(ndarray)`` writes them with ``np.save``, which builds the header anew: 25-50 µs
an array each way, about 1.5 ms for the 32 tensors of the default ``cnn``, paid on the
client for the model it receives and the one it sends, and on the server for each update.

* :func:`as_numpy`: the ``Array`` holds the dtype and shape, so the data are the last
  ``nbytes`` of its bytes; it reads them from there, and takes ``Array.numpy()`` where that
  is not so (an array stored in Fortran order, a dtype NumPy cannot rebuild from its name).
* :func:`as_array`: the header of a C-ordered array depends only on its dtype and shape;
  ``np.save`` writes it once per dtype and shape, and each array gets those header bytes
  and its own data: the same bytes ``np.save`` writes.
"""

from __future__ import annotations

import functools
import io
import math
from collections.abc import Mapping

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


@functools.lru_cache(maxsize=4096)
def _header(dtype: np.dtype, shape: tuple[int, ...]) -> bytes:
    """The ``.npy`` header ``np.save`` writes for a C-ordered array of ``dtype`` and ``shape``."""
    buffer = io.BytesIO()
    np.save(buffer, np.zeros(shape, dtype=dtype), allow_pickle=False)
    return buffer.getvalue()[: buffer.tell() - dtype.itemsize * math.prod(shape)]


def as_array(ndarray: np.ndarray) -> Array:
    """``Array(ndarray)``: the same ``Array``, byte for byte."""
    if ndarray.dtype.hasobject or not ndarray.flags.c_contiguous:
        return Array(ndarray)
    return Array(dtype=str(ndarray.dtype), shape=tuple(ndarray.shape), stype="numpy.ndarray",
                 data=_header(ndarray.dtype, ndarray.shape) + ndarray.tobytes())


def as_record(arrays: Mapping[str, np.ndarray | torch.Tensor]) -> ArrayRecord:
    """Named arrays or tensors as an ``ArrayRecord`` (order kept) through :func:`as_array`; 0-d arrays stay 0-d."""
    return ArrayRecord({key: as_array(np.require(value.detach().cpu().numpy() if isinstance(value, torch.Tensor)
                                                 else value, requirements="C"))
                        for key, value in arrays.items()})
