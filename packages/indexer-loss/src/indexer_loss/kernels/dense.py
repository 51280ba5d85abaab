"""Triton kernels of the dense (warm-up) indexer loss: every causal key, streamed in blocks.

Three kernels, none of which materialises per-head probabilities:

- ``_dense_head_lse_kernel``: per (batch, query block, head), the base-2 log-sum-exp of the
  scaled scores over the causal keys (a flash-attention forward without V). O(B·H·S) out.
- ``_dense_index_lse_kernel``: per row, the base-2 log-sum-exp of ``index_score`` over the
  causal keys. O(B·S) out.
- ``_dense_target_kernel``: per (batch, query block, key split), recomputes each head's
  probabilities from the saved log-sum-exp, sums them over heads into the target ``p`` and
  either accumulates the KL terms per row (forward) or writes ``g · (q − p)`` (backward).

Scores are kept in base 2: ``scaling · log2(e)`` is folded into one multiplier, so every
exponential is one ``exp2``.
"""

import triton
import triton.language as tl

from tri_shared.dots import dot
from tri_shared.launch import autotune_configs
from tri_shared.offsets import block_range, tile_pointers, wide
from tri_shared.softmax import LN2, LOG2E, log2_sum_exp2, online_softmax_update


@triton.jit
def _qk_tile(
    q_base,
    k_base,
    offs_m,
    offs_n,
    mask_m,
    mask_n,
    stride_qs,
    stride_qd,
    stride_kl,
    stride_kd,
    D,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    NUM_D: tl.constexpr,
    IEEE: tl.constexpr,
):
    """``q[offs_m] · k[offs_n]ᵀ`` over the head dim in ``NUM_D`` chunks, fp32 ``[BM, BN]``.

    A runtime loop, not unrolled: unrolled chunks would each hold their own pipeline buffers
    in shared memory (D = 576 in fp32 would not fit).
    """
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for dc in range(NUM_D):
        offs_d, mask_d = block_range(dc * BLOCK_D, BLOCK_D, D)
        q = tl.load(
            tile_pointers(q_base, offs_m, offs_d, stride_qs, stride_qd),
            mask=mask_m[:, None] & mask_d[None, :],
            other=0.0,
        )
        kt = tl.load(
            tile_pointers(k_base, offs_d, offs_n, stride_kd, stride_kl),
            mask=mask_d[:, None] & mask_n[None, :],
            other=0.0,
        )
        acc = dot(q, kt, IEEE, acc)
    return acc


def _lse_configs():
    return autotune_configs(
        [
            triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s)
            for bm, bn, w, s in [
                (128, 64, 8, 3),
                (128, 128, 8, 3),
                (64, 64, 4, 3),
                (128, 64, 4, 3),
                (64, 128, 4, 3),
                (128, 128, 8, 2),
            ]
        ]
    )


