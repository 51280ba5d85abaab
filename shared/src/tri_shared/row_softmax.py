"""Row softmax over the last dimension, built from the shared helpers.

It is the smallest kernel that exercises them together (online softmax in base 2, 2-D
offsets with 64-bit row strides, grid checks, input checks) and the demo's example when no
operator package is installed. Rows of any length: columns are streamed in blocks, two
passes (statistics, then normalised output).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .checks import check_tensor
from .launch import make_grid, next_power_of_2
from .offsets import block_offsets_2d, tile_pointers
from .softmax import LOG2E, online_softmax_update, safe_max_shift

_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@triton.jit
def _row_softmax_kernel(
    x_ptr,
    out_ptr,
    n_rows,
    n_cols,
    stride_xr,
    stride_or,
    BLOCK_R: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    row_start = tl.program_id(0) * BLOCK_R
    m_i = tl.full([BLOCK_R], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_R], tl.float32)
    for col_start in range(0, n_cols, BLOCK_C):
        rows, cols, mask = block_offsets_2d(row_start, col_start, BLOCK_R, BLOCK_C, n_rows, n_cols)
        x = tl.load(tile_pointers(x_ptr, rows, cols, stride_xr, 1), mask=mask, other=float("-inf"))
        m_i, l_i, _, _ = online_softmax_update(m_i, l_i, x.to(tl.float32) * LOG2E)
    for col_start in range(0, n_cols, BLOCK_C):
        rows, cols, mask = block_offsets_2d(row_start, col_start, BLOCK_R, BLOCK_C, n_rows, n_cols)
        x = tl.load(tile_pointers(x_ptr, rows, cols, stride_xr, 1), mask=mask, other=float("-inf"))
        p = tl.math.exp2(x.to(tl.float32) * LOG2E - safe_max_shift(m_i)[:, None]) / l_i[:, None]
        tl.store(
            tile_pointers(out_ptr, rows, cols, stride_or, 1),
            p.to(out_ptr.dtype.element_ty),
            mask=mask,
        )


def row_softmax(x: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dimension of ``x`` (fp32/fp16/bf16, any leading shape), computed
    in fp32 and returned in ``x``'s dtype. Equals ``torch.softmax(x, -1)``."""
    check_tensor("x", x, dtypes=_DTYPES)
    if x.dim() == 0:
        raise ValueError("x: expected at least 1 dimension, got a 0-d tensor")
    n_cols = x.shape[-1]
    x2 = x.reshape(-1, n_cols) if n_cols > 0 else x.reshape(-1, 0)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()  # read-only input: a copy loses nothing
    out = torch.empty(x2.shape, dtype=x.dtype, device=x.device)
    n_rows = x2.shape[0]
    if n_rows == 0 or n_cols == 0:
        return out.reshape(x.shape)
    block_c = min(1024, next_power_of_2(n_cols))
    block_r = max(1, min(16, 4096 // block_c))
    grid = make_grid(triton.cdiv(n_rows, block_r))
    _row_softmax_kernel[grid](
        x2, out, n_rows, n_cols, x2.stride(0), out.stride(0), BLOCK_R=block_r, BLOCK_C=block_c
    )
    return out.reshape(x.shape)
