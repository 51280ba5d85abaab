"""The fused sparse indexer-loss forward: sparse top-k attention target and KL in one kernel.

One program per query row ``(b, t)``. Key rows are gathered by index straight from ``key``
(pointer arithmetic on the loaded indices, never a gathered copy). Three sweeps over the
row's top-k entries, in blocks of ``BLOCK_K``:

0. the softmax statistics of ``index_score`` over the valid entries (cheap, no matmul,
   in wide ``BLOCK_X`` blocks);
1. per head block: ``s = scale · Q_h · K_jᵀ`` with ``tl.dot`` (D looped in ``BLOCK_D``
   chunks), online max/sum per head → per-head base-2 log-sum-exp;
2. recompute ``s``, ``P = exp2(s − lse_h)``, sum over heads into ``p`` (registers, one
   top-k block at a time), store ``p`` when the backward needs it, and add the KL terms.

Each sweep picks the matmul orientation that keeps its reduction inside a warp: ``KT1`` /
``KT2`` put the gathered keys on the M side (the left operand) and the heads on N. Sweep 1
reduces over keys (heads on M is better), sweep 2 over heads (keys on M is better). The
elementwise work per score is what limits these kernels after the matmul, so masks are
applied as an added -inf (sweep 1) or after the head sum (sweep 2), not per score.

Extra memory: ``p`` or ``q − p`` ``[B, S, topk]`` fp32 (only when asked) and, when
``H > BLOCK_H``, the per-head log-sum-exp ``[B·S, H]`` fp32 handed from sweep 1 to sweep 2.
"""

import triton
import triton.language as tl

from tri_shared.dots import dot
from tri_shared.offsets import wide
from tri_shared.softmax import (
    LN2,
    LOG2E,
    log2_sum_exp2,
    online_softmax_update,
    online_softmax_update_1d,
)

from .row_loss import kl_terms


@triton.jit
def _row_indices(i_row, offs_k, stride_ik, TOPK, L, last_pos):
    """Key rows of one top-k block (0 where invalid) and the validity mask."""
    inb = offs_k < TOPK
    idx = tl.load(i_row + wide(offs_k) * stride_ik, mask=inb, other=-1)
    valid = inb & (idx >= 0) & (idx < L) & (idx <= last_pos)
    return tl.where(valid, idx, 0), valid


@triton.jit
def _key_offsets(i_row, offs_k, stride_ik, TOPK, L, last_pos, stride_kl, WIDE_KEYS: tl.constexpr):
    """Element offsets of the key rows of one top-k block within the batch's keys (row 0
    where invalid) and the validity mask. In 32-bit unless ``WIDE_KEYS`` (the batch's keys
    span 2^31 elements or more): a 64-bit multiply per gathered row is several integer
    instructions, a real share of the loop's work."""
    kidx, valid = _row_indices(i_row, offs_k, stride_ik, TOPK, L, last_pos)
    if WIDE_KEYS:
        key_off = kidx.to(tl.int64) * stride_kl
    else:
        key_off = kidx.to(tl.int32) * stride_kl
    return key_off, valid


@triton.jit
def _load_q(
    q_row, heads, hmask, d0, stride_qh, stride_qd, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr
):
    offs_d = d0 + tl.arange(0, BLOCK_D)
    mask = hmask[:, None] & (offs_d < HEAD_DIM)[None, :]
    return tl.load(
        q_row + wide(heads)[:, None] * stride_qh + offs_d[None, :] * stride_qd, mask=mask, other=0.0
    )