@triton.jit
def _dense_head_lse_kernel(
    q_ptr,
    k_ptr,
    lse_ptr,
    S,
    L,
    chunk_offset,
    qk_scale2,
    stride_qb,
    stride_qh,
    stride_qs,
    stride_qd,
    stride_kb,
    stride_kl,
    stride_kd,
    stride_lb,
    stride_lh,
    D,
    BLOCK_D: tl.constexpr,
    NUM_D: tl.constexpr,
    IEEE: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    n_mblk = tl.cdiv(S, BLOCK_M)
    pid = tl.program_id(0)
    b = pid // n_mblk
    # Longest rows (most causal keys) first, so the tail of the grid is short work.
    m0 = (n_mblk - 1 - pid % n_mblk) * BLOCK_M
    h = tl.program_id(1)
    offs_m, mask_m = block_range(m0, BLOCK_M, S)
    q_base = q_ptr + wide(b) * stride_qb + wide(h) * stride_qh
    k_base = k_ptr + wide(b) * stride_kb

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    # Keys [0, full_hi) are valid for every row of the block: no mask there.
    hi = tl.minimum(L, chunk_offset + m0 + BLOCK_M)
    full_hi = (tl.minimum(L, chunk_offset + m0 + 1) // BLOCK_N) * BLOCK_N
    if NUM_D == 1:
        # The query tile stays in registers for the whole key loop.
        offs_d, mask_d = block_range(0, BLOCK_D, D)
        qt = tl.load(
            tile_pointers(q_base, offs_m, offs_d, stride_qs, stride_qd),
            mask=mask_m[:, None] & mask_d[None, :],
            other=0.0,
        )
    for n0 in range(0, full_hi, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        if NUM_D == 1:
            kt = tl.load(
                tile_pointers(k_base, offs_d, offs_n, stride_kd, stride_kl),
                mask=mask_d[:, None],
                other=0.0,
            )
            s = dot(qt, kt, IEEE)
        else:
            s = _qk_tile(
                q_base, k_base, offs_m, offs_n, mask_m, offs_n < L,
                stride_qs, stride_qd, stride_kl, stride_kd, D,
                BLOCK_M, BLOCK_N, BLOCK_D, NUM_D, IEEE,
            )  # fmt: skip
        m_i, l_i, _, _ = online_softmax_update(m_i, l_i, s * qk_scale2)
    for n0 in range(full_hi, hi, BLOCK_N):
        offs_n, mask_n = block_range(n0, BLOCK_N, L)
        if NUM_D == 1:
            kt = tl.load(
                tile_pointers(k_base, offs_d, offs_n, stride_kd, stride_kl),
                mask=mask_d[:, None] & mask_n[None, :],
                other=0.0,
            )
            s = dot(qt, kt, IEEE)
        else:
            s = _qk_tile(
                q_base, k_base, offs_m, offs_n, mask_m, mask_n,
                stride_qs, stride_qd, stride_kl, stride_kd, D,
                BLOCK_M, BLOCK_N, BLOCK_D, NUM_D, IEEE,
            )  # fmt: skip
        valid = (offs_n[None, :] <= chunk_offset + offs_m[:, None]) & mask_n[None, :]
        s = tl.where(valid, s * qk_scale2, float("-inf"))
        m_i, l_i, _, _ = online_softmax_update(m_i, l_i, s)
    lse_base = lse_ptr + wide(b) * stride_lb + wide(h) * stride_lh
    tl.store(lse_base + offs_m, log2_sum_exp2(m_i, l_i), mask=mask_m)


@triton.jit
def _dense_index_lse_kernel(
    x_ptr,
    lsex_ptr,
    S,
    L,
    chunk_offset,
    stride_xb,
    stride_xs,
    stride_xl,
    BLOCK_R: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """Base-2 log-sum-exp of ``index_score · log2(e)`` over each row's causal keys."""
    n_rblk = tl.cdiv(S, BLOCK_R)
    pid = tl.program_id(0)
    b = pid // n_rblk
    r0 = (pid % n_rblk) * BLOCK_R
    offs_r, mask_r = block_range(r0, BLOCK_R, S)
    x_base = x_ptr + wide(b) * stride_xb
    m_i = tl.full([BLOCK_R], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_R], dtype=tl.float32)
    hi = tl.minimum(L, chunk_offset + r0 + BLOCK_R)
    for c0 in range(0, hi, BLOCK_C):
        offs_c, mask_c = block_range(c0, BLOCK_C, L)
        valid = (
            (offs_c[None, :] <= chunk_offset + offs_r[:, None]) & mask_c[None, :] & mask_r[:, None]
        )
        x = tl.load(
            tile_pointers(x_base, offs_r, offs_c, stride_xs, stride_xl), mask=valid, other=0.0
        )
        x2 = tl.where(valid, x.to(tl.float32) * LOG2E, float("-inf"))
        m_i, l_i, _, _ = online_softmax_update(m_i, l_i, x2)
    tl.store(lsex_ptr + wide(b) * S + offs_r, log2_sum_exp2(m_i, l_i), mask=mask_r)


def _target_configs():
    return autotune_configs(
        [
            triton.Config({"BLOCK_N": bn}, num_warps=w, num_stages=s)
            for bn, w, s in [(128, 8, 3), (128, 4, 3), (64, 4, 3), (256, 8, 2), (128, 8, 2)]
        ]
    )


@triton.jit
def _dense_target_kernel(
    q_ptr,
    k_ptr,
    x_ptr,
    lse_ptr,
    lsex_ptr,
    g_ptr,
    out_ptr,
    S,
    L,
    H,
    chunk_offset,
    qk_scale2,
    inv_h,
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
    stride_xl,
    stride_lb,
    stride_lh,
    stride_gb,
    stride_gs,
    stride_ob,
    stride_os,
    stride_ol,
    D,
    BLOCK_D: tl.constexpr,
    NUM_D: tl.constexpr,
    IEEE: tl.constexpr,
    WRITE_GRAD: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """Head-summed target ``p`` per key block, then KL terms (forward) or gradient (backward).

    Forward (``WRITE_GRAD`` False): ``out[b, t, split]`` = this split's share of
    ``Σ_j p_j (ln(p_j + eps) − ln(q_j + eps))``. Backward: ``out[b, t, j] = g[b, t] · (q_j − p_j)``
    on causal keys and 0 on the others (every element of ``out`` is written).
    """
    n_mblk = tl.cdiv(S, BLOCK_M)
    pid = tl.program_id(0)
    b = pid // n_mblk
    m0 = (n_mblk - 1 - pid % n_mblk) * BLOCK_M
    split = tl.program_id(1)
    n_split = tl.num_programs(1)
    offs_m, mask_m = block_range(m0, BLOCK_M, S)

    # This split's share of the key blocks that hold causal keys for this query block.
    hi = tl.minimum(L, chunk_offset + m0 + BLOCK_M)
    n_blocks = tl.cdiv(hi, BLOCK_N)
    per = tl.cdiv(n_blocks, n_split)
    start = split * per
    stop = tl.minimum(start + per, n_blocks)

    q_base = q_ptr + wide(b) * stride_qb
    k_base = k_ptr + wide(b) * stride_kb
    x_base = x_ptr + wide(b) * stride_xb
    lse_base = lse_ptr + wide(b) * stride_lb
    lsex = tl.load(lsex_ptr + wide(b) * S + offs_m, mask=mask_m, other=0.0)
    if WRITE_GRAD:
        g = tl.load(g_ptr + wide(b) * stride_gb + wide(offs_m) * stride_gs, mask=mask_m, other=0.0)
    kl = tl.zeros([BLOCK_M], dtype=tl.float32)
    for nb in range(start, stop):
        offs_n, mask_n = block_range(nb * BLOCK_N, BLOCK_N, L)
        acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
        # Per-head pointers advance by pointer increments (64-bit), not h * stride products.
        q_h = q_base
        lse_h_ptr = lse_base + offs_m
        if NUM_D == 1:
            # The key tile is shared by every head: load it once per key block.
            offs_d, mask_d = block_range(0, BLOCK_D, D)
            kt = tl.load(
                tile_pointers(k_base, offs_d, offs_n, stride_kd, stride_kl),
                mask=mask_d[:, None] & mask_n[None, :],
                other=0.0,
            )
        for _ in range(H):
            if NUM_D == 1:
                qt = tl.load(
                    tile_pointers(q_h, offs_m, offs_d, stride_qs, stride_qd),
                    mask=mask_m[:, None] & mask_d[None, :],
                    other=0.0,
                )
                s = dot(qt, kt, IEEE)
            else:
                s = _qk_tile(
                    q_h, k_base, offs_m, offs_n, mask_m, mask_n,
                    stride_qs, stride_qd, stride_kl, stride_kd, D,
                    BLOCK_M, BLOCK_N, BLOCK_D, NUM_D, IEEE,
                )  # fmt: skip
            lse_h = tl.load(lse_h_ptr, mask=mask_m, other=0.0)
            # Future keys may overflow to +inf here; they are masked out below, never multiplied.
            acc += tl.math.exp2(s * qk_scale2 - lse_h[:, None])
            q_h += stride_qh
            lse_h_ptr += stride_lh
        valid = (
            (offs_n[None, :] <= chunk_offset + offs_m[:, None]) & mask_n[None, :] & mask_m[:, None]
        )
        p = tl.where(valid, acc * inv_h, 0.0)
        x = tl.load(
            tile_pointers(x_base, offs_m, offs_n, stride_xs, stride_xl), mask=valid, other=0.0
        )
        q = tl.where(valid, tl.math.exp2(x.to(tl.float32) * LOG2E - lsex[:, None]), 0.0)
        if WRITE_GRAD:
            grad = g[:, None] * (q - p)
            tl.store(
                tile_pointers(out_ptr + wide(b) * stride_ob, offs_m, offs_n, stride_os, stride_ol),
                grad.to(out_ptr.dtype.element_ty),
                mask=mask_m[:, None] & mask_n[None, :],
            )
        else:
            term = p * (tl.math.log2(p + eps) - tl.math.log2(q + eps))
            kl += tl.sum(tl.where(p > 0.0, term, 0.0), 1)
    if WRITE_GRAD:
        # Key blocks past every row's causal limit get zeros, shared out among the splits.
        n_total = tl.cdiv(L, BLOCK_N)
        zper = tl.cdiv(n_total - n_blocks, n_split)
        zstart = n_blocks + split * zper
        zstop = tl.minimum(zstart + zper, n_total)
        zeros = tl.zeros([BLOCK_M, BLOCK_N], dtype=out_ptr.dtype.element_ty)
        for nb in range(zstart, zstop):
            offs_n, mask_n = block_range(nb * BLOCK_N, BLOCK_N, L)
            tl.store(
                tile_pointers(out_ptr + wide(b) * stride_ob, offs_m, offs_n, stride_os, stride_ol),
                zeros,
                mask=mask_m[:, None] & mask_n[None, :],
            )
    else:
        out = out_ptr + wide(b) * stride_ob + wide(offs_m) * stride_os + split * stride_ol
        tl.store(out, kl * LN2, mask=mask_m)


# Autotuned launchers for large problems; the plain kernels above take a fixed config for
# small ones, where tuning would cost more than it saves (and every new head dim retunes).
# The keys leave out the lengths so a new S or L never retunes.
_dense_head_lse_tuned = triton.autotune(configs=_lse_configs(), key=["BLOCK_D", "NUM_D", "IEEE"])(
    _dense_head_lse_kernel
)
_dense_target_tuned = triton.autotune(
    configs=_target_configs(), key=["BLOCK_D", "NUM_D", "IEEE", "WRITE_GRAD"]
)(_dense_target_kernel)
