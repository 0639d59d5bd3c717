"""``fl_ee.wire.arrays``: Flower Arrays written and read without np.save/np.load, byte for byte the same."""

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fl_ee.wire.arrays import as_array, as_numpy, as_record, load_into, torch_state

DTYPES = st.sampled_from(["float32", "float64", "float16", "int64", "int8", "uint8", "bool", ">f4", "<i2", "complex64"])
ARRAYS = DTYPES.flatmap(lambda dtype: hnp.arrays(dtype, hnp.array_shapes(min_dims=0, max_dims=4, min_side=0,
                                                                          max_side=5)))


def _same_array(a: Array, b: Array) -> bool:
    return (a.dtype, list(a.shape), a.stype, a.data) == (b.dtype, list(b.shape), b.stype, b.data)


@pytest.mark.e2e
@settings(max_examples=200, deadline=None)
@given(ARRAYS, st.booleans())
def test_as_array_writes_what_np_save_writes_and_as_numpy_reads_what_np_load_reads(x, fortran):
    x = np.asfortranarray(x) if fortran else x
    assert _same_array(as_array(x), Array(x))
    stored = Array(x)  # as Flower writes it (Fortran order kept where np.save keeps it)
    got, want = as_numpy(stored), stored.numpy()
    assert got.dtype == want.dtype and got.shape == want.shape
    assert np.array_equal(got, want, equal_nan=True) and got.flags.writeable


def test_a_read_array_owns_its_memory_and_a_strided_one_is_written_in_c_order():
    stored = Array(np.arange(6, dtype=np.float32).reshape(2, 3))
    got = as_numpy(stored)
    got[0, 0] = 99.0  # writable, and the stored bytes stay as they were
    assert stored.numpy()[0, 0] == 0.0 and got.flags.owndata
    strided = np.arange(10.0)[::2]
    assert _same_array(as_array(strided), Array(strided)) and list(as_numpy(as_array(strided))) == [0, 2, 4, 6, 8]


def test_a_state_dict_round_trips_as_flowers_own_record():
    state = {"w": torch.arange(12, dtype=torch.float32).reshape(3, 4), "steps": torch.tensor(5)}
    record, flower = as_record(state), ArrayRecord(state)
    assert list(record) == ["w", "steps"] and all(_same_array(record[k], flower[k]) for k in state)
    back = torch_state(record)
    assert all(torch.equal(back[k], state[k]) and back[k].dtype == state[k].dtype for k in state)
    assert back["steps"].shape == ()  # 0-d stays 0-d


def test_load_into_loads_what_a_strict_load_state_dict_loads_and_refuses_what_it_refuses():
    torch.manual_seed(0)
    net, want = (torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2)) for _ in range(2))
    received = {key: (torch.randn(value.shape, dtype=torch.float64) if value.is_floating_point()  # cast as copy_ does
                      else torch.tensor(7)) for key, value in net.state_dict().items()}
    want.load_state_dict(received)
    load_into(net.state_dict(keep_vars=True), as_record(received))
    assert all(torch.equal(got, wanted) and got.dtype == wanted.dtype
               for got, wanted in zip(net.state_dict().values(), want.state_dict().values(), strict=True))
    assert net[0].weight.requires_grad  # loaded in place: the same parameters
    tensors = net.state_dict(keep_vars=True)
    with pytest.raises(RuntimeError, match=r"missing \['1.bias'\], unexpected \['extra'\]"):
        load_into(tensors, as_record({**{k: v for k, v in received.items() if k != "1.bias"}, "extra": torch.zeros(1)}))
    with pytest.raises(RuntimeError, match=r"received 0.bias of shape \(3,\)"):
        load_into(tensors, as_record({**received, "0.bias": torch.zeros(3)}))
