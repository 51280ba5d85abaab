"""The fused sparse indexer-loss forward for Hopper (sm_90), written in Gluon.

Same contract and sweeps as :mod:`indexer_loss.kernels.sparse` (one program per query row;
sweep 0: index_score statistics; sweep 1: per-head log-sum-exp; sweep 2: head-summed target
``p`` and the KL terms), restricted to one head block (H <= 64, padded to 64 heads), a head
dim of 64 or 128, fp16/bf16 and unit last-dim strides. What Gluon adds over the Triton kernel
is control of when the tensor cores are waited on: each sweep keeps the matmul of the next
key block in flight (``warpgroup_mma(..., is_async=True)``) while the softmax of the current
block runs, and gathers key rows ``NUM_BUF - 1`` blocks ahead with ``cp.async`` into a ring
of shared-memory buffers. Triton 3.6 waits on every wgmma whose result the loop uses, so
there the exponentials and the matmuls take turns.

The Triton interpreter cannot run Gluon: this kernel runs only on a GPU and is checked there
against the reference and the Triton kernel (``tests/test_sparse_gpu.py``).
"""

from __future__ import annotations

from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.ampere import async_copy
from triton.experimental.gluon.language.nvidia.hopper import (
    fence_async_shared,
    warpgroup_mma,
    warpgroup_mma_wait,
)

# Gluon is experimental and renames things between Triton releases:
# thread_barrier / barrier, async_copy_global_to_shared / async_load.
_block_barrier = getattr(gl, "thread_barrier", None) or gl.barrier
_async_load = getattr(async_copy, "async_load", None) or async_copy.async_copy_global_to_shared

_LOG2E: gl.constexpr = gl.constexpr(1.4426950408889634)
_LN2: gl.constexpr = gl.constexpr(0.6931471805599453)


@gluon.jit
def _load_indices(i_row, k0, TOPK, stride_ik, BLOCK_K: gl.constexpr, layout: gl.constexpr):
    """The raw indices of one top-k block (-1 past the end), ``[BLOCK_K]`` in ``layout``."""
    offs_k = k0 + gl.arange(0, BLOCK_K, layout=layout)
    return gl.load(i_row + offs_k * stride_ik, mask=offs_k < TOPK, other=-1)


@gluon.jit
def _gather_block(
    k_bat,
    kbuf,
    bias_ring,
    idx,
    i_row,
    blk,
    TOPK,
    L,
    last_pos,
    stride_ik,
    stride_kl,
    BLOCK_K: gl.constexpr,
    NUM_BUF: gl.constexpr,
    HEAD_DIM: gl.constexpr,
    GATHER: gl.constexpr,
    WIDE_KEYS: gl.constexpr,
):
    """Start copying the key rows of top-k block ``blk`` (indices ``idx``, loaded one step
    earlier in ``SliceLayout(1, GATHER)``) into ring buffer ``blk % NUM_BUF`` as one
    cp.async group, zeros for invalid entries, and store the block's key bias (0 valid,
    -inf invalid) in bias slot ``blk % (NUM_BUF + 1)``, where the sweeps read it back in
    their own layouts. Returns the indices of block ``blk + 1``: their load is in flight
    while the caller works on the current block."""
    valid = (idx >= 0) & (idx < L) & (idx <= last_pos)
    rows = gl.where(valid, idx, 0)
    if WIDE_KEYS:
        key_off = rows.to(gl.int64) * stride_kl
    else:
        key_off = rows.to(gl.int32) * stride_kl
    offs_d = gl.arange(0, HEAD_DIM, layout=gl.SliceLayout(0, GATHER))
    ptrs = k_bat + key_off[:, None] + offs_d[None, :]
    _async_load(kbuf.index(blk % NUM_BUF), ptrs, mask=valid[:, None])
    async_copy.commit_group()
    bias_ring.index(blk % (NUM_BUF + 1)).store(gl.where(valid, 0.0, float("-inf")))
    return _load_indices(
        i_row, (blk + 1) * BLOCK_K, TOPK, stride_ik, BLOCK_K, gl.SliceLayout(1, GATHER)
    )


