"""The sparse attention target ``p`` for Hopper (sm_90), written in Gluon, warp-specialised.

One program per query row, as :mod:`indexer_loss.kernels.sparse`, restricted to one head
block (H <= 64, padded to 64 heads), a head dim of 64 or 128, fp16/bf16 and unit last-dim
strides. Two sweeps over the row's top-k keys:

1. per-head log-sum-exp of the scores over the valid keys;
2. ``p = Σ_h P[h, j] / H`` per key, stored to ``p_ptr`` (0 on invalid entries, or -1 as a
   validity mark for :mod:`indexer_loss.kernels.row_loss`, which adds the loss).

Two partitions share each program:

- a **producer** warpgroup gathers the key rows of each 64-key block with ``cp.async`` into
  a ring of shared-memory slots, stores the block's key mask beside them, and signals the
  slot's ``full`` mbarrier once its copies land. It replays the row's blocks once per
  sweep: every sweep reads the same blocks in the same order.
- the **consumer** warpgroup runs the matmuls and the softmax, and hands each slot back on
  its ``empty`` mbarrier once the slot's matmul has read it. In sweep 1 the query is the
  matmul's left operand in registers, so that the wgmma reads only the keys from shared
  memory (whose bandwidth the gathers' copies share). In sweep 2, where both operands come
  from shared memory, it keeps the next block's matmul in flight
  (``warpgroup_mma(..., is_async=True)``) while it works on the current block.

So the gathers run ahead of the matmuls by the whole ring instead of one step, and the
consumer issues no address arithmetic or copies. ``setmaxnreg`` splits the registers: the
producer keeps PRODUCER_REGS a thread, the consumer the rest.

Sweep 1 sums ``exp2(s - ref_h)`` against a fixed reference per head (block 0's maximum plus
a margin) instead of an online maximum: per score one multiply-add, one exponential and one
multiply-add into the sum, and no reduction across lanes that the exponentials wait on.
Where that reference does not fit the row (block 0 has no valid key, or a later score
overflows ``exp2``), the sum comes out inf or NaN and the row runs sweep 1 again with the
online maximum; the consumer tells the producer through a flag in shared memory, so that the
producer replays the blocks a third time.

The Triton interpreter cannot run Gluon: this kernel runs only on a GPU and is checked there
against the reference and the Triton kernel (``tests/test_sparse_gpu.py``).
"""

from __future__ import annotations

from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.ampere import async_copy
from triton.experimental.gluon.language.nvidia.hopper import (
    fence_async_shared,
    mbarrier,
    warpgroup_mma,
    warpgroup_mma_wait,
)

from tri_shared.gluon import block_barrier as _block_barrier
from tri_shared.gluon import cp_async_load as _async_load

# Reference per head for the bounded sweep: block 0's maximum plus this margin (base 2). The
# largest term is then at least 2^-64, terms below 2^-126 of it flush to 0 (at most 2^-62
# relative each), and a later score has to exceed block 0's maximum by about 190 before
# anything overflows; the consumer detects that (inf or NaN) and redoes the sweep exactly.
_REF_MARGIN: gl.constexpr = gl.constexpr(64.0)


@gluon.jit
def _key_mask(valid):
    """1 on valid keys, 0 on the others."""
    return gl.where(valid, 1.0, 0.0)


@gluon.jit
def _valid_entries(idx, L, last_pos):
    """Entries that take part: in range and not in the future of the query."""
    return (idx >= 0) & (idx < L) & (idx <= last_pos)


# ---------------------------------------------------------------------------------------
# producer


