"""Tile offsets and 64-bit pointer arithmetic."""

import pytest
import torch
import triton
import triton.language as tl

from tri_shared.offsets import block_offsets_1d, block_offsets_2d, tile_pointers, wide
from tri_shared.testing import poison, randn


@triton.jit
def _copy_tile_kernel(
    src_ptr, dst_ptr, m, n, stride_sm, stride_sn, stride_dm, BM: tl.constexpr, BN: tl.constexpr
):
    rows, cols, mask = block_offsets_2d(tl.program_id(0) * BM, tl.program_id(1) * BN, BM, BN, m, n)
    x = tl.load(tile_pointers(src_ptr, rows, cols, stride_sm, stride_sn), mask=mask)
    tl.store(tile_pointers(dst_ptr, rows, cols, stride_dm, 1), x, mask=mask)


@triton.jit
def _scale_1d_kernel(x_ptr, n, BLOCK: tl.constexpr):
    offs, mask = block_offsets_1d(tl.program_id(0), BLOCK, n)
    tl.store(x_ptr + offs, tl.load(x_ptr + offs, mask=mask) * 2.0, mask=mask)


@triton.jit
def _wide_product_kernel(out_ptr, a, b):
    tl.store(out_ptr, wide(a) * b)


@pytest.mark.parametrize(("m", "n"), [(1, 1), (17, 5), (33, 70)])
def test_2d_tile_copy_of_a_strided_view(device, m, n):
    base = randn((n, m + 3), seed=m + n, device=device)
    src = base[:, :m].t()  # non-contiguous: strides (1, m + 3)
    dst = poison(torch.empty(m, n, device=device))
    grid = (triton.cdiv(m, 16), triton.cdiv(n, 16))
    _copy_tile_kernel[grid](
        src, dst, m, n, src.stride(0), src.stride(1), dst.stride(0), BM=16, BN=16
    )
    assert torch.equal(dst, src)


def test_1d_blocks_stop_at_the_limit(device):
    x = randn((50,), seed=3, device=device)
    before = x.clone()
    _scale_1d_kernel[(triton.cdiv(50, 16),)](x, 50, BLOCK=16)
    assert torch.equal(x, before * 2)


def test_wide_does_not_overflow_int32(device):
    out = torch.zeros(1, dtype=torch.int64, device=device)
    a, b = 5000, 32 * 128 * 128  # slot * HV * K * V past 2**31
    _wide_product_kernel[(1,)](out, a, b)
    assert out.item() == a * b > 2**31
