"""The online-softmax helpers, through small kernels that use them, against torch."""

import pytest
import torch
import triton
import triton.language as tl

from tri_shared.softmax import (
    LN2,
    LOG2E,
    log2_sum_exp2,
    online_softmax_update,
    online_softmax_update_1d,
    online_softmax_update_scaled,
    safe_max_shift,
)
from tri_shared.testing import assert_close, poison, randn


@triton.jit
def _blockwise_lse_kernel(
    x_ptr, lse_ptr, n_rows, n_cols, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr
):
    """Natural log-sum-exp per row, folding BLOCK_C columns at a time (masked entries = -inf)."""
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    m_i = tl.full([BLOCK_R], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_R], tl.float32)
    for start in range(0, n_cols, BLOCK_C):
        cols = start + tl.arange(0, BLOCK_C)
        mask = (rows[:, None] < n_rows) & (cols[None, :] < n_cols)
        x = tl.load(x_ptr + rows[:, None] * n_cols + cols[None, :], mask=mask, other=float("-inf"))
        m_i, l_i, _, _ = online_softmax_update(m_i, l_i, x * LOG2E)
    tl.store(lse_ptr + rows, log2_sum_exp2(m_i, l_i) * LN2, mask=rows < n_rows)


@triton.jit
def _scaled_softmax_kernel(
    x_ptr, out_ptr, lse_ptr, scale, n_rows, n_cols, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr
):
    """softmax(x · scale) per row, through the scaled update: lse, then a second pass for the
    probabilities, both from the raw x."""
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    m_i = tl.full([BLOCK_R], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_R], tl.float32)
    for start in range(0, n_cols, BLOCK_C):
        cols = start + tl.arange(0, BLOCK_C)
        mask = (rows[:, None] < n_rows) & (cols[None, :] < n_cols)
        x = tl.load(x_ptr + rows[:, None] * n_cols + cols[None, :], mask=mask, other=float("-inf"))
        m_i, l_i, _, _ = online_softmax_update_scaled(m_i, l_i, x, scale * LOG2E)
    lse2 = log2_sum_exp2(m_i, l_i)
    tl.store(lse_ptr + rows, lse2 * LN2, mask=rows < n_rows)
    for start in range(0, n_cols, BLOCK_C):
        cols = start + tl.arange(0, BLOCK_C)
        mask = (rows[:, None] < n_rows) & (cols[None, :] < n_cols)
        x = tl.load(x_ptr + rows[:, None] * n_cols + cols[None, :], mask=mask, other=float("-inf"))
        p = tl.math.exp2(x * (scale * LOG2E) - safe_max_shift(lse2)[:, None])
        tl.store(out_ptr + rows[:, None] * n_cols + cols[None, :], p, mask=mask)


@triton.jit
def _column_lse_kernel(
    x_ptr, lse_ptr, n_rows, n_cols, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr
):
    """Natural log-sum-exp per column of a row-major [n_rows, n_cols] matrix: the softmax axis
    is 0 (AXIS=0 form), folding BLOCK_R rows at a time."""
    cols = tl.arange(0, BLOCK_C)
    m_i = tl.full([BLOCK_C], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_C], tl.float32)
    for start in range(0, n_rows, BLOCK_R):
        rows = start + tl.arange(0, BLOCK_R)
        mask = (rows[:, None] < n_rows) & (cols[None, :] < n_cols)
        x = tl.load(x_ptr + rows[:, None] * n_cols + cols[None, :], mask=mask, other=float("-inf"))
        m_i, l_i, _, _ = online_softmax_update(m_i, l_i, x * LOG2E, 0)
    tl.store(lse_ptr + cols, log2_sum_exp2(m_i, l_i) * LN2, mask=cols < n_cols)


