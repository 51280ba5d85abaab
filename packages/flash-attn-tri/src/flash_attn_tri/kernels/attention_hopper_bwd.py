"""The attention backward for Hopper (sm_90), written in Gluon, warp-specialised: dQ (with
the row statistics lse·log2 e and delta), then dK and dV (the split backward); or the dK/dV
kernel alone adding dQ up too (the fused backward).

Which one a call takes is ``_gluon_backward_wanted`` in ``attention.py``, as measured
(BENCHMARKS.md): split at D = 64 and at D = 128 causal, fused at D = 128 without a mask.
Tile sizes per kernel and head dim: ``attention._HOPPER_BWD_TILES``. The fused one's dQ
is summed in fp32 in the order the reductions land, so its rounding varies run to run and
``deterministic=True`` never takes it.

What they cover: fixed-length ``[batch, seqlen, heads, D]`` inputs, fp16/bf16,
D = Dv = 64 or 128, GQA, causal (aligned to the bottom right) or not, a positive softmax
scale; no window, softcap, ALiBi or dropout. The split backward has no atomics: its
gradients are bitwise repeatable (the fused one's dK and dV too). Both kernels have three
warpgroups, each a partition of its own: a producer issuing the copy engine's loads into a
ring of slots and two consumers.

**dQ** (``flash_bwd_dq_hopper_kernel``), one program per (128 query rows, head, batch),
64 rows per consumer warpgroup, key blocks of 64 (D = 128) or 128 (D = 64). Each consumer
first stores its rows' statistics for the dK/dV kernel, ``lse·log2 e`` and ``delta =
rowsum(O · dO)``, then for each key block j:

    S = Q·K_jᵀ,  dP = dO·V_jᵀ                 (issued together)
    P = exp2(S·scale·log2 e − lse·log2 e),  dS = P ⊙ (dP − delta)
    dQ += dS·K_j                              (dS from registers)

**dK/dV** (``flash_bwd_dkdv_hopper_kernel``), one program per (128 keys, key head, batch),
64 keys per consumer warpgroup, summing over the group's query heads. On transposed tiles
(keys as rows), for each query block i (64 rows; 128 at D = 64 in the split backward):

    Sᵀ = K·Q_iᵀ,  dPᵀ = V·dO_iᵀ              (issued together)
    Pᵀ = exp2(Sᵀ·scale·log2 e − lse·log2 e)   (under dPᵀ)
    dV += Pᵀ·dO_i,  dSᵀ = Pᵀ ⊙ (dPᵀ − delta),  dK += dSᵀ·Q_i   (from registers)

with block i's statistics brought by the copy engine beside Q_i and dO_i and read from
shared memory straight into the columns of the score tiles (loaded from global memory and
spread with layout conversions instead, each step took four warpgroup barriers and the
registers the conversions hold: up to 612 B of spills, 1-18% slower backward), then stores
``dK·scale`` and dV. Fused (``FUSED_DQ``): dSᵀ goes through shared memory instead of
registers, and once both warpgroups' dSᵀ of the block are in, each warpgroup
computes ``dQ_i = dS_i·K`` over the program's 128 keys for half of D's columns, stores
``dQ_i·scale`` to shared memory and has the copy engine add that tile into an fp32
accumulator (one bulk reduction, ``DQ_VIA_TMA``; relaxed atomics from registers without it,
kept for comparison: slower at every shape measured). ``_gluon_fused_backward`` zeroes the
accumulator beside the row statistics beforehand and converts it to dQ afterwards. Two
settings reorder the end of a fused step, for timing against the default (which waits for
all its matmuls, then sends the dQ tile out with no matmul of its own in flight):
``DQ_BUFFERS = 2`` stages dQ tiles in two buffers a warpgroup, so the previous step's
reduction need not have read its buffer; ``LATE_DK`` issues dK's matmul after dQ's, to run
while the dQ tile goes out. Two more apply to the split kernels too: ``ROUNDED_P`` takes
dSᵀ from Pᵀ as rounded for dV's matmul, which frees Pᵀ's fp32 registers; ``LATE_STATS``
reads the block's lse·log2 e after the wait for S rather than before, so that the vector
is not held across the wait. ``attention._HOPPER_BWD_STEP`` says which are on
(BENCHMARKS.md has the timings).

Rows past the sequences need little masking: Q, dO and O past seqlen_q arrive as zeros
and their lse·log2 e in the row statistics is +inf (so their P is 0); in the dK/dV kernel
keys past seqlen_k only produce rows that are not stored, while the dQ kernel masks them
like the forward.
"""

from __future__ import annotations

from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (
    fence_async_shared,
    mbarrier,
    warpgroup_mma,
    warpgroup_mma_wait,
)

from tri_shared.gluon import block_barrier as _block_barrier
from tri_shared.gluon import smem_reinterpret as _smem_reinterpret
from tri_shared.gluon import tma_load as _tma_load
from tri_shared.gluon import tma_reduce_add as _tma_reduce_add
from tri_shared.gluon import tma_store_wait as _tma_store_wait

from .attention_hopper import _tile