@triton.jit
def _scores(
    q_row,
    k_bat,
    q_pre,
    heads,
    hmask,
    key_off,
    valid,
    stride_qh,
    stride_qd,
    stride_kd,
    HEAD_DIM: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_D: tl.constexpr,
    Q_PRELOADED: tl.constexpr,
    IEEE: tl.constexpr,
    KT: tl.constexpr,
):
    """Raw scores ``Q[heads] · K[rows]ᵀ`` ``[BLOCK_H, BLOCK_K]`` fp32 (the key rows at element
    offsets ``key_off``), or their transpose ``[BLOCK_K, BLOCK_H]`` when KT (keys on the M
    side of the matmul: the gathered key tile is the left operand, the query tile, transposed
    once, the right one)."""
    if Q_PRELOADED:
        # HEAD_DIM fits one BLOCK_D chunk and the query operand is already loaded.
        offs_d = tl.arange(0, BLOCK_D)
        kt = tl.load(
            k_bat + key_off[:, None] + offs_d[None, :] * stride_kd,
            mask=valid[:, None] & (offs_d < HEAD_DIM)[None, :],
            other=0.0,
        )
        if KT:
            acc = dot(kt, q_pre, IEEE)
        else:
            acc = dot(q_pre, tl.trans(kt), IEEE)
    else:
        if KT:
            acc = tl.zeros([BLOCK_K, BLOCK_H], dtype=tl.float32)
        else:
            acc = tl.zeros([BLOCK_H, BLOCK_K], dtype=tl.float32)
        for d0 in tl.range(0, HEAD_DIM, BLOCK_D):
            offs_d = d0 + tl.arange(0, BLOCK_D)
            qt = _load_q(q_row, heads, hmask, d0, stride_qh, stride_qd, HEAD_DIM, BLOCK_D)
            kt = tl.load(
                k_bat + key_off[:, None] + offs_d[None, :] * stride_kd,
                mask=valid[:, None] & (offs_d < HEAD_DIM)[None, :],
                other=0.0,
            )
            if KT:
                acc += dot(kt, tl.trans(qt), IEEE)
            else:
                acc += dot(qt, tl.trans(kt), IEEE)
    return acc


@triton.jit
def _q_operand(
    q_row,
    heads,
    hmask,
    stride_qh,
    stride_qd,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    KT: tl.constexpr,
):
    """The whole query tile of a head block (D in one chunk), in the orientation _scores
    uses: ``[BLOCK_H, BLOCK_D]``, or ``[BLOCK_D, BLOCK_H]`` when KT."""
    q = _load_q(q_row, heads, hmask, 0, stride_qh, stride_qd, HEAD_DIM, BLOCK_D)
    if KT:
        q = tl.trans(q)
    return q


@triton.jit
def _head_lse(
    q_row,
    k_bat,
    i_row,
    h0,
    H,
    TOPK,
    L,
    last_pos,
    qk_scale,
    stride_qh,
    stride_qd,
    stride_kl,
    stride_kd,
    stride_ik,
    HEAD_DIM: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_D: tl.constexpr,
    IEEE: tl.constexpr,
    KT: tl.constexpr,
    WIDE_KEYS: tl.constexpr,
):
    """Sweep 1 for heads ``h0 .. h0 + BLOCK_H``: base-2 log-sum-exp of the scaled scores over
    the valid entries, ``[BLOCK_H]`` (-inf for a row with no valid entry)."""
    heads = h0 + tl.arange(0, BLOCK_H)
    hmask = heads < H
    ONE_D: tl.constexpr = HEAD_DIM <= BLOCK_D
    if ONE_D:
        q_pre = _q_operand(q_row, heads, hmask, stride_qh, stride_qd, HEAD_DIM, BLOCK_D, KT)
    else:
        q_pre = 0
    m_i = tl.full([BLOCK_H], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_H], tl.float32)
    for k0 in tl.range(0, TOPK, BLOCK_K):
        key_off, valid = _key_offsets(
            i_row, k0 + tl.arange(0, BLOCK_K), stride_ik, TOPK, L, last_pos, stride_kl, WIDE_KEYS
        )
        s = _scores(
            q_row,
            k_bat,
            q_pre,
            heads,
            hmask,
            key_off,
            valid,
            stride_qh,
            stride_qd,
            stride_kd,
            HEAD_DIM,
            BLOCK_H,
            BLOCK_K,
            BLOCK_D,
            ONE_D,
            IEEE,
            KT,
        )
        # invalid keys are masked by adding -inf: one fused multiply-add per score
        bias = tl.where(valid, 0.0, float("-inf"))
        if KT:
            # heads are the columns of s here
            m_i, l_i, _, _ = online_softmax_update(m_i, l_i, s * qk_scale + bias[:, None], 0)
        else:
            m_i, l_i, _, _ = online_softmax_update(m_i, l_i, s * qk_scale + bias[None, :])
    return log2_sum_exp2(m_i, l_i)