@triton.jit
def _weighted_sum_1d_kernel(x_ptr, w_ptr, out_ptr, n, BLOCK: tl.constexpr):
    """softmax(x) · w for one row via the 1-D update, rescaling the accumulator by alpha."""
    m_i = float("-inf")
    l_i = 0.0
    acc = 0.0
    for start in range(0, n, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        x = tl.load(x_ptr + offs, mask=offs < n, other=float("-inf"))
        w = tl.load(w_ptr + offs, mask=offs < n, other=0.0)
        m_i, l_i, p, alpha = online_softmax_update_1d(m_i, l_i, x * LOG2E)
        acc = acc * alpha + tl.sum(p * w, 0)
    tl.store(out_ptr, acc / l_i)


@pytest.mark.parametrize(("rows", "cols", "block_c"), [(1, 1, 16), (5, 17, 16), (9, 300, 64)])
def test_blockwise_lse_matches_logsumexp(device, rows, cols, block_c):
    x = randn((rows, cols), seed=rows * cols, device=device, scale=4.0)
    lse = poison(torch.empty(rows, device=device))
    _blockwise_lse_kernel[(triton.cdiv(rows, 4),)](x, lse, rows, cols, BLOCK_R=4, BLOCK_C=block_c)
    assert_close(lse, torch.logsumexp(x.double(), -1), max_rel_err=1e-6, name="lse")


@pytest.mark.parametrize(("rows", "cols", "scale"), [(1, 1, 0.5), (5, 17, 0.125), (9, 300, 3.0)])
def test_scaled_update_matches_softmax_of_scaled_scores(device, rows, cols, scale):
    x = randn((rows, cols), seed=rows + cols, device=device, scale=4.0)
    # a fully masked row: lse -inf, probabilities 0, no NaN
    x[0, :] = float("-inf")
    out = poison(torch.empty(rows, cols, device=device))
    lse = poison(torch.empty(rows, device=device))
    _scaled_softmax_kernel[(triton.cdiv(rows, 4),)](
        x, out, lse, scale, rows, cols, BLOCK_R=4, BLOCK_C=16
    )
    ref = x.double() * scale
    assert torch.isneginf(lse[0]) and torch.all(out[0] == 0)
    if rows > 1:
        assert_close(lse[1:], torch.logsumexp(ref[1:], -1), max_rel_err=1e-6, name="lse")
        assert_close(out[1:], torch.softmax(ref[1:], -1), max_rel_err=1e-5, name="p")


@pytest.mark.parametrize(("rows", "cols"), [(1, 3), (37, 13)])
def test_column_form_matches_logsumexp_over_rows(device, rows, cols):
    x = randn((rows, cols), seed=rows + cols, device=device, scale=4.0)
    lse = poison(torch.empty(cols, device=device))
    _column_lse_kernel[(1,)](x, lse, rows, cols, BLOCK_R=8, BLOCK_C=16)
    assert_close(lse, torch.logsumexp(x.double(), 0), max_rel_err=1e-6, name="column lse")


def test_fully_masked_row_gives_minus_inf_not_nan(device):
    x = torch.full((3, 20), float("-inf"), device=device)
    x[1, 5] = 2.0
    lse = poison(torch.empty(3, device=device))
    _blockwise_lse_kernel[(1,)](x, lse, 3, 20, BLOCK_R=4, BLOCK_C=8)
    assert torch.isneginf(lse[0]) and torch.isneginf(lse[2])
    assert lse[1].item() == pytest.approx(2.0, abs=1e-6)


@pytest.mark.parametrize("n", [1, 7, 100, 257])
def test_1d_update_rescales_accumulator(device, n):
    x = randn((n,), seed=n, device=device, scale=10.0)
    w = randn((n,), seed=n + 1, device=device)
    out = poison(torch.empty(1, device=device))
    _weighted_sum_1d_kernel[(1,)](x, w, out, n, BLOCK=32)
    expected = (torch.softmax(x.double(), 0) * w.double()).sum().reshape(1)
    assert_close(out, expected, max_rel_err=1e-5)


def test_constants():
    assert LOG2E.value * LN2.value == pytest.approx(1.0, rel=1e-15)