@gluon.jit
def _start_ring(
    k_bat,
    kbuf,
    bias_ring,
    i_row,
    TOPK,
    L,
    last_pos,
    stride_ik,
    stride_kl,
    BLOCK_K: gl.constexpr,
    NUM_BUF: gl.constexpr,
    HEAD_DIM: gl.constexpr,
    GATHER: gl.constexpr,
    WIDE_KEYS: gl.constexpr,
):
    """Start the gathers of blocks 0 .. NUM_BUF - 1 (one per ring buffer); returns the
    indices of block NUM_BUF."""
    idx = _load_indices(i_row, 0, TOPK, stride_ik, BLOCK_K, gl.SliceLayout(1, GATHER))
    for i in gl.static_range(NUM_BUF):
        idx = _gather_block(
            k_bat,
            kbuf,
            bias_ring,
            idx,
            i_row,
            i,
            TOPK,
            L,
            last_pos,
            stride_ik,
            stride_kl,
            BLOCK_K,
            NUM_BUF,
            HEAD_DIM,
            GATHER,
            WIDE_KEYS,
        )
    return idx


@gluon.jit
def _keys_ready(PENDING: gl.constexpr):
    """Wait until at most PENDING gather groups are in flight, then make every thread's
    copies visible to the tensor cores (async proxy) and to the other warps."""
    async_copy.wait_group(PENDING)
    fence_async_shared()
    _block_barrier()


@gluon.jit
def _lse_update(s, m_i, l_i, bias, qk_scale):
    """Sweep 1, one block: online max and sum per head of ``s·qk_scale`` (base 2) over the
    valid keys. ``s`` ``[BLOCK_H, BLOCK_K]`` (heads on rows), ``bias`` ``[BLOCK_K]``."""
    # invalid keys are masked by adding -inf: one fused multiply-add per score
    z = s * qk_scale + bias[None, :]
    m_new = gl.maximum(m_i, gl.max(z, axis=1))
    # rows with no valid key so far keep m = -inf; shift by 0 there so nothing turns NaN
    m_safe = gl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = gl.exp2(m_i - m_safe)
    l_i = l_i * alpha + gl.sum(gl.exp2(z - m_safe[:, None]), axis=1)
    return m_new, l_i


@gluon.jit
def _load_scores(x_row, offs_k, bias, stride_xk, COMPUTE_LOSS: gl.constexpr):
    """index_score of one block in fp32 on the valid entries (0 elsewhere; all 0 without a
    loss, when it is not read)."""
    x = gl.zeros_like(bias)
    if COMPUTE_LOSS:
        x = gl.load(x_row + offs_k * stride_xk, mask=bias == 0.0, other=0.0).to(gl.float32)
    return x


@gluon.jit
def _probs_and_kl(
    s,
    bias,
    x,
    lse_h,
    kl_lanes,
    p_row,
    offs_k,
    inv_h,
    TOPK,
    qk_scale,
    lse_x,
    eps,
    KEYS: gl.constexpr,
    STORE_P: gl.constexpr,
    STORE_DIFF: gl.constexpr,
    COMPUTE_LOSS: gl.constexpr,
):
    """Sweep 2, one block: ``p = Σ_h P[h, j] / H`` from ``s`` ``[BLOCK_K, BLOCK_H]`` (keys on
    rows, so the head sum stays inside a warp), then its store and the KL terms. The
    per-key work runs in the compact layout ``KEYS`` of ``bias``, ``x`` and ``offs_k``
    (the head sum leaves each key's value on 4 lanes)."""
    # padding heads and empty rows carry lse = +inf: their terms are exactly 0; invalid keys
    # (zero rows) are dropped after the head sum, on the [BLOCK_K] vector
    p = gl.sum(gl.exp2(s * qk_scale - lse_h[None, :]), axis=1)
    p = gl.convert_layout(p, KEYS)
    valid = bias == 0.0
    p = gl.where(valid, p, 0.0) * inv_h
    if STORE_P:
        gl.store(p_row + offs_k, p, mask=offs_k < TOPK)
    if COMPUTE_LOSS:
        q = gl.exp2((x - lse_x) * _LOG2E)
        # eps guards the logarithms only; entries with p = 0 contribute 0.
        terms = p * (gl.log(p + eps) - gl.log(q + eps))
        kl_lanes += gl.where(valid & (p > 0.0), terms, 0.0)
        if STORE_DIFF:
            gl.store(p_row + offs_k, gl.where(valid, q - p, 0.0), mask=offs_k < TOPK)
    return kl_lanes


