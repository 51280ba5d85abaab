"""The fused sigmoid-gating delta-rule update: one program per (sequence, value head, V block).

Decode is memory-bound: every program reads its ``[K, BLOCK_V]`` slice of the state once,
keeps it in registers across the sequence's tokens, and writes it back once. The V split
gives batch 1 enough programs in flight; the full K stays in one program because every
token reduces over it (``h^T k`` and ``h^T q``).

The tile is oriented so the pool's contiguous axis is the tile's last axis: ``[BLOCK_K,
BLOCK_V]`` for the "kv" layout (V contiguous), ``[BLOCK_V, BLOCK_K]`` for "vk" (K
contiguous). ``RED`` is the tile axis that holds K (reductions run over it) and ``KEEP``
the other one.
"""

import triton
import triton.language as tl

from tri_shared.offsets import wide


@triton.jit
def _softplus(x, beta, threshold):
    """log(1 + exp(beta x)) / beta where beta x <= threshold, else x; exp sees at most the
    threshold so the branch not taken cannot overflow."""
    bx = beta * x
    soft = tl.log(1.0 + tl.exp(tl.minimum(bx, threshold))) / beta
    return tl.where(bx <= threshold, soft, x)


@triton.jit
def _mask_if(mask, cond):
    """``mask & cond`` for a scalar ``cond``, broadcast explicitly (the interpreter rejects
    a scalar mask broadcast implicitly into a tile)."""
    return mask & ((tl.zeros(mask.shape, tl.int32) + cond.to(tl.int32)) != 0)


@triton.jit
def _token_step(
    h, p_q, p_k, p_v, p_a, p_b, p_o, mask_k, mask_v, neg_A, bias, softplus_beta,
    softplus_threshold, scale, RED: tl.constexpr, KEEP: tl.constexpr, USE_L2NORM: tl.constexpr,
):  # fmt: skip
    """One token on the state tile ``h``: gates, the delta-rule update, o stored. Returns h."""
    b_q = tl.load(p_q, mask=mask_k, other=0.0).to(tl.float32)
    b_k = tl.load(p_k, mask=mask_k, other=0.0).to(tl.float32)
    b_v = tl.load(p_v, mask=mask_v, other=0.0).to(tl.float32)
    b_a = tl.load(p_a).to(tl.float32)
    b_b = tl.load(p_b).to(tl.float32)
    decay = tl.exp(neg_A * _softplus(b_a + bias, softplus_beta, softplus_threshold))
    beta = 1.0 / (1.0 + tl.exp(-b_b))
    if USE_L2NORM:
        b_q = b_q / tl.sqrt(tl.sum(b_q * b_q) + 1e-6)
        b_k = b_k / tl.sqrt(tl.sum(b_k * b_k) + 1e-6)
    b_q = b_q * scale
    h = h * decay
    kk = tl.expand_dims(b_k, KEEP)
    v_new = (b_v - tl.sum(h * kk, axis=RED)) * beta
    h = h + kk * tl.expand_dims(v_new, RED)
    b_o = tl.sum(h * tl.expand_dims(b_q, KEEP), axis=RED)
    tl.store(p_o, b_o.to(p_o.dtype.element_ty), mask=mask_v)
    return h


