"""The sparse attention target ``p`` for Hopper (sm_90), written in Gluon.

One program per query row, as :mod:`indexer_loss.kernels.sparse`, restricted to one head
block (H <= 64, padded to 64 heads), a head dim of 64 or 128, fp16/bf16 and unit last-dim
strides. Two sweeps over the row's top-k keys:

1. per-head log-sum-exp of the scores over the valid keys;
2. ``p = Σ_h P[h, j] / H`` per key, stored to ``p_ptr`` (0 on invalid entries, or -1 as a
   validity mark for :mod:`indexer_loss.kernels.row_loss`, which adds the loss).

What Gluon adds over the Triton kernel is control of when the tensor cores are waited on and
of the shared-memory traffic. In both sweeps the matmul of the next key block stays in
flight (``warpgroup_mma(..., is_async=True)``) while the softmax of the current block runs,
and the key rows of the block after it are gathered with ``cp.async`` into a two-slot ring.
The loops are unrolled by two so that every ring slot is a separate static buffer: the
compiler then adds no barrier between the matmul reading one slot and the gather writing the
other, the two accumulators alternate without register moves, and each key block costs one
block-wide barrier.

Sweep 1 sums ``exp2(s - ref_h)`` against a fixed reference per head (block 0's maximum plus
a margin) instead of an online maximum: per score one multiply-add, one exponential and one
multiply-add, and no reduction across lanes that the exponentials wait on. Where that
reference does not fit the row (block 0 has no valid key, or a later score overflows
``exp2``), the sum comes out inf or NaN and the row runs sweep 1 again with the online
maximum.

The Triton interpreter cannot run Gluon: this kernel runs only on a GPU and is checked there
against the reference and the Triton kernel (``tests/test_sparse_gpu.py``).
"""

from __future__ import annotations

from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.ampere import async_copy
from triton.experimental.gluon.language.nvidia.hopper import warpgroup_mma, warpgroup_mma_wait

# Gluon is experimental and renames things between Triton releases:
# thread_barrier / barrier, async_copy_global_to_shared / async_load.
_block_barrier = getattr(gl, "thread_barrier", None) or gl.barrier
_async_load = getattr(async_copy, "async_load", None) or async_copy.async_copy_global_to_shared


@gluon.jit
def _load_indices(i_row, k0, TOPK, stride_ik, BLOCK_K: gl.constexpr, layout: gl.constexpr):
    """The raw indices of one top-k block (-1 past the end), ``[BLOCK_K]`` in ``layout``."""
    offs_k = k0 + gl.arange(0, BLOCK_K, layout=layout)
    return gl.load(i_row + offs_k * stride_ik, mask=offs_k < TOPK, other=-1)


@gluon.jit
def _gather(
    k_bat,
    kbuf,
    idx,
    i_row,
    blk,
    TOPK,
    L,
    last_pos,
    stride_ik,
    stride_kl,
    BLOCK_K: gl.constexpr,
    HEAD_DIM: gl.constexpr,
    GATHER: gl.constexpr,
    WIDE_KEYS: gl.constexpr,
):
    """Start copying the key rows of top-k block ``blk`` (indices ``idx``, loaded one step
    earlier in ``SliceLayout(1, GATHER)``) into ``kbuf`` as one cp.async group, zeros for
    invalid entries. Returns the indices of block ``blk + 1`` (their load is in flight while
    the caller works) and this block's validity (its key mask is stored one step later,
    when no warp reads that mask slot any more)."""
    valid = (idx >= 0) & (idx < L) & (idx <= last_pos)
    rows = gl.where(valid, idx, 0)
    if WIDE_KEYS:
        key_off = rows.to(gl.int64) * stride_kl
    else:
        key_off = rows.to(gl.int32) * stride_kl
    offs_d = gl.arange(0, HEAD_DIM, layout=gl.SliceLayout(0, GATHER))
    _async_load(kbuf, k_bat + key_off[:, None] + offs_d[None, :], mask=valid[:, None])
    async_copy.commit_group()
    idx_next = _load_indices(
        i_row, (blk + 1) * BLOCK_K, TOPK, stride_ik, BLOCK_K, gl.SliceLayout(1, GATHER)
    )
    return idx_next, valid


