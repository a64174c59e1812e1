"""Arrays in the store are .npy bytes: exact round trips, and never a pickle."""

import io
import pickle

import numpy as np
import pytest

from workbench.store.types import array_from_bytes, array_to_bytes

ARRAYS = [
    np.arange(12.0).reshape(3, 4),
    np.asfortranarray(np.arange(6.0).reshape(3, 2)),
    np.array(3.5),
    np.zeros((0, 3)),
    np.arange(5, dtype=np.int32),
    np.arange(10.0)[::2],
    np.array([1 + 2j], dtype=np.complex64),
]


@pytest.mark.parametrize("array", ARRAYS, ids=lambda a: f"{a.dtype}{a.shape}")
def test_round_trip_is_exact_and_writable(array):
    back = array_from_bytes(array_to_bytes(array))
    assert back.dtype == array.dtype and back.shape == array.shape
    np.testing.assert_array_equal(back, array)
    back[...] = 0  # a private, writable copy


def test_object_arrays_and_pickles_are_refused():
    buffer = io.BytesIO()
    np.save(buffer, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="object array"):
        array_from_bytes(buffer.getvalue())
    with pytest.raises(ValueError, match="not a .npy"):
        array_from_bytes(pickle.dumps(np.zeros(3)))


def test_several_arrays_in_one_payload():
    from workbench.store.types import arrays_from_bytes, arrays_to_bytes

    arrays = {"index": np.arange(6, dtype=np.int64).reshape(2, 3), "vector": np.asfortranarray(np.ones((3, 2))),
              "empty": np.zeros((0, 3)), "scalar": np.array(2.5, dtype=np.float32)}
    back = arrays_from_bytes(arrays_to_bytes(arrays))
    assert list(back) == list(arrays)
    for name, array in arrays.items():
        assert back[name].dtype == array.dtype and back[name].shape == array.shape
        np.testing.assert_array_equal(back[name], array)
