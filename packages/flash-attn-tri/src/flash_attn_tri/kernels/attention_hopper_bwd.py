"""dK and dV of attention for Hopper (sm_90), written in Gluon, warp-specialised.

**Experimental, off by default** (``FLASH_ATTN_TRI_GLUON_BWD=1`` turns it on): it compiles
(``tools/kernel_stats.py flash-attn-dkdv-hopper-d128``) but has not yet run on a GPU;
``tests/test_gpu.py::test_gluon_dkdv_matches_the_reference`` is the check it has to pass
before it can be the default.

It replaces the Triton dK/dV kernel only; the Triton dQ kernel runs first and writes
``delta = rowsum(O · dO)``, which this kernel reads. What it covers: fixed-length
``[batch, seqlen, heads, D]`` inputs, fp16/bf16, D = Dv = 64 or 128, GQA (a program sums
the gradients of its key head's query heads), causal (aligned to the bottom right) or not,
a positive softmax scale; no window, softcap, ALiBi or dropout.

One program per (BLOCK_N = 128 keys, key head, batch), three warpgroups, each a partition
of its own:

- a **producer** warpgroup issues the copy engine's loads: the two 64-key halves of K and V
  once, then Q and dO of every query block (of every query head of the group) that sees
  the program's keys, into a ring of NUM_STAGES slots;
- two **consumer** warpgroups, 64 keys each, keep dK and dV of their keys in registers and
  for each query block i compute, on transposed tiles (keys as rows), with the row vectors
  ``lse`` and ``delta`` of the block's queries:

      Sᵀ = K·Q_iᵀ,  dPᵀ = V·dO_iᵀ             (both operands in shared memory)
      Pᵀ = exp2(Sᵀ·scale·log2 e − lse·log2 e)
      dV += Pᵀ·dO_i                           (Pᵀ from registers)
      dSᵀ = Pᵀ ⊙ (dPᵀ − delta)
      dK += dSᵀ·Q_i                           (dSᵀ from registers)

  and finally store ``dK·scale`` and dV. Sᵀ and dPᵀ are issued together; the exponentials
  run while dPᵀ is on the tensor cores.

Rows past the sequences need no mask: Q and dO past seqlen_q arrive as zeros and their lse
reads as +inf (so their P is 0); keys past seqlen_k only produce rows that are not stored.
"""

from __future__ import annotations

from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (
    fence_async_shared,
    mbarrier,
    tma,
    warpgroup_mma,
    warpgroup_mma_wait,
)

_LOG2E: gl.constexpr = gl.constexpr(1.4426950408889634)

# (Gluon renames these between Triton releases; see attention_hopper.py)
_tma_load = getattr(tma, "async_load", None) or tma.async_copy_global_to_shared
_block_barrier = getattr(gl, "thread_barrier", None) or gl.barrier