@gluon.jit
def _start_ring(
    k_bat,
    kbuf0,
    kbuf1,
    keep0,
    i_row,
    TOPK,
    L,
    last_pos,
    stride_ik,
    stride_kl,
    BLOCK_K: gl.constexpr,
    HEAD_DIM: gl.constexpr,
    GATHER: gl.constexpr,
    WIDE_KEYS: gl.constexpr,
):
    """Start the gathers of blocks 0 and 1 and store block 0's key mask. Returns the
    indices of block 2 and the validity of block 1."""
    idx = _load_indices(i_row, 0, TOPK, stride_ik, BLOCK_K, gl.SliceLayout(1, GATHER))
    idx, valid = _gather(
        k_bat, kbuf0, idx, i_row, 0, TOPK, L, last_pos, stride_ik, stride_kl,
        BLOCK_K, HEAD_DIM, GATHER, WIDE_KEYS,
    )  # fmt: skip
    keep0.store(_key_mask(valid))
    return _gather(
        k_bat, kbuf1, idx, i_row, 1, TOPK, L, last_pos, stride_ik, stride_kl,
        BLOCK_K, HEAD_DIM, GATHER, WIDE_KEYS,
    )  # fmt: skip


@gluon.jit
def _keys_ready(PENDING: gl.constexpr):
    """Wait until at most PENDING of this thread's gather groups are in flight, make its
    copies visible to the tensor cores (async proxy), then one block-wide barrier. The wait
    and the fence are one asm statement: with Gluon's own wait the compiler adds a barrier
    between the two, which would make it two barriers per key block."""
    if PENDING == 0:
        asm: gl.constexpr = "cp.async.wait_group 0; fence.proxy.async.shared::cta; mov.u32 $0, 0;"
    else:
        asm: gl.constexpr = "cp.async.wait_group 1; fence.proxy.async.shared::cta; mov.u32 $0, 0;"
    one_per_thread: gl.constexpr = gl.BlockedLayout([1], [32], [4], [0])
    gl.inline_asm_elementwise(
        asm,
        "=r,r",
        [gl.full([128], 0, gl.int32, one_per_thread)],
        dtype=gl.int32,
        is_pure=False,
        pack=1,
    )
    _block_barrier()


@gluon.jit
def _key_mask(valid):
    """1 on valid keys, 0 on the others."""
    return gl.where(valid, 1.0, 0.0)


@gluon.jit
def _lse_step(s, st0, st1, keep, qk_scale, EXACT: gl.constexpr):
    """Sweep 1, one block of scores ``s`` ``[BLOCK_H, BLOCK_K]`` (heads on rows), ``keep``
    ``[BLOCK_K]`` (1 on valid keys). EXACT: online max ``st0`` and sum ``st1`` per head.
    Otherwise ``st0`` is a fixed reference per head and ``st1`` the sum of
    ``exp2(score - reference)``: a multiply-add, an exponential and a multiply-add into the
    sum per score, and no maximum that the exponentials have to wait for."""
    if EXACT:
        z = gl.where(keep[None, :] != 0.0, s * qk_scale, float("-inf"))
        m_new = gl.maximum(st0, gl.max(z, axis=1))
        # rows with no valid key so far keep m = -inf; shift by 0 there so nothing turns NaN
        m_safe = gl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = gl.exp2(st0 - m_safe)
        st1 = st1 * alpha + gl.sum(gl.exp2(z - m_safe[:, None]), axis=1)
        st0 = m_new
    else:
        st1 = st1 + gl.sum(gl.exp2(s * qk_scale - st0[:, None]) * keep[None, :], axis=1)
    return st0, st1