@triton.jit(do_not_specialize=["T", "cache_steps"])
def fused_gdn_update_kernel(
    A_log,
    a,
    dt_bias,
    q,
    k,
    v,
    b,
    o,
    pool,
    pool_idx,
    buf,
    buf_idx,
    cu_seqlens,
    softplus_beta,
    softplus_threshold,
    scale,
    T,
    cache_steps,
    stride_qb,
    stride_qt,
    stride_qh,
    stride_kb,
    stride_kt,
    stride_kh,
    stride_vb,
    stride_vt,
    stride_vh,
    stride_ab,
    stride_at,
    stride_bb,
    stride_bt,
    stride_pool,
    stride_buf,
    stride_buf_step,
    H: tl.constexpr,
    HV: tl.constexpr,
    K: tl.constexpr,
    V: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_V: tl.constexpr,
    RED: tl.constexpr,
    KEEP: tl.constexpr,
    IS_VARLEN: tl.constexpr,
    HAS_STATE: tl.constexpr,
    UPDATE_STATE: tl.constexpr,
    HAS_BUFFER: tl.constexpr,
    USE_L2NORM: tl.constexpr,
    STREAM_STATE: tl.constexpr,
    FLAT_GRID: tl.constexpr,
    ONE_TOKEN: tl.constexpr,
):
    if FLAT_GRID:
        # one axis, V blocks fastest: the blocks of one head run side by side, so a head's
        # state (one contiguous region of the pool) is read and written at one time
        NV = (V + BLOCK_V - 1) // BLOCK_V
        pid = tl.program_id(0)
        i_nh = pid // NV
        i_vb = pid % NV
    else:
        # axis 0 carries sequences x value heads (up to 2**31 - 1 programs), axis 1 V blocks
        i_nh = tl.program_id(0)
        i_vb = tl.program_id(1)
    i_n = i_nh // HV
    i_hv = i_nh % HV
    i_h = i_hv // (HV // H)

    if IS_VARLEN:
        bos = tl.load(cu_seqlens + i_n).to(tl.int64)
        eos = tl.load(cu_seqlens + i_n + 1).to(tl.int64)
        row = i_n * 0  # all sequences live in batch row 0, at absolute token positions
    else:
        bos = wide(i_n * 0)
        eos = bos + T
        row = i_n
    row = wide(row)

    o_k = tl.arange(0, BLOCK_K)
    o_v = i_vb * BLOCK_V + tl.arange(0, BLOCK_V)
    # constant-true masks when the blocks tile K and V exactly (full-width vector accesses)
    mask_k = (o_k < K) | (BLOCK_K == K)
    mask_v = (o_v < V) | (V % BLOCK_V == 0)
    # element offsets of the state tile inside one head: K has stride V in "kv" (RED = 0),
    # stride 1 in "vk" (RED = 1); the tile's last axis is always the contiguous one
    if RED == 0:
        off_h = o_k[:, None] * V + o_v[None, :]
    else:
        off_h = o_v[:, None] * K + o_k[None, :]
    mask_h = tl.expand_dims(mask_k, KEEP) & tl.expand_dims(mask_v, RED)
    head_off = wide(i_hv) * (K * V)

    if HAS_STATE:
        slot = tl.load(pool_idx + i_n).to(tl.int64)
        has_slot = slot >= 0
        # 64-bit: slot * HV * K * V passes 2**31 beyond 4096 slots at HV=32, K=V=128
        p_pool = pool + tl.maximum(slot, 0) * stride_pool + head_off + off_h
        if STREAM_STATE:
            # read once, written back once: keep it from evicting anything else in L2
            h = tl.load(
                p_pool, mask=_mask_if(mask_h, has_slot), other=0.0, eviction_policy="evict_first"
            ).to(tl.float32)
        else:
            h = tl.load(p_pool, mask=_mask_if(mask_h, has_slot), other=0.0).to(tl.float32)
    else:
        h = tl.zeros_like(off_h).to(tl.float32)
    # gating constants of this value head: used only after the state load is issued (a warp
    # stalls at the first use of a pending load, so the exp here must not hold it back)
    neg_A = -tl.exp(tl.load(A_log + i_hv).to(tl.float32))
    bias = tl.load(dt_bias + i_hv).to(tl.float32)
    if HAS_BUFFER:
        cache = tl.load(buf_idx + i_n).to(tl.int64)
        p_buf = buf + tl.maximum(cache, 0) * stride_buf + head_off + off_h

    # pointers to the sequence's first token (64-bit), advanced by one token per step
    p_q = q + row * stride_qb + bos * stride_qt + i_h * stride_qh + o_k
    p_k = k + row * stride_kb + bos * stride_kt + i_h * stride_kh + o_k
    p_v = v + row * stride_vb + bos * stride_vt + i_hv * stride_vh + o_v
    p_a = a + row * stride_ab + bos * stride_at + i_hv
    p_b = b + row * stride_bb + bos * stride_bt + i_hv
    # o is a fresh contiguous [B, T, HV, V]
    p_o = o + (row * T + bos) * (HV * V) + i_hv * V + o_v

    if ONE_TOKEN:
        # decode (fixed length, T = 1): straight-line code, so the token loads and the gate
        # math are scheduled together with the state load instead of behind a loop entry
        h = _token_step(
            h, p_q, p_k, p_v, p_a, p_b, p_o, mask_k, mask_v, neg_A, bias, softplus_beta,
            softplus_threshold, scale, RED, KEEP, USE_L2NORM,
        )  # fmt: skip
        if HAS_BUFFER:
            keep = (cache >= 0) & (cache_steps > 0)
            tl.store(p_buf, h.to(p_buf.dtype.element_ty), mask=_mask_if(mask_h, keep))
    else:
        for step in range(eos - bos):
            h = _token_step(
                h, p_q, p_k, p_v, p_a, p_b, p_o, mask_k, mask_v, neg_A, bias, softplus_beta,
                softplus_threshold, scale, RED, KEEP, USE_L2NORM,
            )  # fmt: skip
            p_q += stride_qt
            p_k += stride_kt
            p_v += stride_vt
            p_a += stride_at
            p_b += stride_bt
            p_o += HV * V
            if HAS_BUFFER:
                keep = (cache >= 0) & (step < cache_steps)
                tl.store(p_buf, h.to(p_buf.dtype.element_ty), mask=_mask_if(mask_h, keep))
                p_buf += stride_buf_step

    if UPDATE_STATE:
        # an empty sequence touches nothing; a negative slot has no state to write
        mask_w = _mask_if(mask_h, has_slot & (eos > bos))
        if STREAM_STATE:
            tl.store(p_pool, h.to(p_pool.dtype.element_ty), mask=mask_w, cache_modifier=".cs")
        else:
            tl.store(p_pool, h.to(p_pool.dtype.element_ty), mask=mask_w)