@triton.jit
def _head_probs(
    q_row,
    k_bat,
    q_pre,
    lse_h,
    h0,
    H,
    key_off,
    valid,
    qk_scale,
    stride_qh,
    stride_qd,
    stride_kd,
    HEAD_DIM: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_D: tl.constexpr,
    Q_PRELOADED: tl.constexpr,
    IEEE: tl.constexpr,
    KT: tl.constexpr,
):
    """Sweep 2 for one head block and one top-k block: ``Σ_h P[h, j]`` ``[BLOCK_K]``."""
    heads = h0 + tl.arange(0, BLOCK_H)
    hmask = heads < H
    s = _scores(
        q_row,
        k_bat,
        q_pre,
        heads,
        hmask,
        key_off,
        valid,
        stride_qh,
        stride_qd,
        stride_kd,
        HEAD_DIM,
        BLOCK_H,
        BLOCK_K,
        BLOCK_D,
        Q_PRELOADED,
        IEEE,
        KT,
    )
    # Padding heads and rows without a valid entry (lse = -inf) get lse = +inf, so their
    # terms are exactly 0. Invalid keys (loaded as zero rows) are dropped after the head
    # sum, on the [BLOCK_K] vector instead of every score; their terms are positive
    # (possibly inf), so the sum cannot turn into NaN.
    lse_h = tl.where(hmask & (lse_h > float("-inf")), lse_h, float("inf"))
    if KT:
        p = tl.sum(tl.math.exp2(s * qk_scale - lse_h[None, :]), axis=1)
    else:
        p = tl.sum(tl.math.exp2(s * qk_scale - lse_h[:, None]), axis=0)
    return tl.where(valid, p, 0.0)