@gluon.jit
def sparse_indexer_fwd_hopper_kernel(
    q_ptr,
    k_ptr,
    x_ptr,
    idx_ptr,
    loss_ptr,
    p_ptr,
    lse_ptr,
    nvalid_ptr,
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
    stride_kb,
    stride_kl,
    stride_xb,
    stride_xs,
    stride_xk,
    stride_ib,
    stride_is,
    stride_ik,
    HEAD_DIM: gl.constexpr,
    BLOCK_H: gl.constexpr,
    BLOCK_K: gl.constexpr,
    BLOCK_X: gl.constexpr,
    NUM_BUF: gl.constexpr,
    GATHER: gl.constexpr,
    STORE_P: gl.constexpr,
    STORE_DIFF: gl.constexpr,
    COMPUTE_LOSS: gl.constexpr,
    WIDE_KEYS: gl.constexpr,
):
    """Forward for one query row, 4 warps (one warpgroup). Arguments as the Triton kernel's,
    with unit strides along the head dim of query and key (not passed). ``GATHER``: the
    blocked layout of a ``[BLOCK_K, HEAD_DIM]`` tile for 16-byte copies."""
    gl.static_assert(NUM_BUF >= 2, "NUM_BUF: at least two key buffers")
    dtype: gl.constexpr = q_ptr.dtype.element_ty
    # heads on M for sweep 1 (the per-head reductions stay inside a warp), keys on M for
    # sweep 2 (the head sum stays inside a warp)
    MMA1: gl.constexpr = gl.NVMMADistributedLayout(
        version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, BLOCK_K, 16]
    )
    MMA2: gl.constexpr = gl.NVMMADistributedLayout(
        version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, BLOCK_H, 16]
    )
    SMEM: gl.constexpr = gl.NVMMASharedLayout(swizzle_byte_width=128, element_bitwidth=16, rank=2)
    VEC: gl.constexpr = gl.BlockedLayout([4], [32], [4], [0])
    KEYS: gl.constexpr = gl.BlockedLayout([1], [32], [4], [0])  # per-key vectors, compact

    row = gl.program_id(0)
    b = row // S
    t = row % S
    last_pos = chunk_offset + t
    q_row = q_ptr + b.to(gl.int64) * stride_qb + t.to(gl.int64) * stride_qs
    k_bat = k_ptr + b.to(gl.int64) * stride_kb
    x_row = x_ptr + b.to(gl.int64) * stride_xb + t.to(gl.int64) * stride_xs
    i_row = idx_ptr + b.to(gl.int64) * stride_ib + t.to(gl.int64) * stride_is
    p_row = p_ptr + row.to(gl.int64) * TOPK
    n_blocks = gl.cdiv(TOPK, BLOCK_K)

    # The key ring with its key biases (one more bias slot than key buffers: a slot is
    # refilled only after every warp has read it) and the query tile (zero rows past H).
    kbuf = gl.allocate_shared_memory(dtype, [NUM_BUF, BLOCK_K, HEAD_DIM], SMEM)
    bias_ring = gl.allocate_shared_memory(
        gl.float32, [NUM_BUF + 1, BLOCK_K], gl.SwizzledSharedLayout(1, 1, 1, [0])
    )
    offs_h = gl.arange(0, BLOCK_H, layout=gl.SliceLayout(1, GATHER))
    offs_d = gl.arange(0, HEAD_DIM, layout=gl.SliceLayout(0, GATHER))
    q = gl.load(
        q_row + offs_h[:, None].to(gl.int64) * stride_qh + offs_d[None, :],
        mask=(offs_h < H)[:, None],
        other=0.0,
    )
    q_smem = gl.allocate_shared_memory(dtype, [BLOCK_H, HEAD_DIM], SMEM, q)

    # Sweep 1 gathers start first; sweep 0 runs while they are in flight.
    idx_next = _start_ring(
        k_bat,
        kbuf,
        bias_ring,
        i_row,
        TOPK,
        L,
        last_pos,
        stride_ik,
        stride_kl,
        BLOCK_K,
        NUM_BUF,
        HEAD_DIM,
        GATHER,
        WIDE_KEYS,
    )

    # Sweep 0: softmax statistics of index_score over the valid entries.
    lse_x = 0.0
    if COMPUTE_LOSS:
        m_x = gl.max(gl.full([BLOCK_X], float("-inf"), gl.float32, VEC), axis=0)
        l_x = gl.sum(gl.zeros([BLOCK_X], gl.float32, VEC), axis=0)
        n_x = gl.sum(gl.zeros([BLOCK_X], gl.int32, VEC), axis=0)
        for k0 in range(0, TOPK, BLOCK_X):
            offs_x = k0 + gl.arange(0, BLOCK_X, layout=VEC)
            inb = offs_x < TOPK
            idx_x = gl.load(i_row + offs_x * stride_ik, mask=inb, other=-1)
            valid = inb & (idx_x >= 0) & (idx_x < L) & (idx_x <= last_pos)
            x = gl.load(x_row + offs_x * stride_xk, mask=valid, other=float("-inf"))
            x = x.to(gl.float32) * _LOG2E
            m_new = gl.maximum(m_x, gl.max(x, axis=0))
            m_safe = gl.where(m_new == float("-inf"), 0.0, m_new)
            l_x = l_x * gl.exp2(m_x - m_safe) + gl.sum(gl.exp2(x - m_safe), axis=0)
            m_x = m_new
            n_x += gl.sum(valid.to(gl.int32), axis=0)
        lse_x = (m_x + gl.log2(l_x)) * _LN2
        gl.store(lse_ptr + row, lse_x)
        gl.store(nvalid_ptr + row, n_x)

    # Sweep 1: per-head log-sum-exp. The matmul of block j + 1 runs during the softmax of
    # block j; the indices of the block gathered next are loaded one step ahead.
    BIAS1: gl.constexpr = gl.SliceLayout(0, MMA1)
    zero1 = gl.zeros([BLOCK_H, BLOCK_K], gl.float32, MMA1)
    m_i = gl.full([BLOCK_H], float("-inf"), gl.float32, gl.SliceLayout(1, MMA1))
    l_i = gl.zeros([BLOCK_H], gl.float32, gl.SliceLayout(1, MMA1))
    _keys_ready(NUM_BUF - 1)
    s = warpgroup_mma(q_smem, kbuf.index(0).permute((1, 0)), zero1, use_acc=False)
    for j in range(n_blocks - 1):
        _keys_ready(NUM_BUF - 2)
        nxt = warpgroup_mma(
            q_smem,
            kbuf.index((j + 1) % NUM_BUF).permute((1, 0)),
            zero1,
            use_acc=False,
            is_async=True,
        )
        bias = bias_ring.index(j % (NUM_BUF + 1)).load(BIAS1)
        # block j's buffer is free (its matmul is done): refill it NUM_BUF blocks ahead
        idx_next = _gather_block(
            k_bat,
            kbuf,
            bias_ring,
            idx_next,
            i_row,
            j + NUM_BUF,
            TOPK,
            L,
            last_pos,
            stride_ik,
            stride_kl,
            BLOCK_K,
            NUM_BUF,
            HEAD_DIM,
            GATHER,
            WIDE_KEYS,
        )
        m_i, l_i = _lse_update(s, m_i, l_i, bias, qk_scale)
        s = warpgroup_mma_wait(0, deps=[nxt])
    bias = bias_ring.index((n_blocks - 1) % (NUM_BUF + 1)).load(BIAS1)
    m_i, l_i = _lse_update(s, m_i, l_i, bias, qk_scale)
    lse_h = gl.convert_layout(m_i + gl.log2(l_i), gl.SliceLayout(0, MMA2))
    heads = gl.arange(0, BLOCK_H, layout=gl.SliceLayout(0, MMA2))
    lse_h = gl.where((heads < H) & (lse_h > float("-inf")), lse_h, float("inf"))

    # Sweep 2: the ring is refilled from block 0 once every warp is done with sweep 1.
    _keys_ready(0)
    idx_next = _start_ring(
        k_bat,
        kbuf,
        bias_ring,
        i_row,
        TOPK,
        L,
        last_pos,
        stride_ik,
        stride_kl,
        BLOCK_K,
        NUM_BUF,
        HEAD_DIM,
        GATHER,
        WIDE_KEYS,
    )
    zero2 = gl.zeros([BLOCK_K, BLOCK_H], gl.float32, MMA2)
    kl_lanes = gl.zeros([BLOCK_K], gl.float32, KEYS)
    inv_h = 1.0 / H
    q_t = q_smem.permute((1, 0))
    _keys_ready(NUM_BUF - 1)
    s = warpgroup_mma(kbuf.index(0), q_t, zero2, use_acc=False)
    for j in range(n_blocks - 1):
        _keys_ready(NUM_BUF - 2)
        nxt = warpgroup_mma(kbuf.index((j + 1) % NUM_BUF), q_t, zero2, use_acc=False, is_async=True)
        # this block's key bias and index scores, in flight while the gather is issued
        bias2 = bias_ring.index(j % (NUM_BUF + 1)).load(KEYS)
        offs_k = j * BLOCK_K + gl.arange(0, BLOCK_K, layout=KEYS)
        x = _load_scores(x_row, offs_k, bias2, stride_xk, COMPUTE_LOSS)
        idx_next = _gather_block(
            k_bat,
            kbuf,
            bias_ring,
            idx_next,
            i_row,
            j + NUM_BUF,
            TOPK,
            L,
            last_pos,
            stride_ik,
            stride_kl,
            BLOCK_K,
            NUM_BUF,
            HEAD_DIM,
            GATHER,
            WIDE_KEYS,
        )
        kl_lanes = _probs_and_kl(
            s,
            bias2,
            x,
            lse_h,
            kl_lanes,
            p_row,
            offs_k,
            inv_h,
            TOPK,
            qk_scale,
            lse_x,
            eps,
            KEYS,
            STORE_P,
            STORE_DIFF,
            COMPUTE_LOSS,
        )
        s = warpgroup_mma_wait(0, deps=[nxt])
    bias2 = bias_ring.index((n_blocks - 1) % (NUM_BUF + 1)).load(KEYS)
    offs_k = (n_blocks - 1) * BLOCK_K + gl.arange(0, BLOCK_K, layout=KEYS)
    x = _load_scores(x_row, offs_k, bias2, stride_xk, COMPUTE_LOSS)
    kl_lanes = _probs_and_kl(
        s,
        bias2,
        x,
        lse_h,
        kl_lanes,
        p_row,
        offs_k,
        inv_h,
        TOPK,
        qk_scale,
        lse_x,
        eps,
        KEYS,
        STORE_P,
        STORE_DIFF,
        COMPUTE_LOSS,
    )
    # the trailing (empty) gathers must land before the program exits
    async_copy.wait_group(0)
    if COMPUTE_LOSS:
        gl.store(loss_ptr + row, gl.sum(kl_lanes, axis=0))
