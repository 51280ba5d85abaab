"""Input checks: every failure names the argument, the expectation and what came."""

import pytest
import torch

from tri_shared.checks import (
    check_choice,
    check_int,
    check_int_tensor,
    check_multiple,
    check_positive,
    check_same_device,
    check_same_dtype,
    check_tensor,
)


def test_check_tensor_passes_and_returns_the_same_object():
    t = torch.zeros(2, 3)
    assert check_tensor("x", t, shape=(2, None), ndim=2, dtypes=[torch.float32], device="cpu") is t


@pytest.mark.parametrize(
    ("kwargs", "exc", "pattern"),
    [
        ({"shape": (3, 3)}, ValueError, r"state: expected shape \[3, 3\], got \[2, 3\]"),
        ({"ndim": (3, 4)}, ValueError, r"state: expected 3 or 4 dimensions, got 2"),
        ({"dtypes": [torch.int32]}, TypeError, r"state: expected dtype in \(int32\), got float32"),
        ({"device": "meta"}, ValueError, r"state: expected a tensor on meta, got one on cpu"),
    ],
)
def test_check_tensor_messages(kwargs, exc, pattern):
    with pytest.raises(exc, match=pattern):
        check_tensor("state", torch.zeros(2, 3), **kwargs)


def test_non_contiguous_is_refused_not_copied():
    t = torch.zeros(4, 4).t()
    with pytest.raises(ValueError, match="pool: expected a contiguous tensor"):
        check_tensor("pool", t, contiguous=True)


def test_not_a_tensor():
    with pytest.raises(TypeError, match=r"q: expected a torch\.Tensor, got list"):
        check_tensor("q", [1, 2])


def test_same_device_and_dtype():
    a, b = torch.zeros(1), torch.zeros(1, device="meta")
    with pytest.raises(ValueError, match=r"k: expected a tensor on cpu .*q.*got one on meta"):
        check_same_device(q=a, k=b)
    assert check_same_device(q=a, k=None, v=torch.ones(2)) == torch.device("cpu")
    with pytest.raises(TypeError, match=r"v: expected dtype float32 .*q.*got float16"):
        check_same_dtype(q=a, v=torch.zeros(1, dtype=torch.float16))


def test_scalar_checks():
    with pytest.raises(TypeError, match=r"indices: expected dtype in \(int32, int64\)"):
        check_int_tensor("indices", torch.zeros(3))
    with pytest.raises(ValueError, match="scale: expected a value > 0, got 0"):
        check_positive("scale", 0)
    check_positive("p", 0.0, allow_zero=True)
    with pytest.raises(TypeError, match="scale: expected a number, got str"):
        check_positive("scale", "1")
    with pytest.raises(ValueError, match="chunk_offset: expected a value >= 0, got -1"):
        check_int("chunk_offset", -1, min_value=0)
    with pytest.raises(TypeError, match="chunk_offset: expected an int, got bool"):
        check_int("chunk_offset", True)
    with pytest.raises(ValueError, match="reduction: expected one of 'none', 'sum', got 'avg'"):
        check_choice("reduction", "avg", ["none", "sum"])
    with pytest.raises(ValueError, match="HV: expected a multiple of H = 16, got 24"):
        check_multiple("HV", 24, "H", 16)