@triton.jit
def sparse_indexer_fwd_kernel(
    q_ptr,
    k_ptr,
    x_ptr,
    idx_ptr,
    loss_ptr,
    p_ptr,
    lse_ptr,
    nvalid_ptr,
    hlse_ptr,
    S,
    H,
    L,
    TOPK,
    chunk_offset,
    qk_scale,
    eps,
    stride_qb,
    stride_qh,
    stride_qs,
    stride_qd,
    stride_kb,
    stride_kl,
    stride_kd,
    stride_xb,
    stride_xs,
    stride_xk,
    stride_ib,
    stride_is,
    stride_ik,
    HEAD_DIM: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_D: tl.constexpr,
    ONE_HEAD_BLOCK: tl.constexpr,
    IEEE: tl.constexpr,
    STORE_P: tl.constexpr,
    STORE_DIFF: tl.constexpr,
    COMPUTE_LOSS: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_X: tl.constexpr,
    KT1: tl.constexpr,
    KT2: tl.constexpr,
    WIDE_KEYS: tl.constexpr,
):
    """Forward for one query row.

    ``qk_scale`` = scaling · log2(e) (scores in base 2). Writes ``loss[row]``, the natural
    log-sum-exp of index_score over the valid entries ``lse[row]`` and their count
    ``nvalid[row]`` (when COMPUTE_LOSS), and into ``p_ptr[row, :]`` either ``p`` (STORE_P) or
    ``q − p`` on the valid entries and 0 elsewhere (STORE_DIFF, with COMPUTE_LOSS). The
    p, lse, nvalid, loss and hlse buffers are contiguous, allocated by the wrapper.
    ``WIDE_KEYS``: one batch's keys span 2^31 elements or more (64-bit row offsets).
    """
    row = tl.program_id(0)
    b = row // S
    t = row % S
    last_pos = chunk_offset + t
    q_row = q_ptr + wide(b) * stride_qb + wide(t) * stride_qs
    k_bat = k_ptr + wide(b) * stride_kb
    x_row = x_ptr + wide(b) * stride_xb + wide(t) * stride_xs
    i_row = idx_ptr + wide(b) * stride_ib + wide(t) * stride_is
    ONE_D: tl.constexpr = HEAD_DIM <= BLOCK_D

    # Sweep 0: softmax statistics of index_score over the valid entries.
    lse_x = 0.0
    if COMPUTE_LOSS:
        m_x = tl.max(tl.full([BLOCK_X], float("-inf"), tl.float32), axis=0)
        l_x = tl.sum(tl.zeros([BLOCK_X], tl.float32), axis=0)
        n_x = tl.sum(tl.zeros([BLOCK_X], tl.int32), axis=0)
        # wide blocks (BLOCK_X, up to 2048): a short loop, few dependent load round trips
        for k0 in tl.range(0, TOPK, BLOCK_X):
            offs_k = k0 + tl.arange(0, BLOCK_X)
            _, valid = _row_indices(i_row, offs_k, stride_ik, TOPK, L, last_pos)
            x = tl.load(x_row + wide(offs_k) * stride_xk, mask=valid, other=float("-inf"))
            m_x, l_x, _, _ = online_softmax_update_1d(m_x, l_x, x.to(tl.float32) * LOG2E)
            n_x += tl.sum(valid.to(tl.int32), axis=0)
        lse_x = log2_sum_exp2(m_x, l_x) * LN2
        tl.store(lse_ptr + row, lse_x)
        tl.store(nvalid_ptr + row, n_x)

    # Sweep 1: per-head log-sum-exp. With one head block it stays in registers; otherwise
    # it goes through a small [rows, H] scratch buffer, read back by the same program.
    if ONE_HEAD_BLOCK:
        lse_h0 = _head_lse(
            q_row,
            k_bat,
            i_row,
            0,
            H,
            TOPK,
            L,
            last_pos,
            qk_scale,
            stride_qh,
            stride_qd,
            stride_kl,
            stride_kd,
            stride_ik,
            HEAD_DIM,
            BLOCK_H,
            BLOCK_K,
            BLOCK_D,
            IEEE,
            KT1,
            WIDE_KEYS,
        )
        if ONE_D:
            q_pre = _q_operand(
                q_row,
                tl.arange(0, BLOCK_H),
                tl.arange(0, BLOCK_H) < H,
                stride_qh,
                stride_qd,
                HEAD_DIM,
                BLOCK_D,
                KT2,
            )
        else:
            q_pre = 0
    else:
        for h0 in tl.range(0, H, BLOCK_H):
            heads = h0 + tl.arange(0, BLOCK_H)
            lse_h = _head_lse(
                q_row,
                k_bat,
                i_row,
                h0,
                H,
                TOPK,
                L,
                last_pos,
                qk_scale,
                stride_qh,
                stride_qd,
                stride_kl,
                stride_kd,
                stride_ik,
                HEAD_DIM,
                BLOCK_H,
                BLOCK_K,
                BLOCK_D,
                IEEE,
                KT1,
                WIDE_KEYS,
            )
            tl.store(hlse_ptr + wide(row) * H + heads, lse_h, mask=heads < H)
        # The values are read back by other threads of this program: make them visible.
        tl.debug_barrier()

    # Sweep 2: head-averaged probabilities p, then the KL terms.
    # KL terms summed per lane across blocks, reduced once at the end (a reduction per block
    # would cross warps, with its barriers, in every step)
    kl_lanes = tl.zeros([BLOCK_K], tl.float32)
    for k0 in tl.range(0, TOPK, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        key_off, valid = _key_offsets(
            i_row, offs_k, stride_ik, TOPK, L, last_pos, stride_kl, WIDE_KEYS
        )
        if ONE_HEAD_BLOCK:
            p = _head_probs(
                q_row,
                k_bat,
                q_pre,
                lse_h0,
                0,
                H,
                key_off,
                valid,
                qk_scale,
                stride_qh,
                stride_qd,
                stride_kd,
                HEAD_DIM,
                BLOCK_H,
                BLOCK_K,
                BLOCK_D,
                ONE_D,
                IEEE,
                KT2,
            )
        else:
            p = tl.zeros([BLOCK_K], tl.float32)
            for h0 in tl.range(0, H, BLOCK_H):
                heads = h0 + tl.arange(0, BLOCK_H)
                lse_h = tl.load(hlse_ptr + wide(row) * H + heads, mask=heads < H, other=0.0)
                p += _head_probs(
                    q_row,
                    k_bat,
                    0,
                    lse_h,
                    h0,
                    H,
                    key_off,
                    valid,
                    qk_scale,
                    stride_qh,
                    stride_qd,
                    stride_kd,
                    HEAD_DIM,
                    BLOCK_H,
                    BLOCK_K,
                    BLOCK_D,
                    False,
                    IEEE,
                    KT2,
                )
        p = p / H
        if STORE_P:
            tl.store(p_ptr + wide(row) * TOPK + offs_k, p, mask=offs_k < TOPK)
        if COMPUTE_LOSS:
            x = tl.load(x_row + wide(offs_k) * stride_xk, mask=valid, other=0.0)
            terms, q = kl_terms(p, x, lse_x, valid, eps, False)
            kl_lanes += terms
            if STORE_DIFF:
                # the gradient's direction, so the backward is one multiply per entry
                diff = tl.where(valid, q - p, 0.0)
                tl.store(p_ptr + wide(row) * TOPK + offs_k, diff, mask=offs_k < TOPK)
    if COMPUTE_LOSS:
        tl.store(loss_ptr + row, tl.sum(kl_lanes, axis=0))