@gluon.jit
def _store_p(
    s,
    keep,
    lse_h,
    inv_h,
    qk_scale,
    p_row,
    blk,
    TOPK,
    BLOCK_K: gl.constexpr,
    MMA2: gl.constexpr,
    MARK_INVALID: gl.constexpr,
):
    """Sweep 2, one block: ``p = Σ_h P[h, j] / H`` from ``s`` ``[BLOCK_K, BLOCK_H]`` (keys on
    rows, so the head sum stays inside a warp), stored with 0 (or -1 when MARK_INVALID) on
    invalid keys. Padding heads and empty rows carry ``lse = +inf``: their terms are 0."""
    p = gl.sum(gl.exp2(s * qk_scale - lse_h[None, :]), axis=1)
    # a select, not a multiply by keep: an invalid key's exp2 can be inf (its score is 0)
    if MARK_INVALID:
        p = gl.where(keep != 0.0, p * inv_h, -1.0)
    else:
        p = gl.where(keep != 0.0, p * inv_h, 0.0)
    offs_k = blk * BLOCK_K + gl.arange(0, BLOCK_K, layout=gl.SliceLayout(1, MMA2))
    gl.store(p_row + offs_k, p, mask=offs_k < TOPK)


@gluon.jit
def _advance_ring(
    keep_cur,
    keep_next,
    valid_next,
    kbuf_free,
    idx_next,
    k_bat,
    i_row,
    blk,
    TOPK,
    L,
    last_pos,
    stride_ik,
    stride_kl,
    BLOCK_K: gl.constexpr,
    HEAD_DIM: gl.constexpr,
    GATHER: gl.constexpr,
    WIDE_KEYS: gl.constexpr,
    KEEP_LAYOUT: gl.constexpr,
):
    """The ring work of step ``blk`` in either sweep, once the next block's matmul is
    issued: read this block's key mask (in ``KEEP_LAYOUT``), store block blk + 1's, and
    start gathering block blk + 2 into the slot this block's matmul has released. Returns
    the mask, the indices of block blk + 3 and the validity of block blk + 2."""
    keep = keep_cur.load(KEEP_LAYOUT)
    keep_next.store(_key_mask(valid_next))
    idx_next, valid_next = _gather(
        k_bat, kbuf_free, idx_next, i_row, blk + 2, TOPK, L, last_pos, stride_ik, stride_kl,
        BLOCK_K, HEAD_DIM, GATHER, WIDE_KEYS,
    )  # fmt: skip
    return keep, idx_next, valid_next


@gluon.jit
def _sweep1_step(
    s,
    m_i,
    l_i,
    idx_next,
    valid_next,
    q_smem,
    kbuf_next,
    kbuf_free,
    keep_cur,
    keep_next,
    k_bat,
    i_row,
    blk,
    TOPK,
    L,
    last_pos,
    stride_ik,
    stride_kl,
    qk_scale,
    BLOCK_K: gl.constexpr,
    HEAD_DIM: gl.constexpr,
    GATHER: gl.constexpr,
    WIDE_KEYS: gl.constexpr,
    MMA1: gl.constexpr,
    EXACT: gl.constexpr,
):
    """Sweep 1, block ``blk``: its scores ``s`` are in registers and its key mask in
    ``keep_cur``; block blk + 1's keys land in ``kbuf_next`` (its validity: ``valid_next``);
    this block's slot ``kbuf_free`` takes block blk + 2. Returns the scores of blk + 1."""
    _keys_ready(0)
    zero = gl.zeros(s.shape, gl.float32, MMA1)
    nxt = warpgroup_mma(q_smem, kbuf_next.permute((1, 0)), zero, use_acc=False, is_async=True)
    keep, idx_next, valid_next = _advance_ring(
        keep_cur, keep_next, valid_next, kbuf_free, idx_next, k_bat, i_row, blk, TOPK, L,
        last_pos, stride_ik, stride_kl, BLOCK_K, HEAD_DIM, GATHER, WIDE_KEYS,
        gl.SliceLayout(0, MMA1),
    )  # fmt: skip
    m_i, l_i = _lse_step(s, m_i, l_i, keep, qk_scale, EXACT)
    s = warpgroup_mma_wait(0, deps=[nxt])
    return s, m_i, l_i, idx_next, valid_next


