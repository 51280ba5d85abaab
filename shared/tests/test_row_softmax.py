"""tri-shared's own kernel, built from the helpers, against torch.softmax."""

import pytest
import torch

from tri_shared import row_softmax
from tri_shared.testing import assert_close, randn


@pytest.mark.parametrize(
    ("shape", "dtype", "limit"),
    [
        ((1, 1), torch.float32, 1e-6),
        ((3, 17), torch.float16, 2e-3),
        ((2, 5, 1023), torch.float32, 1e-5),
        ((7, 2500), torch.float32, 1e-5),
    ],
)
def test_matches_torch_softmax(device, shape, dtype, limit):
    x = randn(shape, seed=sum(shape), device=device, dtype=dtype, scale=5.0)
    out = row_softmax(x)
    assert out.dtype == dtype and out.shape == x.shape
    assert_close(out, torch.softmax(x.double(), -1), max_rel_err=limit)


@pytest.mark.gpu
def test_bf16_large(device):
    x = randn((4096, 50000), seed=0, device=device, dtype=torch.bfloat16, scale=3.0)
    assert_close(row_softmax(x), torch.softmax(x.double(), -1), max_rel_err=1e-2)


def test_non_contiguous_input_and_empty(device):
    x = randn((40, 30), seed=1, device=device)[:, ::2]
    assert_close(row_softmax(x), torch.softmax(x.double(), -1), max_rel_err=1e-5)
    assert row_softmax(torch.empty(0, 5, device=device)).shape == (0, 5)


def test_bad_input():
    with pytest.raises(TypeError, match="x: expected dtype"):
        row_softmax(torch.zeros(3, dtype=torch.int32))
    with pytest.raises(ValueError, match="x: expected at least 1 dimension"):
        row_softmax(torch.tensor(1.0))