@gluon.jit
def _produce_pass(
    k_bat, i_row, kbuf, keep, full, empty, base, n_blocks, TOPK, L, last_pos, stride_ik,
    stride_kl, BLOCK_K: gl.constexpr, HEAD_DIM: gl.constexpr, NUM_SLOTS: gl.constexpr,
    PRODUCER_WARPS: gl.constexpr, WIDE_KEYS: gl.constexpr,
):  # fmt: skip
    """Fill the ring with every key block of the row once (``base`` blocks were produced
    before): wait for the slot, copy the valid key rows (zeros for the others) with
    cp.async and store the key mask. The slot's ``full`` barrier completes once the copies
    have landed and the masks are stored."""
    # 16-byte copies, 4 lanes per key row (64 contiguous bytes, whole sectors)
    GATHER: gl.constexpr = gl.BlockedLayout([1, 8], [8, 4], [PRODUCER_WARPS, 1], [1, 0])
    offs_d = gl.arange(0, HEAD_DIM, layout=gl.SliceLayout(0, GATHER))
    offs_b = gl.arange(0, BLOCK_K, layout=gl.SliceLayout(1, GATHER))
    # indices are loaded two blocks ahead: the first pass reads them from memory, and a
    # load issued one block ahead (one consumer step, about a microsecond) can still be in
    # flight when its block's copies are due
    idx = gl.load(i_row + offs_b * stride_ik, mask=offs_b < TOPK, other=-1)
    offs_n = BLOCK_K + offs_b
    idx_next = gl.load(i_row + offs_n * stride_ik, mask=offs_n < TOPK, other=-1)
    for blk in range(n_blocks):
        count = base + blk
        slot = count % NUM_SLOTS
        valid = _valid_entries(idx, L, last_pos)
        rows = gl.where(valid, idx, 0)
        if WIDE_KEYS:
            key_off = rows.to(gl.int64) * stride_kl
        else:
            key_off = rows.to(gl.int32) * stride_kl
        offs_n = (blk + 2) * BLOCK_K + offs_b
        idx = idx_next
        idx_next = gl.load(i_row + offs_n * stride_ik, mask=offs_n < TOPK, other=-1)
        mbarrier.wait(empty.index(slot), ((count // NUM_SLOTS) & 1) ^ 1)
        _async_load(
            kbuf.index(slot), k_bat + key_off[:, None] + offs_d[None, :], mask=valid[:, None]
        )
        keep.index(count % (2 * NUM_SLOTS)).store(_key_mask(valid))
        # the copies count on the barrier once they land; the arrive below follows a barrier
        # of the producer's warps, so it also covers every thread's mask stores
        async_copy.mbarrier_arrive(full.index(slot))
        mbarrier.arrive(full.index(slot))


@gluon.jit
def _producer(
    k_bat, i_row, kbuf, keep, full, empty, decided, redo_flag, n_blocks, TOPK, L, last_pos,
    stride_ik, stride_kl, BLOCK_K: gl.constexpr, HEAD_DIM: gl.constexpr,
    NUM_SLOTS: gl.constexpr, PRODUCER_WARPS: gl.constexpr, WIDE_KEYS: gl.constexpr,
):  # fmt: skip
    """The row's blocks for sweep 1, again for sweep 2, and a third time when the consumer
    redoes sweep 1 exactly (the second pass then feeds that redo; the consumer has decided
    long before the producer asks, at the end of its first pass)."""
    _produce_pass(
        k_bat, i_row, kbuf, keep, full, empty, 0, n_blocks, TOPK, L, last_pos, stride_ik,
        stride_kl, BLOCK_K, HEAD_DIM, NUM_SLOTS, PRODUCER_WARPS, WIDE_KEYS,
    )  # fmt: skip
    _produce_pass(
        k_bat, i_row, kbuf, keep, full, empty, n_blocks, n_blocks, TOPK, L, last_pos,
        stride_ik, stride_kl, BLOCK_K, HEAD_DIM, NUM_SLOTS, PRODUCER_WARPS, WIDE_KEYS,
    )  # fmt: skip
    mbarrier.wait(decided, 0)
    FLAG: gl.constexpr = gl.BlockedLayout([1], [32], [PRODUCER_WARPS], [0])
    if gl.max(redo_flag.load(FLAG), axis=0) > 0:  # every word holds the same flag
        _produce_pass(
            k_bat, i_row, kbuf, keep, full, empty, 2 * n_blocks, n_blocks, TOPK, L, last_pos,
            stride_ik, stride_kl, BLOCK_K, HEAD_DIM, NUM_SLOTS, PRODUCER_WARPS, WIDE_KEYS,
        )  # fmt: skip


# ---------------------------------------------------------------------------------------
# consumer


@gluon.jit
def _acquire(kbuf, full, count, NUM_SLOTS: gl.constexpr):
    """Wait until block number ``count`` has landed in its slot; its keys and slot index."""
    slot = count % NUM_SLOTS
    mbarrier.wait(full.index(slot), (count // NUM_SLOTS) & 1)
    # the copies were written through the generic proxy; the tensor cores read through the
    # async one
    fence_async_shared()
    return kbuf.index(slot), slot


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
def _sweep1(
    q_op, kbuf, keep, full, empty, base, n_blocks, qk_scale, BLOCK_H: gl.constexpr,
    BLOCK_K: gl.constexpr, NUM_SLOTS: gl.constexpr, MMA1: gl.constexpr, EXACT: gl.constexpr,
):  # fmt: skip
    """Sweep 1 over the blocks numbered ``base`` on: the per-head log-sum-exp (base 2) of
    the scaled scores over the valid keys, ``[BLOCK_H]`` in ``SliceLayout(1, MMA1)``; -inf
    for a row without valid keys (EXACT), inf or NaN where the bounded form cannot be used.
    ``q_op``: the query in registers, the matmul's left operand. Each step waits for its
    own matmul: the next block's accumulator would need registers the query now holds."""
    KEEP: gl.constexpr = gl.SliceLayout(0, MMA1)
    zero = gl.zeros([BLOCK_H, BLOCK_K], gl.float32, MMA1)
    keys, slot = _acquire(kbuf, full, base, NUM_SLOTS)
    s = warpgroup_mma(q_op, keys.permute((1, 0)), zero, use_acc=False)
    mbarrier.arrive(empty.index(slot))
    kmask = keep.index(base % (2 * NUM_SLOTS)).load(KEEP)
    if EXACT:
        st0 = gl.full([BLOCK_H], float("-inf"), gl.float32, gl.SliceLayout(1, MMA1))
    else:
        z = gl.where(kmask[None, :] != 0.0, s * qk_scale, float("-inf"))
        st0 = gl.max(z, axis=1) + _REF_MARGIN
    st1 = gl.zeros([BLOCK_H], gl.float32, gl.SliceLayout(1, MMA1))
    st0, st1 = _lse_step(s, st0, st1, kmask, qk_scale, EXACT)
    for blk in range(1, n_blocks):
        keys, slot = _acquire(kbuf, full, base + blk, NUM_SLOTS)
        s = warpgroup_mma(q_op, keys.permute((1, 0)), zero, use_acc=False)
        mbarrier.arrive(empty.index(slot))
        kmask = keep.index((base + blk) % (2 * NUM_SLOTS)).load(KEEP)
        st0, st1 = _lse_step(s, st0, st1, kmask, qk_scale, EXACT)
    return st0 + gl.log2(st1)


@gluon.jit
def _store_p(
    s, kmask, lse_h, inv_h, qk_scale, p_row, blk, TOPK, BLOCK_K: gl.constexpr,
    MMA2: gl.constexpr, MARK_INVALID: gl.constexpr,
):  # fmt: skip
    """Sweep 2, one block: ``p = Σ_h P[h, j] / H`` from ``s`` ``[BLOCK_K, BLOCK_H]`` (keys on
    rows, so the head sum stays inside a warp), stored with 0 (or -1 when MARK_INVALID) on
    invalid keys. Padding heads and empty rows carry ``lse = +inf``: their terms are 0."""
    ROWS: gl.constexpr = gl.SliceLayout(1, MMA2)
    p = gl.sum(gl.exp2(s * qk_scale - lse_h[None, :]), axis=1) * inv_h
    # a select, not a multiply by the mask: an invalid key's p can be inf (its score is 0)
    if MARK_INVALID:
        p = gl.where(kmask != 0.0, p, -1.0)
    else:
        p = gl.where(kmask != 0.0, p, 0.0)
    offs_k = blk * BLOCK_K + gl.arange(0, BLOCK_K, layout=ROWS)
    gl.store(p_row + offs_k, p, mask=offs_k < TOPK)


@gluon.jit
def _sweep2(
    q_t, kbuf, keep, full, empty, base, n_blocks, lse_h, inv_h, qk_scale, p_row, TOPK,
    BLOCK_H: gl.constexpr, BLOCK_K: gl.constexpr, NUM_SLOTS: gl.constexpr, MMA2: gl.constexpr,
    MARK_INVALID: gl.constexpr,
):  # fmt: skip
    """Sweep 2 over the blocks numbered ``base`` on, as :func:`_sweep1` with keys on the
    matmul's rows; stores each block's ``p``."""
    ROWS: gl.constexpr = gl.SliceLayout(1, MMA2)
    keys, slot = _acquire(kbuf, full, base, NUM_SLOTS)
    zero = gl.zeros([BLOCK_K, BLOCK_H], gl.float32, MMA2)
    s = warpgroup_mma(keys, q_t, zero, use_acc=False)
    mbarrier.arrive(empty.index(slot))
    for blk in range(1, n_blocks):
        keys, slot = _acquire(kbuf, full, base + blk, NUM_SLOTS)
        nxt = warpgroup_mma(keys, q_t, zero, use_acc=False, is_async=True)
        kmask = keep.index((base + blk - 1) % (2 * NUM_SLOTS)).load(ROWS)
        _store_p(s, kmask, lse_h, inv_h, qk_scale, p_row, blk - 1, TOPK, BLOCK_K, MMA2,
                 MARK_INVALID)  # fmt: skip
        s = warpgroup_mma_wait(0, deps=[nxt])
        mbarrier.arrive(empty.index(slot))
    kmask = keep.index((base + n_blocks - 1) % (2 * NUM_SLOTS)).load(ROWS)
    _store_p(s, kmask, lse_h, inv_h, qk_scale, p_row, n_blocks - 1, TOPK, BLOCK_K, MMA2,
             MARK_INVALID)  # fmt: skip


@gluon.jit
def _consumer(
    q_smem, kbuf, keep, full, empty, decided, redo_flag, n_blocks, H, TOPK, qk_scale, p_row,
    BLOCK_H: gl.constexpr, BLOCK_K: gl.constexpr, NUM_SLOTS: gl.constexpr,
    MARK_INVALID: gl.constexpr,
):  # fmt: skip
    """Sweep 1 (bounded; exact for the rows that need it), then sweep 2."""
    # heads on M for sweep 1 (the per-head reductions stay inside a warp), keys on M for
    # sweep 2 (the head sum stays inside a warp)
    MMA1: gl.constexpr = gl.NVMMADistributedLayout(
        version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, BLOCK_K, 16]
    )
    MMA2: gl.constexpr = gl.NVMMADistributedLayout(
        version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, BLOCK_H, 16]
    )
    # the query as sweep 1's left operand in registers: the wgmma then reads only the keys
    # from shared memory, whose bandwidth the gathers' copies also take
    q_op = q_smem.load(gl.DotOperandLayout(operand_index=0, parent=MMA1, k_width=2))
    lse_h = _sweep1(
        q_op, kbuf, keep, full, empty, 0, n_blocks, qk_scale, BLOCK_H, BLOCK_K, NUM_SLOTS,
        MMA1, False,
    )  # fmt: skip
    redo = gl.max(gl.where(lse_h < float("inf"), 0, 1), axis=0)
    # one flag word per consumer thread: no two threads write the same word
    FLAG: gl.constexpr = gl.BlockedLayout([1], [32], [4], [0])
    redo_flag.store(gl.full([128], redo, gl.int32, FLAG))
    mbarrier.arrive(decided)
    base = n_blocks
    if redo > 0:
        lse_h = _sweep1(
            q_op, kbuf, keep, full, empty, n_blocks, n_blocks, qk_scale, BLOCK_H, BLOCK_K,
            NUM_SLOTS, MMA1, True,
        )  # fmt: skip
        base = 2 * n_blocks
    lse_h = gl.convert_layout(lse_h, gl.SliceLayout(0, MMA2))
    heads = gl.arange(0, BLOCK_H, layout=gl.SliceLayout(0, MMA2))
    lse_h = gl.where((heads < H) & (lse_h > float("-inf")), lse_h, float("inf"))
    _sweep2(
        q_smem.permute((1, 0)), kbuf, keep, full, empty, base, n_blocks, lse_h, 1.0 / H,
        qk_scale, p_row, TOPK, BLOCK_H, BLOCK_K, NUM_SLOTS, MMA2, MARK_INVALID,
    )  # fmt: skip


@gluon.jit
def sparse_indexer_fwd_hopper_kernel(
    q_ptr, k_ptr, idx_ptr, p_ptr, S, H, L, TOPK, chunk_offset, qk_scale, stride_qb,
    stride_qh, stride_qs, stride_kb, stride_kl, stride_ib, stride_is, stride_ik,
    HEAD_DIM: gl.constexpr, BLOCK_H: gl.constexpr, BLOCK_K: gl.constexpr,
    NUM_SLOTS: gl.constexpr, PRODUCER_WARPS: gl.constexpr, PRODUCER_REGS: gl.constexpr,
    MARK_INVALID: gl.constexpr, WIDE_KEYS: gl.constexpr,
):  # fmt: skip
    """The target of one query row: 4 consumer warps plus PRODUCER_WARPS producer warps.
    Arguments as the Triton kernel's, with unit strides along the head dim of query and key
    (not passed). Writes ``p`` into the contiguous ``[rows, TOPK]`` fp32 buffer ``p_ptr``,
    with 0 on invalid entries, or -1 there when MARK_INVALID."""
    dtype: gl.constexpr = q_ptr.dtype.element_ty
    SMEM: gl.constexpr = gl.NVMMASharedLayout(swizzle_byte_width=128, element_bitwidth=16, rank=2)
    FLAT: gl.constexpr = gl.SwizzledSharedLayout(1, 1, 1, [0])
    QLOAD: gl.constexpr = gl.BlockedLayout([1, 8], [8, 4], [4, 1], [1, 0])

    row = gl.program_id(0)
    b = row // S
    t = row % S
    last_pos = chunk_offset + t
    q_row = q_ptr + b.to(gl.int64) * stride_qb + t.to(gl.int64) * stride_qs
    k_bat = k_ptr + b.to(gl.int64) * stride_kb
    i_row = idx_ptr + b.to(gl.int64) * stride_ib + t.to(gl.int64) * stride_is
    p_row = p_ptr + row.to(gl.int64) * TOPK
    n_blocks = gl.cdiv(TOPK, BLOCK_K)

    # The ring: key rows per slot; `full` completes when the producer has filled a slot,
    # `empty` when the consumer's matmul has read it. Each block's key mask sits in a ring of
    # twice as many entries, so that the consumer can read it after handing the keys' slot
    # back: entry c % (2 NUM_SLOTS) is rewritten for block c only once block c - NUM_SLOTS
    # has been released, which the consumer does after it has finished block
    # c - 2 NUM_SLOTS. `decided` and `redo_flag` carry the consumer's choice of an exact
    # sweep 1 to the producer.
    kbuf = gl.allocate_shared_memory(dtype, [NUM_SLOTS, BLOCK_K, HEAD_DIM], SMEM)
    keep = gl.allocate_shared_memory(gl.float32, [2 * NUM_SLOTS, BLOCK_K], FLAT)
    full = gl.allocate_shared_memory(gl.int64, [NUM_SLOTS, 1], mbarrier.MBarrierLayout())
    empty = gl.allocate_shared_memory(gl.int64, [NUM_SLOTS, 1], mbarrier.MBarrierLayout())
    decided = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    redo_flag = gl.allocate_shared_memory(gl.int32, [128], FLAT)
    # one arrive per phase: each partition arrives from one thread after a barrier of its
    # own warps (the producer's copies add their own pending count until they land)
    for i in gl.static_range(NUM_SLOTS):
        mbarrier.init(full.index(i), count=1)
        mbarrier.init(empty.index(i), count=1)
    mbarrier.init(decided, count=1)

    offs_h = gl.arange(0, BLOCK_H, layout=gl.SliceLayout(1, QLOAD))
    offs_d = gl.arange(0, HEAD_DIM, layout=gl.SliceLayout(0, QLOAD))
    q = gl.load(
        q_row + offs_h[:, None].to(gl.int64) * stride_qh + offs_d[None, :],
        mask=(offs_h < H)[:, None],
        other=0.0,
    )
    q_smem = gl.allocate_shared_memory(dtype, [BLOCK_H, HEAD_DIM], SMEM, q)
    fence_async_shared()
    _block_barrier()

    # (the argument tuples are written inline: assigned to a name first, their constexprs
    # would arrive as tensors)
    gl.warp_specialize(
        [
            (_consumer, (
                q_smem, kbuf, keep, full, empty, decided, redo_flag, n_blocks, H, TOPK,
                qk_scale, p_row, BLOCK_H, BLOCK_K, NUM_SLOTS, MARK_INVALID,
            )),
            (_producer, (
                k_bat, i_row, kbuf, keep, full, empty, decided, redo_flag, n_blocks, TOPK, L,
                last_pos, stride_ik, stride_kl, BLOCK_K, HEAD_DIM, NUM_SLOTS, PRODUCER_WARPS,
                WIDE_KEYS,
            )),
        ],
        [PRODUCER_WARPS],
        [PRODUCER_REGS],
    )  # fmt: skip