@gluon.jit
def _sweep2_step(
    s,
    idx_next,
    valid_next,
    q_t,
    kbuf_next,
    kbuf_free,
    keep_cur,
    keep_next,
    lse_h,
    inv_h,
    k_bat,
    i_row,
    p_row,
    blk,
    TOPK,
    L,
    last_pos,
    stride_ik,
    stride_kl,
    qk_scale,
    BLOCK_K: gl.constexpr,
    HEAD_DIM: gl.constexpr,
    GATHER: gl.constexpr,
    WIDE_KEYS: gl.constexpr,
    MMA2: gl.constexpr,
    MARK_INVALID: gl.constexpr,
):
    """Sweep 2, block ``blk``: as :func:`_sweep1_step`, with keys on the matmul's rows;
    stores the block's ``p``."""
    _keys_ready(0)
    zero = gl.zeros(s.shape, gl.float32, MMA2)
    nxt = warpgroup_mma(kbuf_next, q_t, zero, use_acc=False, is_async=True)
    keep, idx_next, valid_next = _advance_ring(
        keep_cur, keep_next, valid_next, kbuf_free, idx_next, k_bat, i_row, blk, TOPK, L,
        last_pos, stride_ik, stride_kl, BLOCK_K, HEAD_DIM, GATHER, WIDE_KEYS,
        gl.SliceLayout(1, MMA2),
    )  # fmt: skip
    _store_p(s, keep, lse_h, inv_h, qk_scale, p_row, blk, TOPK, BLOCK_K, MMA2, MARK_INVALID)
    s = warpgroup_mma_wait(0, deps=[nxt])
    return s, idx_next, valid_next


# Reference per head for the bounded sweep: block 0's maximum plus this margin (base 2). The
# largest term is then at least 2^-64, terms below 2^-126 of it flush to 0 (at most 2^-62
# relative each), and a later score has to exceed block 0's maximum by about 190 before
# anything overflows; the caller detects that (inf or NaN) and redoes the sweep exactly.
_REF_MARGIN: gl.constexpr = gl.constexpr(64.0)


@gluon.jit
def _sweep1(
    q_smem,
    kbuf0,
    kbuf1,
    keep0,
    keep1,
    k_bat,
    i_row,
    n_pairs,
    TOPK,
    L,
    last_pos,
    stride_ik,
    stride_kl,
    qk_scale,
    BLOCK_H: gl.constexpr,
    BLOCK_K: gl.constexpr,
    HEAD_DIM: gl.constexpr,
    GATHER: gl.constexpr,
    WIDE_KEYS: gl.constexpr,
    MMA1: gl.constexpr,
    EXACT: gl.constexpr,
):
    """Sweep 1: the per-head log-sum-exp (base 2) of the scaled scores over the valid keys,
    ``[BLOCK_H]`` in ``SliceLayout(1, MMA1)``; -inf for a row without valid keys (EXACT),
    inf or NaN where the bounded form cannot be used. Each step issues the matmul of the
    next block, starts the gather of the block after it and adds up the current one."""
    last = 2 * n_pairs - 2
    idx_next, valid_next = _start_ring(
        k_bat, kbuf0, kbuf1, keep0, i_row, TOPK, L, last_pos, stride_ik, stride_kl,
        BLOCK_K, HEAD_DIM, GATHER, WIDE_KEYS,
    )  # fmt: skip
    _keys_ready(1)
    s = warpgroup_mma(
        q_smem, kbuf0.permute((1, 0)), gl.zeros([BLOCK_H, BLOCK_K], gl.float32, MMA1),
        use_acc=False,
    )  # fmt: skip
    if EXACT:
        st0 = gl.full([BLOCK_H], float("-inf"), gl.float32, gl.SliceLayout(1, MMA1))
        st1 = gl.zeros([BLOCK_H], gl.float32, gl.SliceLayout(1, MMA1))
    else:
        keep = keep0.load(gl.SliceLayout(0, MMA1))
        z = gl.where(keep[None, :] != 0.0, s * qk_scale, float("-inf"))
        st0 = gl.max(z, axis=1) + _REF_MARGIN
        st1 = gl.zeros([BLOCK_H], gl.float32, gl.SliceLayout(1, MMA1))
    for pair in range(n_pairs - 1):  # all pairs but the last
        blk = 2 * pair
        s, st0, st1, idx_next, valid_next = _sweep1_step(
            s, st0, st1, idx_next, valid_next, q_smem, kbuf1, kbuf0, keep0, keep1,
            k_bat, i_row, blk, TOPK, L, last_pos, stride_ik, stride_kl, qk_scale,
            BLOCK_K, HEAD_DIM, GATHER, WIDE_KEYS, MMA1, EXACT,
        )  # fmt: skip
        s, st0, st1, idx_next, valid_next = _sweep1_step(
            s, st0, st1, idx_next, valid_next, q_smem, kbuf0, kbuf1, keep1, keep0,
            k_bat, i_row, blk + 1, TOPK, L, last_pos, stride_ik, stride_kl, qk_scale,
            BLOCK_K, HEAD_DIM, GATHER, WIDE_KEYS, MMA1, EXACT,
        )  # fmt: skip
    s, st0, st1, idx_next, valid_next = _sweep1_step(
        s, st0, st1, idx_next, valid_next, q_smem, kbuf1, kbuf0, keep0, keep1,
        k_bat, i_row, last, TOPK, L, last_pos, stride_ik, stride_kl, qk_scale,
        BLOCK_K, HEAD_DIM, GATHER, WIDE_KEYS, MMA1, EXACT,
    )  # fmt: skip
    # the last block (odd, in slot 1) has no next matmul
    _block_barrier()
    st0, st1 = _lse_step(s, st0, st1, keep1.load(gl.SliceLayout(0, MMA1)), qk_scale, EXACT)
    return st0 + gl.log2(st1)