@gluon.jit
def _query_blocks(seqlen_q, start_n, diag, BLOCK_M: gl.constexpr, CAUSAL: gl.constexpr):
    """The first query block that sees any of the program's keys, and the number of query
    blocks (when CAUSAL, row m sees key n iff n <= m + diag)."""
    n_q = gl.cdiv(seqlen_q, BLOCK_M)
    first = 0
    if CAUSAL:
        first = gl.minimum(gl.maximum(start_n - diag, 0) // BLOCK_M, n_q)
    return first, n_q


# ---------------------------------------------------------------------------------------
# producer


@gluon.jit
def _producer(
    q_desc, k_desc, v_desc, do_desc, q_smem, do_smem, k_smem, v_smem, kv_bar, qd_full,
    qd_empty, b, hk, start_n, seqlen_q, diag, group, HEAD_DIM: gl.constexpr,
    BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, NUM_STAGES: gl.constexpr,
    CAUSAL: gl.constexpr,
):  # fmt: skip
    """K and V (a 64-key half per consumer warpgroup), then Q and dO of every query block of
    every query head of the group, in the order the consumers take them; a slot is refilled
    once both consumers have released it."""
    HALF: gl.constexpr = BLOCK_N // 2
    mbarrier.expect(kv_bar, 2 * k_desc.block_type.nbytes + 2 * v_desc.block_type.nbytes)
    col_kv = hk * HEAD_DIM
    for w in gl.static_range(2):
        _tma_load(k_desc, [b, start_n + w * HALF, col_kv], kv_bar, k_smem.index(w))
        _tma_load(v_desc, [b, start_n + w * HALF, col_kv], kv_bar, v_smem.index(w))
    first, n_q = _query_blocks(seqlen_q, start_n, diag, BLOCK_M, CAUSAL)
    n_steps = n_q - first
    for g in range(group):
        col_q = (hk * group + g) * HEAD_DIM
        for i in range(first, n_q):
            t = g * n_steps + (i - first)
            slot = t % NUM_STAGES
            mbarrier.wait(qd_empty.index(slot), ((t // NUM_STAGES) & 1) ^ 1)
            mbarrier.expect(
                qd_full.index(slot), q_desc.block_type.nbytes + do_desc.block_type.nbytes
            )
            _tma_load(q_desc, [b, i * BLOCK_M, col_q], qd_full.index(slot), q_smem.index(slot))
            _tma_load(do_desc, [b, i * BLOCK_M, col_q], qd_full.index(slot), do_smem.index(slot))


# ---------------------------------------------------------------------------------------
# consumers


@gluon.jit
def _tile(ring, slot, ROWS: gl.constexpr, HEAD_DIM: gl.constexpr):
    """Slot ``slot`` of a ring of ``[1, ROWS, HEAD_DIM]`` copy-engine boxes, as a matrix."""
    return ring.index(slot).reshape([ROWS, HEAD_DIM])


@gluon.jit
def _step(
    dk, dv, k_tile, v_tile, q_smem, do_smem, qd_full, qd_empty, zero_s, t, i, lse_row,
    delta_row, offs_n, seqlen_q, diag, qk_scale2, BLOCK_M: gl.constexpr,
    HEAD_DIM: gl.constexpr, NUM_STAGES: gl.constexpr, S_LAYOUT: gl.constexpr,
    P_LAYOUT: gl.constexpr, VEC_LAYOUT: gl.constexpr, DTYPE: gl.constexpr,
    MASKED: gl.constexpr,
):  # fmt: skip
    """Query block i (ring step t): add its share to dK and dV of this warpgroup's keys.
    MASKED: some of its rows must not see some of the keys (causal)."""
    slot = t % NUM_STAGES
    # The previous step's slot: its matmuls completed at that step's last wait. Released
    # here, before waiting for this step's (which may need the producer to refill it).
    mbarrier.arrive(qd_empty.index((t + NUM_STAGES - 1) % NUM_STAGES), pred=t > 0)
    # The block's rows' base-2 log-sum-exp (+inf past the sequence makes their P 0) and
    # delta, loaded one element a thread and then spread to the columns of the score
    # tiles: loaded in that layout directly, each thread would hold 16 addresses a vector.
    COLUMNS: gl.constexpr = gl.SliceLayout(0, S_LAYOUT)
    offs_c = i * BLOCK_M + gl.arange(0, BLOCK_M, layout=VEC_LAYOUT)
    in_q = offs_c < seqlen_q
    lse2 = gl.load(lse_row + offs_c, mask=in_q, other=float("inf")) * _LOG2E
    delta = gl.load(delta_row + offs_c, mask=in_q, other=0.0)
    mbarrier.wait(qd_full.index(slot), (t // NUM_STAGES) & 1)
    q_tile = _tile(q_smem, slot, BLOCK_M, HEAD_DIM)
    do_tile = _tile(do_smem, slot, BLOCK_M, HEAD_DIM)
    s = warpgroup_mma(k_tile, q_tile.permute((1, 0)), zero_s, use_acc=False, is_async=True)
    dp = warpgroup_mma(v_tile, do_tile.permute((1, 0)), zero_s, use_acc=False, is_async=True)
    s = warpgroup_mma_wait(1, deps=[s])
    p = gl.exp2(s * qk_scale2 - gl.convert_layout(lse2, COLUMNS)[None, :])
    if MASKED:
        offs_m = i * BLOCK_M + gl.arange(0, BLOCK_M, layout=COLUMNS)
        p = gl.where(offs_n[:, None] <= offs_m[None, :] + diag, p, 0.0)
    p_op = gl.convert_layout(p.to(DTYPE), P_LAYOUT)
    dv = warpgroup_mma(p_op, do_tile, dv, is_async=True)
    dp, p_op = warpgroup_mma_wait(1, deps=[dp, p_op])
    ds = p * (dp - gl.convert_layout(delta, COLUMNS)[None, :])
    ds_op = gl.convert_layout(ds.to(DTYPE), P_LAYOUT)
    dk = warpgroup_mma(ds_op, q_tile, dk, is_async=True)
    dv, dk, p_op, ds_op = warpgroup_mma_wait(0, deps=[dv, dk, p_op, ds_op])
    return dk, dv


@gluon.jit
def _consumer(
    q_smem, do_smem, k_smem, v_smem, kv_bar, qd_full, qd_empty, dk_ptr, dv_ptr, lse_ptr,
    delta_ptr, b, hk, start_n, seqlen_q, seqlen_k, diag, group, qk_scale2, sm_scale,
    stride_kb, stride_ks, stride_kh, stride_lb, stride_lh, WG: gl.constexpr,
    HEAD_DIM: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr,
    NUM_STAGES: gl.constexpr, CAUSAL: gl.constexpr,
):  # fmt: skip
    """One consumer warpgroup (4 warps, 64 keys): dK and dV of its keys over every query
    block and query head that sees them; stores dK·scale and dV. dK and dV are laid out
    like k (``stride_k*``)."""
    HALF: gl.constexpr = BLOCK_N // 2
    S_LAYOUT: gl.constexpr = gl.NVMMADistributedLayout(
        version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, BLOCK_M, 16]
    )
    O_LAYOUT: gl.constexpr = gl.NVMMADistributedLayout(
        version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, HEAD_DIM, 16]
    )
    P_LAYOUT: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=O_LAYOUT, k_width=2)
    VEC_LAYOUT: gl.constexpr = gl.BlockedLayout([1], [32], [4], [0])
    DTYPE: gl.constexpr = q_smem.dtype
    key0 = start_n + WG * HALF
    offs_n = key0 + gl.arange(0, HALF, layout=gl.SliceLayout(1, S_LAYOUT))
    zero_s = gl.zeros([HALF, BLOCK_M], gl.float32, S_LAYOUT)
    dk = gl.zeros([HALF, HEAD_DIM], gl.float32, O_LAYOUT)
    dv = gl.zeros([HALF, HEAD_DIM], gl.float32, O_LAYOUT)
    k_tile = _tile(k_smem, WG, HALF, HEAD_DIM)
    v_tile = _tile(v_smem, WG, HALF, HEAD_DIM)
    first, n_q = _query_blocks(seqlen_q, start_n, diag, BLOCK_M, CAUSAL)
    # query blocks from n_masked on see all of this warpgroup's keys
    n_masked = first
    if CAUSAL:
        n_whole = gl.cdiv(gl.maximum(key0 + HALF - 1 - diag, 0), BLOCK_M)
        n_masked = gl.minimum(gl.maximum(n_whole, first), n_q)
    n_steps = n_q - first
    mbarrier.wait(kv_bar, 0)
    for g in range(group):
        h = hk * group + g
        lse_row = lse_ptr + b.to(gl.int64) * stride_lb + h.to(gl.int64) * stride_lh
        delta_row = delta_ptr + b.to(gl.int64) * stride_lb + h.to(gl.int64) * stride_lh
        for i in range(first, n_masked):
            dk, dv = _step(
                dk, dv, k_tile, v_tile, q_smem, do_smem, qd_full, qd_empty, zero_s,
                g * n_steps + (i - first), i, lse_row, delta_row, offs_n, seqlen_q, diag,
                qk_scale2, BLOCK_M, HEAD_DIM, NUM_STAGES, S_LAYOUT, P_LAYOUT, VEC_LAYOUT,
                DTYPE, True,
            )  # fmt: skip
        for i in range(n_masked, n_q):
            dk, dv = _step(
                dk, dv, k_tile, v_tile, q_smem, do_smem, qd_full, qd_empty, zero_s,
                g * n_steps + (i - first), i, lse_row, delta_row, offs_n, seqlen_q, diag,
                qk_scale2, BLOCK_M, HEAD_DIM, NUM_STAGES, S_LAYOUT, P_LAYOUT, VEC_LAYOUT,
                DTYPE, False,
            )  # fmt: skip
    total = group * n_steps
    last = total - 1
    mbarrier.arrive(qd_empty.index((last + NUM_STAGES) % NUM_STAGES), pred=total > 0)  # -1: none

    offs_r = key0 + gl.arange(0, HALF, layout=gl.SliceLayout(1, O_LAYOUT))
    offs_d = gl.arange(0, HEAD_DIM, layout=gl.SliceLayout(0, O_LAYOUT))
    rows = (
        b.to(gl.int64) * stride_kb
        + hk.to(gl.int64) * stride_kh
        + offs_r.to(gl.int64)[:, None] * stride_ks
        + offs_d[None, :]
    )
    in_k = (offs_r < seqlen_k)[:, None]
    gl.store(dk_ptr + rows, (dk * sm_scale).to(dk_ptr.dtype.element_ty), mask=in_k)
    gl.store(dv_ptr + rows, dv.to(dv_ptr.dtype.element_ty), mask=in_k)


# ---------------------------------------------------------------------------------------
# kernel


@gluon.jit
def flash_bwd_dkdv_hopper_kernel(
    q_desc, k_desc, v_desc, do_desc, dk_ptr, dv_ptr, lse_ptr, delta_ptr, seqlen_q, seqlen_k,
    group, qk_scale2, sm_scale, stride_kb, stride_ks, stride_kh, stride_lb, stride_lh,
    HEAD_DIM: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr,
    NUM_STAGES: gl.constexpr, CAUSAL: gl.constexpr, CONSUMER_REGS: gl.constexpr,
    PRODUCER_REGS: gl.constexpr,
):  # fmt: skip
    """dK and dV of BLOCK_N keys of one key head. ``q_desc``, ``do_desc``: copy-engine
    descriptors over q and dout ``[batch, seqlen_q, heads · D]`` with boxes
    ``[1, BLOCK_M, D]``; ``k_desc``, ``v_desc`` over k and v ``[batch, seqlen_k,
    heads_k · D]`` with boxes ``[1, BLOCK_N / 2, D]`` (rows past a sequence arrive as
    zeros); ``dk_ptr``, ``dv_ptr`` ``[batch, seqlen_k, heads_k, D]`` with the strides given
    (unit stride along D); ``lse_ptr``, ``delta_ptr`` ``[batch, heads, seqlen_q]`` fp32
    (unit stride along the rows)."""
    # (under a causal mask the first key blocks are seen by the most query rows; programs
    # start in order of their index, so those go first as they are)
    pid_n = gl.program_id(0)
    hk = gl.program_id(1)
    b = gl.program_id(2)
    start_n = pid_n * BLOCK_N
    diag = seqlen_k - seqlen_q

    dtype: gl.constexpr = q_desc.dtype
    HALF: gl.constexpr = BLOCK_N // 2
    q_smem = gl.allocate_shared_memory(dtype, [NUM_STAGES, 1, BLOCK_M, HEAD_DIM], q_desc.layout)
    do_smem = gl.allocate_shared_memory(dtype, [NUM_STAGES, 1, BLOCK_M, HEAD_DIM], do_desc.layout)
    k_smem = gl.allocate_shared_memory(dtype, [2, 1, HALF, HEAD_DIM], k_desc.layout)
    v_smem = gl.allocate_shared_memory(dtype, [2, 1, HALF, HEAD_DIM], v_desc.layout)
    kv_bar = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    qd_full = gl.allocate_shared_memory(gl.int64, [NUM_STAGES, 1], mbarrier.MBarrierLayout())
    qd_empty = gl.allocate_shared_memory(gl.int64, [NUM_STAGES, 1], mbarrier.MBarrierLayout())
    mbarrier.init(kv_bar, count=1)
    for i in gl.static_range(NUM_STAGES):
        mbarrier.init(qd_full.index(i), count=1)
        mbarrier.init(qd_empty.index(i), count=2)  # released by both consumer warpgroups
    fence_async_shared()
    _block_barrier()

    # (argument tuples written inline, as in attention_hopper.py)
    gl.warp_specialize(
        [
            (_consumer, (
                q_smem, do_smem, k_smem, v_smem, kv_bar, qd_full, qd_empty, dk_ptr, dv_ptr,
                lse_ptr, delta_ptr, b, hk, start_n, seqlen_q, seqlen_k, diag, group,
                qk_scale2, sm_scale, stride_kb, stride_ks, stride_kh, stride_lb, stride_lh,
                0, HEAD_DIM, BLOCK_M, BLOCK_N, NUM_STAGES, CAUSAL,
            )),
            (_consumer, (
                q_smem, do_smem, k_smem, v_smem, kv_bar, qd_full, qd_empty, dk_ptr, dv_ptr,
                lse_ptr, delta_ptr, b, hk, start_n, seqlen_q, seqlen_k, diag, group,
                qk_scale2, sm_scale, stride_kb, stride_ks, stride_kh, stride_lb, stride_lh,
                1, HEAD_DIM, BLOCK_M, BLOCK_N, NUM_STAGES, CAUSAL,
            )),
            (_producer, (
                q_desc, k_desc, v_desc, do_desc, q_smem, do_smem, k_smem, v_smem, kv_bar,
                qd_full, qd_empty, b, hk, start_n, seqlen_q, diag, group, HEAD_DIM,
                BLOCK_M, BLOCK_N, NUM_STAGES, CAUSAL,
            )),
        ],
        [4, 4],
        [CONSUMER_REGS, PRODUCER_REGS],
    )  # fmt: skip
