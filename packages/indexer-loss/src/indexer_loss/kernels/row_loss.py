"""The KL terms of the sparse indexer loss from a stored target ``p``, one program per row.

The Gluon forward (:mod:`indexer_loss.kernels.sparse_hopper`) computes only the target: it
stores ``p`` with -1 as a mark on the invalid entries, and this kernel adds the loss. Run
inside the matmul kernel, this per-row tail held the program's shared memory and registers
while it waited on loads; as a kernel of its own it runs at full occupancy and is bound by
memory bandwidth (index_score and p read once, q − p written once, in bf16 when
index_score is bf16).
"""

import triton
import triton.language as tl
from triton.language.extra import libdevice

from tri_shared.offsets import wide
from tri_shared.softmax import (
    LN2,
    LOG2E,
    log2_sum_exp2,
    online_softmax_update_1d,
    safe_max_shift,
)


@triton.jit
def natural_log(x, FAST: tl.constexpr):
    """``log(x)``. FAST: the hardware's approximate base-2 logarithm (one MUFU instruction,
    relative error about 2^-22) times ln 2, instead of libdevice's accurate polynomial (about
    twenty instructions), which left the loss kernel bound by instruction issue rather than
    by memory. The Triton interpreter has only the latter."""
    if FAST:
        y = libdevice.fast_logf(x)
    else:
        y = tl.log(x)
    return y


@triton.jit
def kl_terms(p, x, lse_x, valid, eps, FAST_LOG: tl.constexpr):
    """Per entry of a row: the KL term ``p (log(p + eps) − log(q + eps))`` (0 on invalid
    entries and where p = 0; eps guards the logarithms only) and ``q``, the softmax of the
    index scores ``x`` given their natural log-sum-exp ``lse_x``."""
    q = tl.math.exp2((x.to(tl.float32) - lse_x) * LOG2E)
    log_ratio = natural_log(p + eps, FAST_LOG) - natural_log(q + eps, FAST_LOG)
    terms = tl.where(valid & (p > 0.0), p * log_ratio, 0.0)
    return terms, q


@triton.jit
def sparse_row_loss_kernel(
    x_ptr,
    p_ptr,
    diff_ptr,
    loss_ptr,
    lse_ptr,
    nvalid_ptr,
    S,
    TOPK,
    eps,
    stride_xb,
    stride_xs,
    stride_xk,
    BLOCK_X: tl.constexpr,
    ONE_BLOCK: tl.constexpr,
    STORE_DIFF: tl.constexpr,
    FAST_LOG: tl.constexpr,
):
    """Loss of one row ``(b, t)``.

    ``p_ptr`` is a contiguous ``[rows, TOPK]`` fp32 buffer holding ``p`` on the valid entries
    and -1 on the others (the validity mark; a NaN in ``p`` stays a valid entry, so that it
    reaches the gradient as it does through the Triton kernel). Writes ``loss[row]``, the
    natural log-sum-exp of index_score over the valid entries ``lse[row]``, their count
    ``nvalid[row]`` and, for STORE_DIFF, ``q − p`` (0 on invalid entries) into the
    contiguous ``[rows, TOPK]`` buffer ``diff_ptr``, in its dtype.
    ONE_BLOCK: the row fits in one ``BLOCK_X`` block (otherwise two passes over it).
    FAST_LOG: see :func:`natural_log` (off in the interpreter).
    """
    row = tl.program_id(0)
    b = row // S
    t = row % S
    x_row = x_ptr + wide(b) * stride_xb + wide(t) * stride_xs
    p_row = p_ptr + wide(row) * TOPK
    diff_row = diff_ptr + wide(row) * TOPK

    if ONE_BLOCK:
        # The whole row at once (TOPK <= BLOCK_X): p and x are loaded together, both stay in
        # registers for the second half, and the program waits on one round trip to memory
        # (the x load does not wait for p's validity marks).
        offs = tl.arange(0, BLOCK_X)
        inb = offs < TOPK
        p = tl.load(p_row + offs, mask=inb, other=-1.0)
        x = tl.load(x_row + wide(offs) * stride_xk, mask=inb, other=0.0).to(tl.float32)
        valid = p != -1.0
        z = tl.where(valid, x * LOG2E, float("-inf"))
        m_x = tl.max(z, axis=0)
        l_x = tl.sum(tl.math.exp2(z - safe_max_shift(m_x)), axis=0)
        lse_x = log2_sum_exp2(m_x, l_x) * LN2
        n_x = tl.sum(valid.to(tl.int32), axis=0)
        kl, q = kl_terms(p, x, lse_x, valid, eps, FAST_LOG)
        if STORE_DIFF:
            # the gradient's direction, so the backward is one multiply per entry
            tl.store(diff_row + offs, tl.where(valid, q - p, 0.0), mask=inb)
    else:
        # softmax statistics of index_score over the valid entries, then the KL terms
        m_x = tl.max(tl.full([BLOCK_X], float("-inf"), tl.float32), axis=0)
        l_x = tl.sum(tl.zeros([BLOCK_X], tl.float32), axis=0)
        n_x = tl.sum(tl.zeros([BLOCK_X], tl.int32), axis=0)
        for k0 in tl.range(0, TOPK, BLOCK_X):
            offs = k0 + tl.arange(0, BLOCK_X)
            valid = tl.load(p_row + offs, mask=offs < TOPK, other=-1.0) != -1.0
            x = tl.load(x_row + wide(offs) * stride_xk, mask=valid, other=float("-inf"))
            m_x, l_x, _, _ = online_softmax_update_1d(m_x, l_x, x.to(tl.float32) * LOG2E)
            n_x += tl.sum(valid.to(tl.int32), axis=0)
        lse_x = log2_sum_exp2(m_x, l_x) * LN2
        kl = tl.zeros([BLOCK_X], tl.float32)
        for k0 in tl.range(0, TOPK, BLOCK_X):
            offs = k0 + tl.arange(0, BLOCK_X)
            inb = offs < TOPK
            p = tl.load(p_row + offs, mask=inb, other=-1.0)
            valid = p != -1.0
            x = tl.load(x_row + wide(offs) * stride_xk, mask=valid, other=0.0)
            terms, q = kl_terms(p, x, lse_x, valid, eps, FAST_LOG)
            kl += terms
            if STORE_DIFF:
                tl.store(diff_row + offs, tl.where(valid, q - p, 0.0), mask=inb)
    tl.store(loss_ptr + row, tl.sum(kl, axis=0))
    tl.store(lse_ptr + row, lse_x)
    tl.store(nvalid_ptr + row, n_x)