@gluon.jit
def sparse_indexer_fwd_hopper_kernel(
    q_ptr,
    k_ptr,
    idx_ptr,
    p_ptr,
    S,
    H,
    L,
    TOPK,
    chunk_offset,
    qk_scale,
    stride_qb,
    stride_qh,
    stride_qs,
    stride_kb,
    stride_kl,
    stride_ib,
    stride_is,
    stride_ik,
    HEAD_DIM: gl.constexpr,
    BLOCK_H: gl.constexpr,
    BLOCK_K: gl.constexpr,
    GATHER: gl.constexpr,
    MARK_INVALID: gl.constexpr,
    WIDE_KEYS: gl.constexpr,
):
    """The target of one query row, 4 warps (one warpgroup). Arguments as the Triton
    kernel's, with unit strides along the head dim of query and key (not passed). Writes
    ``p`` into the contiguous ``[rows, TOPK]`` fp32 buffer ``p_ptr``, with 0 on invalid
    entries, or -1 there when MARK_INVALID. ``GATHER``: the blocked layout of a
    ``[BLOCK_K, HEAD_DIM]`` tile for 16-byte copies."""
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
    FLAT: gl.constexpr = gl.SwizzledSharedLayout(1, 1, 1, [0])

    row = gl.program_id(0)
    b = row // S
    t = row % S
    last_pos = chunk_offset + t
    q_row = q_ptr + b.to(gl.int64) * stride_qb + t.to(gl.int64) * stride_qs
    k_bat = k_ptr + b.to(gl.int64) * stride_kb
    i_row = idx_ptr + b.to(gl.int64) * stride_ib + t.to(gl.int64) * stride_is
    p_row = p_ptr + row.to(gl.int64) * TOPK
    # Blocks go in pairs, one per ring slot; an odd count gets an empty last block (all its
    # indices read as -1), which adds nothing to any sum and stores nothing.
    n_pairs = (gl.cdiv(TOPK, BLOCK_K) + 1) // 2
    last = 2 * n_pairs - 2  # the first block of the last pair

    # The ring: two key slots and their key masks, each its own allocation so that the
    # compiler sees which one a matmul reads and a gather writes. A mask is stored one step
    # after its gather starts, when no warp reads that slot any more.
    kbuf0 = gl.allocate_shared_memory(dtype, [BLOCK_K, HEAD_DIM], SMEM)
    kbuf1 = gl.allocate_shared_memory(dtype, [BLOCK_K, HEAD_DIM], SMEM)
    keep0 = gl.allocate_shared_memory(gl.float32, [BLOCK_K], FLAT)
    keep1 = gl.allocate_shared_memory(gl.float32, [BLOCK_K], FLAT)
    offs_h = gl.arange(0, BLOCK_H, layout=gl.SliceLayout(1, GATHER))
    offs_d = gl.arange(0, HEAD_DIM, layout=gl.SliceLayout(0, GATHER))
    q = gl.load(
        q_row + offs_h[:, None].to(gl.int64) * stride_qh + offs_d[None, :],
        mask=(offs_h < H)[:, None],
        other=0.0,
    )
    q_smem = gl.allocate_shared_memory(dtype, [BLOCK_H, HEAD_DIM], SMEM, q)

    # Sweep 1: per-head log-sum-exp (base 2), against a fixed reference per head; rows
    # where that reference turns out unusable take the online-max sweep instead.
    lse_h = _sweep1(
        q_smem, kbuf0, kbuf1, keep0, keep1, k_bat, i_row, n_pairs, TOPK, L, last_pos,
        stride_ik, stride_kl, qk_scale, BLOCK_H, BLOCK_K, HEAD_DIM, GATHER, WIDE_KEYS, MMA1,
        False,
    )  # fmt: skip
    redo = gl.max(gl.where(lse_h < float("inf"), 0, 1), axis=0)
    if redo > 0:
        _keys_ready(0)
        lse_h = _sweep1(
            q_smem, kbuf0, kbuf1, keep0, keep1, k_bat, i_row, n_pairs, TOPK, L, last_pos,
            stride_ik, stride_kl, qk_scale, BLOCK_H, BLOCK_K, HEAD_DIM, GATHER, WIDE_KEYS,
            MMA1, True,
        )  # fmt: skip
    lse_h = gl.convert_layout(lse_h, gl.SliceLayout(0, MMA2))
    heads = gl.arange(0, BLOCK_H, layout=gl.SliceLayout(0, MMA2))
    lse_h = gl.where((heads < H) & (lse_h > float("-inf")), lse_h, float("inf"))

    # Sweep 2: the ring restarts once the trailing (empty) gathers of sweep 1 have landed
    # and every warp is done with it.
    _keys_ready(0)
    idx_next, valid_next = _start_ring(
        k_bat, kbuf0, kbuf1, keep0, i_row, TOPK, L, last_pos, stride_ik, stride_kl,
        BLOCK_K, HEAD_DIM, GATHER, WIDE_KEYS,
    )  # fmt: skip
    inv_h = 1.0 / H
    q_t = q_smem.permute((1, 0))
    _keys_ready(1)
    s = warpgroup_mma(kbuf0, q_t, gl.zeros([BLOCK_K, BLOCK_H], gl.float32, MMA2), use_acc=False)
    for pair in range(n_pairs - 1):
        blk = 2 * pair
        s, idx_next, valid_next = _sweep2_step(
            s, idx_next, valid_next, q_t, kbuf1, kbuf0, keep0, keep1, lse_h, inv_h,
            k_bat, i_row, p_row, blk, TOPK, L, last_pos, stride_ik, stride_kl, qk_scale,
            BLOCK_K, HEAD_DIM, GATHER, WIDE_KEYS, MMA2, MARK_INVALID,
        )  # fmt: skip
        s, idx_next, valid_next = _sweep2_step(
            s, idx_next, valid_next, q_t, kbuf0, kbuf1, keep1, keep0, lse_h, inv_h,
            k_bat, i_row, p_row, blk + 1, TOPK, L, last_pos, stride_ik, stride_kl, qk_scale,
            BLOCK_K, HEAD_DIM, GATHER, WIDE_KEYS, MMA2, MARK_INVALID,
        )  # fmt: skip
    s, idx_next, valid_next = _sweep2_step(
        s, idx_next, valid_next, q_t, kbuf1, kbuf0, keep0, keep1, lse_h, inv_h,
        k_bat, i_row, p_row, last, TOPK, L, last_pos, stride_ik, stride_kl, qk_scale,
        BLOCK_K, HEAD_DIM, GATHER, WIDE_KEYS, MMA2, MARK_INVALID,
    )  # fmt: skip
    _block_barrier()
    keep = keep1.load(gl.SliceLayout(1, MMA2))
    _store_p(s, keep, lse_h, inv_h, qk_scale, p_row, last + 1, TOPK, BLOCK_K, MMA2, MARK_INVALID)
    # the trailing gathers land before the program exits
    _keys_ready(0)
