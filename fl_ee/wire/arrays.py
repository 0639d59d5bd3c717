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
* :func:`load_into`: a received record straight into a module's own tensors, one copy each
  (a client's kept submodel), checked as a strict ``load_state_dict`` checks it.
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


def _values(array: Array) -> np.ndarray | None:
    """The values of ``array`` as a read-only view of its bytes; ``None`` where only ``array.numpy()`` reads them.

    The data are the last ``nbytes`` of the bytes; an array stored in Fortran order, or of
    a dtype NumPy cannot rebuild from its name, is left to Flower.
    """
    try:
        dtype = np.dtype(array.dtype)
    except TypeError:
        return None
    data = array.data
    offset = len(data) - dtype.itemsize * math.prod(array.shape)
    if dtype.hasobject or offset <= 0 or _C_ORDER not in data[:offset]:
        return None
    return np.frombuffer(data, dtype=dtype, offset=offset).reshape(array.shape)


def as_numpy(array: Array) -> np.ndarray:
    """``array.numpy()``: the same values, dtype and shape, writable and owning its memory."""
    values = _values(array)
    return array.numpy() if values is None else values.copy()


def torch_state(record: ArrayRecord) -> dict[str, torch.Tensor]:
    """``record.to_torch_state_dict()`` through :func:`as_numpy`."""
    return {key: torch.from_numpy(as_numpy(array)) for key, array in record.items()}


def load_into(tensors: Mapping[str, torch.Tensor], record: ArrayRecord) -> None:
    """``module.load_state_dict(torch_state(record))`` for ``tensors = module.state_dict(keep_vars=True)``.

    As strict, with the same values: every key of the module, no other, each of its tensor's
    shape; each array's values are copied once, straight from its bytes into the tensor,
    with no tensor made in between (``load_state_dict``'s own checks cost as much as the copies).
    """
    if record.keys() != tensors.keys():
        missing, unexpected = sorted(tensors.keys() - record.keys()), sorted(record.keys() - tensors.keys())
        raise RuntimeError(f"received state does not fit the model: missing {missing}, unexpected {unexpected}")
    with torch.no_grad():
        for key, array in record.items():
            target = tensors[key].detach()
            values = _values(array)
            values = array.numpy() if values is None else values
            if values.shape != tuple(target.shape):
                raise RuntimeError(f"received {key} of shape {values.shape} for the model's {tuple(target.shape)}")
            if target.device.type == "cpu":
                np.copyto(target.numpy(), values, casting="unsafe")
            else:
                target.copy_(torch.from_numpy(values.copy()))


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
                 data=b"".join((_header(ndarray.dtype, ndarray.shape), ndarray.data)))


def as_record(arrays: Mapping[str, np.ndarray | torch.Tensor]) -> ArrayRecord:
    """Named arrays or tensors as an ``ArrayRecord`` (order kept) through :func:`as_array`; 0-d arrays stay 0-d.

    The record takes each ``Array`` as it is (``ArrayRecord(dict)`` would build each anew).
    """
    record = ArrayRecord()
    for key, value in arrays.items():
        record[key] = as_array(np.require(value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else value,
                                          requirements="C"))
    return record