_LOG2E: gl.constexpr = gl.constexpr(1.4426950408889634)


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
    q_desc, k_desc, v_desc, do_desc, stats_desc, q_smem, do_smem, stats_smem, k_smem,
    v_smem, kv_bar, qd_full, qd_empty, b, hk, start_n, seqlen_q, diag, group,
    HEAD_DIM: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr,
    NUM_STAGES: gl.constexpr, CAUSAL: gl.constexpr,
):  # fmt: skip
    """K and V (a 64-key half per consumer warpgroup), then Q, dO and the row statistics
    (lse·log2 e, delta) of every query block of every query head of the group, in the order
    the consumers take them; a slot is refilled once both consumers have released it."""
    HALF: gl.constexpr = BLOCK_N // 2
    mbarrier.expect(kv_bar, 2 * k_desc.block_type.nbytes + 2 * v_desc.block_type.nbytes)
    col_kv = hk * HEAD_DIM
    for w in gl.static_range(2):
        _tma_load(k_desc, [b, start_n + w * HALF, col_kv], kv_bar, k_smem.index(w))
        _tma_load(v_desc, [b, start_n + w * HALF, col_kv], kv_bar, v_smem.index(w))
    first, n_q = _query_blocks(seqlen_q, start_n, diag, BLOCK_M, CAUSAL)
    n_steps = n_q - first
    heads = gl.num_programs(1) * group
    nbytes: gl.constexpr = (
        q_desc.block_type.nbytes + do_desc.block_type.nbytes + stats_desc.block_type.nbytes
    )
    for g in range(group):
        h = hk * group + g
        col_q = h * HEAD_DIM
        for i in range(first, n_q):
            t = g * n_steps + (i - first)
            slot = t % NUM_STAGES
            mbarrier.wait(qd_empty.index(slot), ((t // NUM_STAGES) & 1) ^ 1)
            mbarrier.expect(qd_full.index(slot), nbytes)
            _tma_load(q_desc, [b, i * BLOCK_M, col_q], qd_full.index(slot), q_smem.index(slot))
            _tma_load(do_desc, [b, i * BLOCK_M, col_q], qd_full.index(slot), do_smem.index(slot))
            _tma_load(
                stats_desc, [2 * (b * heads + h), i * BLOCK_M], qd_full.index(slot),
                stats_smem.index(slot),
            )  # fmt: skip


# ---------------------------------------------------------------------------------------
# consumers


@gluon.jit
def _dq_out(
    dq, sm_scale, dq_desc, dq_smem, row, col, n, WG: gl.constexpr, DQ_BUFFERS: gl.constexpr
):  # fmt: skip
    """Add the dQ tile ``dq`` (of ring step n) times ``sm_scale`` into the fp32 accumulator
    at (row, col) of ``dq_desc``: one bulk reduction of the copy engine, from shared memory
    (this warpgroup's DQ_BUFFERS tiles of ``dq_smem`` in turn). The reduction that last read
    the buffer must be done (all of the warpgroup past the wait) before it is written again,
    and every thread's part must be written (and fenced) before the reduction is issued."""
    dq_buf = dq_smem.index(WG * DQ_BUFFERS + n % DQ_BUFFERS)
    _tma_store_wait(DQ_BUFFERS - 1)
    _block_barrier()
    dq_buf.store(dq * sm_scale)
    fence_async_shared()
    _block_barrier()
    _tma_reduce_add(dq_desc, [row, col], dq_buf)


@gluon.jit
def _step(
    dk, dv, k_tile, v_tile, q_smem, do_smem, stats_rows, qd_full, qd_empty, zero_s, t, i,
    offs_n, diag, qk_scale2, k_smem, ds_smem, ds_ready, dq_row, stride_as, sm_scale,
    dq_desc, dq_smem, dq_box_row, dq_box_col, WG: gl.constexpr, BLOCK_M: gl.constexpr,
    HEAD_DIM: gl.constexpr, NUM_STAGES: gl.constexpr, S_LAYOUT: gl.constexpr,
    P_LAYOUT: gl.constexpr,
    DTYPE: gl.constexpr, MASKED: gl.constexpr, FUSED_DQ: gl.constexpr,
    DQ_VIA_TMA: gl.constexpr, DQ_BUFFERS: gl.constexpr, LATE_DK: gl.constexpr,
    ROUNDED_P: gl.constexpr, LATE_STATS: gl.constexpr,
):  # fmt: skip
    """Query block i (ring step t): add its share to dK and dV of this warpgroup's keys and,
    when FUSED_DQ, to dQ of the block's rows (``dq_row``: the fp32 accumulator of the query
    head, rows ``stride_as`` apart). MASKED: some of its rows must not see some of the keys
    (causal). LATE_DK (with FUSED_DQ): dK's matmul is issued after dQ's and runs while the
    dQ tile goes out. ROUNDED_P: dSᵀ = Pᵀ ⊙ (dPᵀ − delta) takes Pᵀ as rounded to the
    input type for dV's matmul rather than in fp32. LATE_STATS: the block's lse·log2 e is
    read from shared memory after the wait for S, not before."""
    slot = t % NUM_STAGES
    # The previous step's slot: its matmuls completed at that step's last wait. Released
    # here, before waiting for this step's (which may need the producer to refill it).
    mbarrier.arrive(qd_empty.index((t + NUM_STAGES - 1) % NUM_STAGES), pred=t > 0)
    mbarrier.wait(qd_full.index(slot), (t // NUM_STAGES) & 1)
    q_tile = _tile(q_smem, slot, BLOCK_M, HEAD_DIM)
    do_tile = _tile(do_smem, slot, BLOCK_M, HEAD_DIM)
    s = warpgroup_mma(k_tile, q_tile.permute((1, 0)), zero_s, use_acc=False, is_async=True)
    dp = warpgroup_mma(v_tile, do_tile.permute((1, 0)), zero_s, use_acc=False, is_async=True)
    # The block's rows' statistics came with Q and dO, read from shared memory straight into
    # the columns of the score tiles (each thread reads the few columns it holds).
    COLUMNS: gl.constexpr = gl.SliceLayout(0, S_LAYOUT)
    if LATE_STATS:
        # (read once S is in, the vector is not held across the wait)
        s = warpgroup_mma_wait(1, deps=[s])
        lse2 = stats_rows.index(2 * slot).load(COLUMNS)
    else:
        lse2 = stats_rows.index(2 * slot).load(COLUMNS)
        s = warpgroup_mma_wait(1, deps=[s])
    p = gl.exp2(s * qk_scale2 - lse2[None, :])
    if MASKED:
        offs_m = i * BLOCK_M + gl.arange(0, BLOCK_M, layout=COLUMNS)
        p = gl.where(offs_n[:, None] <= offs_m[None, :] + diag, p, 0.0)
    p_lo = p.to(DTYPE)
    p_op = gl.convert_layout(p_lo, P_LAYOUT)
    dv = warpgroup_mma(p_op, do_tile, dv, is_async=True)
    dp, p_op = warpgroup_mma_wait(1, deps=[dp, p_op])
    if ROUNDED_P:
        # dSᵀ from Pᵀ as rounded for dV's matmul: its fp32 registers are free by then
        p = p_lo.to(gl.float32)
    ds = p * (dp - stats_rows.index(2 * slot + 1).load(COLUMNS)[None, :])
    if FUSED_DQ:
        # dSᵀ goes through shared memory: it is dK's operand there, and, transposed, dQ's.
        buf = t % 2
        ds_own = ds_smem.index(2 * buf + WG)
        ds_own.store(ds.to(DTYPE))
        fence_async_shared()
        mbarrier.arrive(ds_ready.index(buf))
        if not LATE_DK:
            dk = warpgroup_mma(ds_own, q_tile, dk, is_async=True)
        # dQ_i = dS_i · K over both warpgroups' keys, this warpgroup taking half of D's
        # columns: it waits for the other's dSᵀ. (Two buffers: a buffer is written again two
        # steps later, after both warpgroups have passed the wait of the step between.)
        DQ_COLS: gl.constexpr = HEAD_DIM // 2
        DQ_LAYOUT: gl.constexpr = gl.NVMMADistributedLayout(
            version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, DQ_COLS, 16]
        )
        HALF: gl.constexpr = ds_smem.shape[1]
        mbarrier.wait(ds_ready.index(buf), (t // 2) & 1)
        dq = gl.zeros([BLOCK_M, DQ_COLS], gl.float32, DQ_LAYOUT)
        for w in gl.static_range(2):
            k_cols = _tile(k_smem, w, HALF, HEAD_DIM).slice(WG * DQ_COLS, DQ_COLS, dim=1)
            dq = warpgroup_mma(
                ds_smem.index(2 * buf + w).permute((1, 0)), k_cols, dq, use_acc=w > 0,
                is_async=True,
            )  # fmt: skip
        # The accumulator has rows up to a multiple of BLOCK_M: no mask (rows past the
        # sequence add zeros).
        if LATE_DK:
            # dK runs on while the dQ tile goes out (waited for at the step's end)
            dk = warpgroup_mma(ds_own, q_tile, dk, is_async=True)
            dv, p_op, dq = warpgroup_mma_wait(1, deps=[dv, p_op, dq])
        else:
            dv, dk, p_op, dq = warpgroup_mma_wait(0, deps=[dv, dk, p_op, dq])
        if DQ_VIA_TMA:
            _dq_out(
                dq, sm_scale, dq_desc, dq_smem, dq_box_row + i * BLOCK_M, dq_box_col, t, WG,
                DQ_BUFFERS,
            )  # fmt: skip
        else:
            offs_r = gl.arange(0, BLOCK_M, layout=gl.SliceLayout(1, DQ_LAYOUT))
            offs_c = WG * DQ_COLS + gl.arange(0, DQ_COLS, layout=gl.SliceLayout(0, DQ_LAYOUT))
            block_row = dq_row + (i * BLOCK_M).to(gl.int64) * stride_as
            gl.atomic_add(
                block_row + offs_r[:, None] * stride_as + offs_c[None, :], dq * sm_scale,
                sem="relaxed",
            )  # fmt: skip
        if LATE_DK:
            dk = warpgroup_mma_wait(0, deps=[dk])
    else:
        ds_op = gl.convert_layout(ds.to(DTYPE), P_LAYOUT)
        dk = warpgroup_mma(ds_op, q_tile, dk, is_async=True)
        dv, dk, p_op, ds_op = warpgroup_mma_wait(0, deps=[dv, dk, p_op, ds_op])
    return dk, dv


@gluon.jit
def _consumer(
    q_smem, do_smem, stats_smem, k_smem, v_smem, ds_smem, dq_smem, kv_bar, qd_full,
    qd_empty, ds_ready, dk_ptr, dv_ptr, dq_ptr, dq_desc, b, hk, start_n, seqlen_q, seqlen_k,
    diag, group, qk_scale2, sm_scale, stride_kb, stride_ks, stride_kh, stride_ab, stride_as,
    stride_ah, WG: gl.constexpr, HEAD_DIM: gl.constexpr, BLOCK_M: gl.constexpr,
    BLOCK_N: gl.constexpr, NUM_STAGES: gl.constexpr, CAUSAL: gl.constexpr,
    FUSED_DQ: gl.constexpr, DQ_VIA_TMA: gl.constexpr, DQ_BUFFERS: gl.constexpr,
    LATE_DK: gl.constexpr, ROUNDED_P: gl.constexpr, LATE_STATS: gl.constexpr,
):  # fmt: skip
    """One consumer warpgroup (4 warps, 64 keys): dK and dV of its keys over every query
    block and query head that sees them; stores dK·scale and dV, laid out like k
    (``stride_k*``). FUSED_DQ: also adds dQ·scale to the fp32 accumulator ``dq_ptr``
    (strides ``stride_a*``)."""
    HALF: gl.constexpr = BLOCK_N // 2
    S_LAYOUT: gl.constexpr = gl.NVMMADistributedLayout(
        version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, BLOCK_M, 16]
    )
    O_LAYOUT: gl.constexpr = gl.NVMMADistributedLayout(
        version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, HEAD_DIM, 16]
    )
    P_LAYOUT: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=O_LAYOUT, k_width=2)
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
    # DQ_VIA_TMA: the accumulator seen as [batch · rows, heads · D]
    dq_rows = b * (gl.cdiv(seqlen_q, BLOCK_M) * BLOCK_M)
    # the ring of statistics boxes [NUM_STAGES, 2, BLOCK_M] seen as its rows (unswizzled: the
    # same bytes), so that a statistic reads as a vector
    stats_rows = _smem_reinterpret(
        stats_smem, gl.float32, [NUM_STAGES * 2, BLOCK_M], gl.SwizzledSharedLayout(1, 1, 1, [0])
    )
    mbarrier.wait(kv_bar, 0)
    for g in range(group):
        h = hk * group + g
        dq_col = h * HEAD_DIM + WG * (HEAD_DIM // 2)
        dq_row = dq_ptr + b.to(gl.int64) * stride_ab + h.to(gl.int64) * stride_ah
        for i in range(first, n_masked):
            dk, dv = _step(
                dk, dv, k_tile, v_tile, q_smem, do_smem, stats_rows, qd_full, qd_empty,
                zero_s, g * n_steps + (i - first), i, offs_n, diag, qk_scale2, k_smem,
                ds_smem, ds_ready, dq_row, stride_as, sm_scale, dq_desc, dq_smem, dq_rows,
                dq_col, WG, BLOCK_M, HEAD_DIM,
                NUM_STAGES, S_LAYOUT, P_LAYOUT, DTYPE, True, FUSED_DQ, DQ_VIA_TMA, DQ_BUFFERS,
                LATE_DK, ROUNDED_P, LATE_STATS,
            )  # fmt: skip
        for i in range(n_masked, n_q):
            dk, dv = _step(
                dk, dv, k_tile, v_tile, q_smem, do_smem, stats_rows, qd_full, qd_empty,
                zero_s, g * n_steps + (i - first), i, offs_n, diag, qk_scale2, k_smem,
                ds_smem, ds_ready, dq_row, stride_as, sm_scale, dq_desc, dq_smem, dq_rows,
                dq_col, WG, BLOCK_M, HEAD_DIM,
                NUM_STAGES, S_LAYOUT, P_LAYOUT, DTYPE, False, FUSED_DQ, DQ_VIA_TMA, DQ_BUFFERS,
                LATE_DK, ROUNDED_P, LATE_STATS,
            )  # fmt: skip
    total = group * n_steps
    last = total - 1
    mbarrier.arrive(qd_empty.index((last + NUM_STAGES) % NUM_STAGES), pred=total > 0)  # -1: none
    if FUSED_DQ and DQ_VIA_TMA:
        _tma_store_wait(0)  # the last reduction has read its tile before the program ends

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
    q_desc, k_desc, v_desc, do_desc, stats_desc, dk_ptr, dv_ptr, dq_ptr, dq_desc, seqlen_q,
    seqlen_k, group, qk_scale2, sm_scale, stride_kb, stride_ks, stride_kh, stride_ab,
    stride_as, stride_ah, HEAD_DIM: gl.constexpr, BLOCK_M: gl.constexpr,
    BLOCK_N: gl.constexpr, NUM_STAGES: gl.constexpr, CAUSAL: gl.constexpr,
    FUSED_DQ: gl.constexpr, DQ_VIA_TMA: gl.constexpr, DQ_BUFFERS: gl.constexpr,
    LATE_DK: gl.constexpr, ROUNDED_P: gl.constexpr, LATE_STATS: gl.constexpr,
    CONSUMER_REGS: gl.constexpr, PRODUCER_REGS: gl.constexpr,
):  # fmt: skip
    """dK and dV of BLOCK_N keys of one key head. ``q_desc``, ``do_desc``: copy-engine
    descriptors over q and dout ``[batch, seqlen_q, heads · D]`` with boxes
    ``[1, BLOCK_M, D]``; ``k_desc``, ``v_desc`` over k and v ``[batch, seqlen_k,
    heads_k · D]`` with boxes ``[1, BLOCK_N / 2, D]`` (rows past a sequence arrive as
    zeros); ``dk_ptr``, ``dv_ptr`` ``[batch, seqlen_k, heads_k, D]`` with the strides given
    (unit stride along D); ``stats_desc`` a copy-engine descriptor over the row statistics
    ``[batch · heads · 2, padded rows]`` fp32 (row 2·(b·heads + h): lse·log2 e of query head
    h, +inf past the sequence; the next row: delta, 0 past it; the padded rows a multiple
    of BLOCK_M) with boxes ``[2, BLOCK_M]``, unswizzled. FUSED_DQ: also adds dQ·scale
    into ``dq_ptr``, an fp32 ``[batch, cdiv(seqlen_q, BLOCK_M) · BLOCK_M, heads, D]``
    accumulator with strides ``stride_a*`` (unit stride along D): with DQ_VIA_TMA through
    ``dq_desc``, a copy-engine descriptor over it seen as ``[batch · rows, heads · D]``
    with boxes ``[BLOCK_M, D / 2]`` (bulk reductions), else with atomics; otherwise neither
    is used."""
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
    stats_smem = gl.allocate_shared_memory(gl.float32, [NUM_STAGES, 2, BLOCK_M], stats_desc.layout)
    k_smem = gl.allocate_shared_memory(dtype, [2, 1, HALF, HEAD_DIM], k_desc.layout)
    v_smem = gl.allocate_shared_memory(dtype, [2, 1, HALF, HEAD_DIM], v_desc.layout)
    # FUSED_DQ: dSᵀ of both warpgroups, twice (steps alternate between the two buffers)
    DS_BUFFERS: gl.constexpr = 4 if FUSED_DQ else 1
    ds_layout: gl.constexpr = gl.NVMMASharedLayout(
        swizzle_byte_width=128, element_bitwidth=16, rank=2
    )
    ds_smem = gl.allocate_shared_memory(dtype, [DS_BUFFERS, HALF, BLOCK_M], ds_layout)
    # FUSED_DQ and DQ_VIA_TMA: each warpgroup's DQ_BUFFERS dQ tiles, fp32, on their way to
    # the reduction
    if FUSED_DQ and DQ_VIA_TMA:
        dq_smem = gl.allocate_shared_memory(
            gl.float32, [2 * DQ_BUFFERS, BLOCK_M, HEAD_DIM // 2], dq_desc.layout
        )
    else:
        dq_smem = ds_smem  # (not used)
    kv_bar = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    qd_full = gl.allocate_shared_memory(gl.int64, [NUM_STAGES, 1], mbarrier.MBarrierLayout())
    qd_empty = gl.allocate_shared_memory(gl.int64, [NUM_STAGES, 1], mbarrier.MBarrierLayout())
    ds_ready = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
    mbarrier.init(kv_bar, count=1)
    for i in gl.static_range(NUM_STAGES):
        mbarrier.init(qd_full.index(i), count=1)
        mbarrier.init(qd_empty.index(i), count=2)  # released by both consumer warpgroups
    for i in gl.static_range(2):
        mbarrier.init(ds_ready.index(i), count=2)  # both warpgroups' dSᵀ are in
    fence_async_shared()
    _block_barrier()

    # (argument tuples written inline, as in attention_hopper.py)
    gl.warp_specialize(
        [
            (_consumer, (
                q_smem, do_smem, stats_smem, k_smem, v_smem, ds_smem, dq_smem, kv_bar,
                qd_full, qd_empty, ds_ready, dk_ptr, dv_ptr, dq_ptr, dq_desc, b, hk, start_n,
                seqlen_q, seqlen_k, diag, group, qk_scale2, sm_scale, stride_kb, stride_ks,
                stride_kh, stride_ab, stride_as, stride_ah, 0, HEAD_DIM, BLOCK_M, BLOCK_N,
                NUM_STAGES, CAUSAL, FUSED_DQ, DQ_VIA_TMA, DQ_BUFFERS, LATE_DK, ROUNDED_P,
                LATE_STATS,
            )),
            (_consumer, (
                q_smem, do_smem, stats_smem, k_smem, v_smem, ds_smem, dq_smem, kv_bar,
                qd_full, qd_empty, ds_ready, dk_ptr, dv_ptr, dq_ptr, dq_desc, b, hk, start_n,
                seqlen_q, seqlen_k, diag, group, qk_scale2, sm_scale, stride_kb, stride_ks,
                stride_kh, stride_ab, stride_as, stride_ah, 1, HEAD_DIM, BLOCK_M, BLOCK_N,
                NUM_STAGES, CAUSAL, FUSED_DQ, DQ_VIA_TMA, DQ_BUFFERS, LATE_DK, ROUNDED_P,
                LATE_STATS,
            )),
            (_producer, (
                q_desc, k_desc, v_desc, do_desc, stats_desc, q_smem, do_smem, stats_smem,
                k_smem, v_smem, kv_bar, qd_full, qd_empty, b, hk, start_n, seqlen_q, diag,
                group, HEAD_DIM, BLOCK_M, BLOCK_N, NUM_STAGES, CAUSAL,
            )),
        ],
        [4, 4],
        [CONSUMER_REGS, PRODUCER_REGS],
    )  # fmt: skip


# ---------------------------------------------------------------------------------------
# dQ (and delta)


@gluon.jit
def _dq_producer(
    q_desc, k_desc, v_desc, do_desc, o_desc, q_smem, do_smem, o_smem, k_smem, v_smem, q_bar,
    kv_full, kv_empty, b, h, start_m, n_blocks, group, HEAD_DIM: gl.constexpr,
    BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, NUM_STAGES: gl.constexpr,
):  # fmt: skip
    """Q, dO and O of the program's rows (a 64-row half per consumer warpgroup), then K and V
    of every key block they see, in order, into a ring of slots."""
    HALF: gl.constexpr = BLOCK_M // 2
    col_q = h * HEAD_DIM
    col_kv = (h // group) * HEAD_DIM
    mbarrier.expect(q_bar, 2 * (q_desc.block_type.nbytes * 3))
    for w in gl.static_range(2):
        _tma_load(q_desc, [b, start_m + w * HALF, col_q], q_bar, q_smem.index(w))
        _tma_load(do_desc, [b, start_m + w * HALF, col_q], q_bar, do_smem.index(w))
        _tma_load(o_desc, [b, start_m + w * HALF, col_q], q_bar, o_smem.index(w))
    for j in range(n_blocks):
        slot = j % NUM_STAGES
        mbarrier.wait(kv_empty.index(slot), ((j // NUM_STAGES) & 1) ^ 1)
        mbarrier.expect(kv_full.index(slot), k_desc.block_type.nbytes + v_desc.block_type.nbytes)
        _tma_load(k_desc, [b, j * BLOCK_N, col_kv], kv_full.index(slot), k_smem.index(slot))
        _tma_load(v_desc, [b, j * BLOCK_N, col_kv], kv_full.index(slot), v_smem.index(slot))


@gluon.jit
def _dq_step(
    dq, q_tile, do_tile, k_smem, v_smem, kv_full, kv_empty, zero_s, j, lse2, delta, offs_m,
    seqlen_k, diag, qk_scale2, BLOCK_N: gl.constexpr, HEAD_DIM: gl.constexpr,
    NUM_STAGES: gl.constexpr, S_LAYOUT: gl.constexpr, P_LAYOUT: gl.constexpr,
    DTYPE: gl.constexpr, CAUSAL: gl.constexpr, MASKED: gl.constexpr,
):  # fmt: skip
    """Key block j: ``dQ += dS·K_j`` with ``dS = P ⊙ (dO·V_jᵀ − delta)``. MASKED: the block
    holds keys past the sequence or, when CAUSAL, after some rows' diagonal."""
    slot = j % NUM_STAGES
    mbarrier.wait(kv_full.index(slot), (j // NUM_STAGES) & 1)
    k_tile = _tile(k_smem, slot, BLOCK_N, HEAD_DIM)
    v_tile = _tile(v_smem, slot, BLOCK_N, HEAD_DIM)
    s = warpgroup_mma(q_tile, k_tile.permute((1, 0)), zero_s, use_acc=False, is_async=True)
    dp = warpgroup_mma(do_tile, v_tile.permute((1, 0)), zero_s, use_acc=False, is_async=True)
    s = warpgroup_mma_wait(1, deps=[s])
    p = gl.exp2(s * qk_scale2 - lse2[:, None])
    if MASKED:
        offs_n = j * BLOCK_N + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, S_LAYOUT))
        visible = offs_n[None, :] < seqlen_k
        if CAUSAL:
            visible = visible & (offs_n[None, :] <= offs_m[:, None] + diag)
        p = gl.where(visible, p, 0.0)
    dp = warpgroup_mma_wait(0, deps=[dp])
    ds_op = gl.convert_layout((p * (dp - delta[:, None])).to(DTYPE), P_LAYOUT)
    dq = warpgroup_mma(ds_op, k_tile, dq, is_async=True)
    dq, ds_op = warpgroup_mma_wait(0, deps=[dq, ds_op])
    mbarrier.arrive(kv_empty.index(slot))
    return dq


@gluon.jit
def _dq_consumer(
    q_smem, do_smem, o_smem, k_smem, v_smem, q_bar, kv_full, kv_empty, dq_ptr, lse_ptr,
    stats_ptr, b, h, start_m, seqlen_q, seqlen_k, diag, n_blocks, qk_scale2, sm_scale,
    stride_qb, stride_qs, stride_qh, stride_lb, stride_lh, WG: gl.constexpr,
    HEAD_DIM: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr,
    NUM_STAGES: gl.constexpr, CAUSAL: gl.constexpr,
):  # fmt: skip
    """One consumer warpgroup (4 warps, 64 query rows): the row statistics lse·log2 e and
    delta = rowsum(O·dO) of its rows (stored for the dK/dV kernel), then dQ over every key
    block its rows see; stores dQ·scale. dQ is laid out like q (``stride_q*``)."""
    HALF: gl.constexpr = BLOCK_M // 2
    S_LAYOUT: gl.constexpr = gl.NVMMADistributedLayout(
        version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, BLOCK_N, 16]
    )
    O_LAYOUT: gl.constexpr = gl.NVMMADistributedLayout(
        version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, HEAD_DIM, 16]
    )
    P_LAYOUT: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=O_LAYOUT, k_width=2)
    ROWS: gl.constexpr = gl.SliceLayout(1, S_LAYOUT)
    DTYPE: gl.constexpr = q_smem.dtype
    row0 = start_m + WG * HALF
    offs_m = row0 + gl.arange(0, HALF, layout=ROWS)
    in_q = offs_m < seqlen_q
    lse_row = lse_ptr + b.to(gl.int64) * stride_lb + h.to(gl.int64) * stride_lh
    # base-2 log-sum-exp; +inf past the sequence (and for rows that see no key) makes P 0
    lse2 = gl.load(lse_row + offs_m, mask=in_q, other=float("inf")) * _LOG2E
    # the statistics of (batch b, head h): rows 2·(b·heads + h) and the next one of
    # [batch · heads · 2, padded rows], the padded rows being the programs' rows (every row
    # is stored, +inf and 0 past the sequence)
    padded = gl.num_programs(0) * BLOCK_M
    stats_row = stats_ptr + (2 * (b * gl.num_programs(1) + h)).to(gl.int64) * padded
    gl.store(stats_row + offs_m, lse2)
    q_tile = _tile(q_smem, WG, HALF, HEAD_DIM)
    do_tile = _tile(do_smem, WG, HALF, HEAD_DIM)

    mbarrier.wait(q_bar, 0)
    # delta = rowsum(O·dO) in fp32, from the tiles in shared memory (rows past the
    # sequence are zeros)
    o = _tile(o_smem, WG, HALF, HEAD_DIM).load(O_LAYOUT).to(gl.float32)
    delta_o = gl.sum(o * do_tile.load(O_LAYOUT).to(gl.float32), axis=1)
    delta = gl.convert_layout(delta_o, ROWS)
    gl.store(stats_row + padded + offs_m, delta)

    zero_s = gl.zeros([HALF, BLOCK_N], gl.float32, S_LAYOUT)
    dq = gl.zeros([HALF, HEAD_DIM], gl.float32, O_LAYOUT)
    # blocks before n_full are visible whole to every row of this warpgroup
    n_full = seqlen_k // BLOCK_N
    if CAUSAL:
        n_full = gl.minimum(n_full, gl.maximum(row0 + diag + 1, 0) // BLOCK_N)
    n_plain = gl.minimum(n_full, n_blocks)
    for j in range(n_plain):
        dq = _dq_step(
            dq, q_tile, do_tile, k_smem, v_smem, kv_full, kv_empty, zero_s, j, lse2, delta,
            offs_m, seqlen_k, diag, qk_scale2, BLOCK_N, HEAD_DIM, NUM_STAGES, S_LAYOUT,
            P_LAYOUT, DTYPE, CAUSAL, False,
        )  # fmt: skip
    for j in range(n_plain, n_blocks):
        dq = _dq_step(
            dq, q_tile, do_tile, k_smem, v_smem, kv_full, kv_empty, zero_s, j, lse2, delta,
            offs_m, seqlen_k, diag, qk_scale2, BLOCK_N, HEAD_DIM, NUM_STAGES, S_LAYOUT,
            P_LAYOUT, DTYPE, CAUSAL, True,
        )  # fmt: skip

    offs_r = row0 + gl.arange(0, HALF, layout=gl.SliceLayout(1, O_LAYOUT))
    offs_d = gl.arange(0, HEAD_DIM, layout=gl.SliceLayout(0, O_LAYOUT))
    rows = (
        b.to(gl.int64) * stride_qb
        + h.to(gl.int64) * stride_qh
        + offs_r.to(gl.int64)[:, None] * stride_qs
        + offs_d[None, :]
    )
    gl.store(
        dq_ptr + rows,
        (dq * sm_scale).to(dq_ptr.dtype.element_ty),
        mask=(offs_r < seqlen_q)[:, None],
    )


@gluon.jit
def flash_bwd_dq_hopper_kernel(
    q_desc, k_desc, v_desc, do_desc, o_desc, dq_ptr, lse_ptr, stats_ptr, seqlen_q, seqlen_k,
    group, qk_scale2, sm_scale, stride_qb, stride_qs, stride_qh, stride_lb, stride_lh,
    HEAD_DIM: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr,
    NUM_STAGES: gl.constexpr, CAUSAL: gl.constexpr, CONSUMER_REGS: gl.constexpr,
    PRODUCER_REGS: gl.constexpr,
):  # fmt: skip
    """dQ and delta = rowsum(O·dO) of BLOCK_M query rows of one head. ``q_desc``,
    ``do_desc``, ``o_desc``: copy-engine descriptors over q, dout and the forward's output
    ``[batch, seqlen_q, heads · D]`` with boxes ``[1, BLOCK_M / 2, D]``; ``k_desc``,
    ``v_desc`` over k and v ``[batch, seqlen_k, heads_k · D]`` with boxes
    ``[1, BLOCK_N, D]``; ``dq_ptr`` ``[batch, seqlen_q, heads, D]`` with the strides given
    (unit stride along D); ``lse_ptr`` ``[batch, heads, seqlen_q]`` fp32 (the forward's,
    natural log); ``stats_ptr`` ``[batch, heads, 2, cdiv(seqlen_q, BLOCK_M) · BLOCK_M]``
    fp32, contiguous, where the row statistics lse·log2 e and delta go."""
    pid_m = gl.program_id(0)
    if CAUSAL:
        pid_m = gl.num_programs(0) - 1 - pid_m  # the longest rows first
    h = gl.program_id(1)
    b = gl.program_id(2)
    start_m = pid_m * BLOCK_M
    diag = seqlen_k - seqlen_q
    n_blocks = gl.cdiv(seqlen_k, BLOCK_N)
    if CAUSAL:
        n_blocks = gl.minimum(n_blocks, gl.cdiv(gl.maximum(start_m + BLOCK_M + diag, 0), BLOCK_N))

    dtype: gl.constexpr = q_desc.dtype
    HALF: gl.constexpr = BLOCK_M // 2
    q_smem = gl.allocate_shared_memory(dtype, [2, 1, HALF, HEAD_DIM], q_desc.layout)
    do_smem = gl.allocate_shared_memory(dtype, [2, 1, HALF, HEAD_DIM], do_desc.layout)
    o_smem = gl.allocate_shared_memory(dtype, [2, 1, HALF, HEAD_DIM], o_desc.layout)
    k_smem = gl.allocate_shared_memory(dtype, [NUM_STAGES, 1, BLOCK_N, HEAD_DIM], k_desc.layout)
    v_smem = gl.allocate_shared_memory(dtype, [NUM_STAGES, 1, BLOCK_N, HEAD_DIM], v_desc.layout)
    q_bar = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    kv_full = gl.allocate_shared_memory(gl.int64, [NUM_STAGES, 1], mbarrier.MBarrierLayout())
    kv_empty = gl.allocate_shared_memory(gl.int64, [NUM_STAGES, 1], mbarrier.MBarrierLayout())
    mbarrier.init(q_bar, count=1)
    for i in gl.static_range(NUM_STAGES):
        mbarrier.init(kv_full.index(i), count=1)
        mbarrier.init(kv_empty.index(i), count=2)  # released by both consumer warpgroups
    fence_async_shared()
    _block_barrier()

    gl.warp_specialize(
        [
            (_dq_consumer, (
                q_smem, do_smem, o_smem, k_smem, v_smem, q_bar, kv_full, kv_empty, dq_ptr,
                lse_ptr, stats_ptr, b, h, start_m, seqlen_q, seqlen_k, diag, n_blocks,
                qk_scale2, sm_scale, stride_qb, stride_qs, stride_qh, stride_lb, stride_lh,
                0, HEAD_DIM, BLOCK_M, BLOCK_N, NUM_STAGES, CAUSAL,
            )),
            (_dq_consumer, (
                q_smem, do_smem, o_smem, k_smem, v_smem, q_bar, kv_full, kv_empty, dq_ptr,
                lse_ptr, stats_ptr, b, h, start_m, seqlen_q, seqlen_k, diag, n_blocks,
                qk_scale2, sm_scale, stride_qb, stride_qs, stride_qh, stride_lb, stride_lh,
                1, HEAD_DIM, BLOCK_M, BLOCK_N, NUM_STAGES, CAUSAL,
            )),
            (_dq_producer, (
                q_desc, k_desc, v_desc, do_desc, o_desc, q_smem, do_smem, o_smem, k_smem,
                v_smem, q_bar, kv_full, kv_empty, b, h, start_m, n_blocks, group, HEAD_DIM,
                BLOCK_M, BLOCK_N, NUM_STAGES,
            )),
        ],
        [4, 4],
        [CONSUMER_REGS, PRODUCER_REGS],
    )  # fmt: skip
