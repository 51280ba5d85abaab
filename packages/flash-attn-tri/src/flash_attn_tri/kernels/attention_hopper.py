"""The attention forward for Hopper (sm_90), written in Gluon, warp-specialised.

**Experimental, off by default** (``FLASH_ATTN_TRI_GLUON=1`` turns it on): it compiles
(``tools/kernel_stats.py flash-attn-fwd-hopper-d128``) but has not yet been run on a GPU;
``tests/test_gpu.py::test_gluon_forward_*`` are the checks it has to pass before it can be
the default.

What it covers: fixed-length ``[batch, seqlen, heads, D]`` inputs, fp16/bf16, D = 64 or 128
(v's head dim equal to q's), GQA, causal (aligned to the bottom right) or not, a positive
softmax scale; no window, softcap, ALiBi or dropout (those take the Triton kernel).

One program per (BLOCK_M = 128 query rows, head, batch), three warpgroups:

- a **producer** warpgroup issues the copy engine's loads (TMA): the query tile once, then
  each key block's K and V tiles into a ring of NUM_STAGES slots, K and V on barriers of
  their own (``k_full`` / ``v_full``), so that the scores of a block can start before its
  V has landed;
- two **consumer** warpgroups (the default partition, 8 warps, 64 query rows each) run the
  matmuls and the online softmax. Each step issues the next block's scores
  ``S_{j+1} = Q·K_{j+1}ᵀ`` asynchronously and computes the softmax of block j while the
  tensor cores work on them, then issues ``O += P_j·V_j`` with P in registers, and hands
  the slot back (``kv_empty``) once both have completed. That overlap of the exponentials
  with the next block's matmul is what the Triton kernel cannot express: it waits on every
  matmul whose result its loop uses.

The scale is folded into the exponent: the row maximum is taken on the raw scores and
``p = exp2(s · scale·log2(e) − m)`` is one multiply-add per score. A row that sees no key
gets output 0 and log-sum-exp +inf, as the Triton kernel gives it.
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

_LN2: gl.constexpr = gl.constexpr(0.6931471805599453)

# Gluon is experimental and renames things between Triton releases (3.6:
# async_copy_global_to_shared and thread_barrier, later: async_load and barrier).
_tma_load = getattr(tma, "async_load", None) or tma.async_copy_global_to_shared
_block_barrier = getattr(gl, "thread_barrier", None) or gl.barrier


# ---------------------------------------------------------------------------------------
# producer


@gluon.jit
def _producer(
    q_desc, k_desc, v_desc, q_smem, k_smem, v_smem, q_bar, k_full, v_full, kv_empty, b,
    start_m, col_q, col_kv, n_blocks, BLOCK_N: gl.constexpr, NUM_STAGES: gl.constexpr,
):  # fmt: skip
    """The query tile, then K and V of every key block the program's rows can see, in
    order; slot ``j % NUM_STAGES`` is refilled once the consumers have released it."""
    mbarrier.expect(q_bar, q_desc.block_type.nbytes)
    _tma_load(q_desc, [b, start_m, col_q], q_bar, q_smem.index(0))
    for j in range(n_blocks):
        slot = j % NUM_STAGES
        mbarrier.wait(kv_empty.index(slot), ((j // NUM_STAGES) & 1) ^ 1)
        mbarrier.expect(k_full.index(slot), k_desc.block_type.nbytes)
        _tma_load(k_desc, [b, j * BLOCK_N, col_kv], k_full.index(slot), k_smem.index(slot))
        mbarrier.expect(v_full.index(slot), v_desc.block_type.nbytes)
        _tma_load(v_desc, [b, j * BLOCK_N, col_kv], v_full.index(slot), v_smem.index(slot))


# ---------------------------------------------------------------------------------------
# consumers


@gluon.jit
def _mask_scores(s, offs_m, offs_n, seqlen_k, diag, CAUSAL: gl.constexpr):
    """-inf on keys past the sequence and, when CAUSAL, on keys after the row's last
    visible one (``n <= m + diag``, the diagonal aligned to the bottom right)."""
    visible = offs_n[None, :] < seqlen_k
    if CAUSAL:
        visible = visible & (offs_n[None, :] <= offs_m[:, None] + diag)
    return gl.where(visible, s, float("-inf"))


@gluon.jit
def _softmax_step(s, m_i, l_i, qk_scale2):
    """Online softmax over one block of raw scores ``s`` (``qk_scale2`` = scale·log2(e) > 0):
    the new running maximum (base 2, scaled) and sum, the block's probabilities and the
    factor that rescales what was accumulated before. Rows with no visible key so far keep
    m = -inf and shift by 0, so nothing turns NaN."""
    m_new = gl.maximum(m_i, gl.max(s, axis=1) * qk_scale2)
    m_safe = gl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = gl.exp2(m_i - m_safe)
    p = gl.exp2(s * qk_scale2 - m_safe[:, None])
    l_i = l_i * alpha + gl.sum(p, axis=1)
    return m_new, l_i, p, alpha


@gluon.jit
def _consume_block(
    s, acc, m_i, l_i, v_tile, j, offs_m, offs_n0, seqlen_k, diag, qk_scale2,
    BLOCK_N: gl.constexpr, CAUSAL: gl.constexpr, O_LAYOUT: gl.constexpr, MASKED: gl.constexpr,
):  # fmt: skip
    """Softmax of block j's scores and the issue of ``acc += P·V`` (asynchronous: the caller
    waits for it). MASKED: the block holds keys some rows must not see."""
    if MASKED:
        s = _mask_scores(s, offs_m, j * BLOCK_N + offs_n0, seqlen_k, diag, CAUSAL)
    m_i, l_i, p, alpha = _softmax_step(s, m_i, l_i, qk_scale2)
    acc = acc * gl.convert_layout(alpha, gl.SliceLayout(1, O_LAYOUT))[:, None]
    p_op = gl.convert_layout(
        p.to(v_tile.dtype), gl.DotOperandLayout(operand_index=0, parent=O_LAYOUT, k_width=2)
    )
    acc = warpgroup_mma(p_op, v_tile, acc, is_async=True)
    return acc, m_i, l_i


@gluon.jit
def _tile(ring, slot, ROWS: gl.constexpr, HEAD_DIM: gl.constexpr):
    """Slot ``slot`` of a ring of ``[1, ROWS, HEAD_DIM]`` copy-engine boxes, as a matrix."""
    return ring.index(slot).reshape([ROWS, HEAD_DIM])


@gluon.jit
def _pipelined_step(
    s, acc, m_i, l_i, q, k_smem, v_smem, k_full, v_full, kv_empty, zero_s, j, offs_m,
    offs_n0, seqlen_k, diag, qk_scale2, BLOCK_N: gl.constexpr, HEAD_DIM: gl.constexpr,
    NUM_STAGES: gl.constexpr, CAUSAL: gl.constexpr, O_LAYOUT: gl.constexpr,
    MASKED: gl.constexpr,
):  # fmt: skip
    """Block j (scores ``s`` ready): issue block j + 1's scores, softmax of block j and its
    ``P·V`` meanwhile, wait for both, release block j's slot. Returns block j + 1's scores
    and the updated state."""
    slot = j % NUM_STAGES
    nxt = (j + 1) % NUM_STAGES
    # the next block's scores run on the tensor cores during this block's softmax
    mbarrier.wait(k_full.index(nxt), ((j + 1) // NUM_STAGES) & 1)
    s_next = warpgroup_mma(
        q, _tile(k_smem, nxt, BLOCK_N, HEAD_DIM).permute((1, 0)), zero_s, use_acc=False,
        is_async=True,
    )  # fmt: skip
    mbarrier.wait(v_full.index(slot), (j // NUM_STAGES) & 1)
    acc, m_i, l_i = _consume_block(
        s, acc, m_i, l_i, _tile(v_smem, slot, BLOCK_N, HEAD_DIM), j, offs_m, offs_n0,
        seqlen_k, diag, qk_scale2, BLOCK_N, CAUSAL, O_LAYOUT, MASKED,
    )  # fmt: skip
    s, acc = warpgroup_mma_wait(0, deps=[s_next, acc])
    mbarrier.arrive(kv_empty.index(slot))
    return s, acc, m_i, l_i


@gluon.jit
def _consumer(
    q_smem, k_smem, v_smem, q_bar, k_full, v_full, kv_empty, out_ptr, lse_ptr, b, h, start_m,
    seqlen_q, seqlen_k, diag, n_blocks, n_full, qk_scale2, stride_ob, stride_os, stride_oh,
    stride_lb, stride_lh, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr,
    HEAD_DIM: gl.constexpr, NUM_STAGES: gl.constexpr, CAUSAL: gl.constexpr,
):  # fmt: skip
    """The two consumer warpgroups (8 warps, 64 rows each): scores, softmax, ``P·V``, and the
    output and log-sum-exp of the program's rows."""
    S_LAYOUT: gl.constexpr = gl.NVMMADistributedLayout(
        version=[3, 0], warps_per_cta=[8, 1], instr_shape=[16, BLOCK_N, 16]
    )
    O_LAYOUT: gl.constexpr = gl.NVMMADistributedLayout(
        version=[3, 0], warps_per_cta=[8, 1], instr_shape=[16, HEAD_DIM, 16]
    )
    ROWS: gl.constexpr = gl.SliceLayout(1, S_LAYOUT)
    offs_m = start_m + gl.arange(0, BLOCK_M, layout=ROWS)
    offs_n0 = gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, S_LAYOUT))
    zero_s = gl.zeros([BLOCK_M, BLOCK_N], gl.float32, S_LAYOUT)
    acc = gl.zeros([BLOCK_M, HEAD_DIM], gl.float32, O_LAYOUT)
    m_i = gl.full([BLOCK_M], float("-inf"), gl.float32, ROWS)
    l_i = gl.zeros([BLOCK_M], gl.float32, ROWS)
    q = _tile(q_smem, 0, BLOCK_M, HEAD_DIM)

    mbarrier.wait(q_bar, 0)
    mbarrier.wait(k_full.index(0), 0)
    s = warpgroup_mma(q, _tile(k_smem, 0, BLOCK_N, HEAD_DIM).permute((1, 0)), zero_s, use_acc=False)
    # blocks before n_full need no mask; every block but the last issues the next one's scores
    n_pipe = n_blocks - 1
    n_plain = gl.minimum(n_full, n_pipe)
    for j in range(n_plain):
        s, acc, m_i, l_i = _pipelined_step(
            s, acc, m_i, l_i, q, k_smem, v_smem, k_full, v_full, kv_empty, zero_s, j, offs_m,
            offs_n0, seqlen_k, diag, qk_scale2, BLOCK_N, HEAD_DIM, NUM_STAGES, CAUSAL,
            O_LAYOUT, False,
        )  # fmt: skip
    for j in range(n_plain, n_pipe):
        s, acc, m_i, l_i = _pipelined_step(
            s, acc, m_i, l_i, q, k_smem, v_smem, k_full, v_full, kv_empty, zero_s, j, offs_m,
            offs_n0, seqlen_k, diag, qk_scale2, BLOCK_N, HEAD_DIM, NUM_STAGES, CAUSAL,
            O_LAYOUT, True,
        )  # fmt: skip
    last = n_blocks - 1
    slot = last % NUM_STAGES
    v_tile = _tile(v_smem, slot, BLOCK_N, HEAD_DIM)
    mbarrier.wait(v_full.index(slot), (last // NUM_STAGES) & 1)
    # (each branch waits for its own P·V: an accumulator still in flight cannot leave it)
    if last >= n_full:
        acc, m_i, l_i = _consume_block(
            s, acc, m_i, l_i, v_tile, last, offs_m, offs_n0, seqlen_k, diag, qk_scale2,
            BLOCK_N, CAUSAL, O_LAYOUT, True,
        )  # fmt: skip
        acc = warpgroup_mma_wait(0, deps=[acc])
    else:
        acc, m_i, l_i = _consume_block(
            s, acc, m_i, l_i, v_tile, last, offs_m, offs_n0, seqlen_k, diag, qk_scale2,
            BLOCK_N, CAUSAL, O_LAYOUT, False,
        )  # fmt: skip
        acc = warpgroup_mma_wait(0, deps=[acc])
    mbarrier.arrive(kv_empty.index(slot))

    # A row that saw no key: l = 0, output 0 and lse = +inf (so the backward's p is 0).
    l_o = gl.convert_layout(l_i, gl.SliceLayout(1, O_LAYOUT))
    out = acc * gl.where(l_o > 0.0, 1.0 / l_o, 0.0)[:, None]
    offs_mo = start_m + gl.arange(0, BLOCK_M, layout=gl.SliceLayout(1, O_LAYOUT))
    offs_d = gl.arange(0, HEAD_DIM, layout=gl.SliceLayout(0, O_LAYOUT))
    o_rows = out_ptr + b.to(gl.int64) * stride_ob + h.to(gl.int64) * stride_oh
    gl.store(
        o_rows + offs_mo.to(gl.int64)[:, None] * stride_os + offs_d[None, :],
        out.to(out_ptr.dtype.element_ty),
        mask=(offs_mo < seqlen_q)[:, None],
    )
    lse = gl.where(l_i > 0.0, (m_i + gl.log2(l_i)) * _LN2, float("inf"))
    lse_row = lse_ptr + b.to(gl.int64) * stride_lb + h.to(gl.int64) * stride_lh
    gl.store(lse_row + offs_m, lse, mask=offs_m < seqlen_q)


# ---------------------------------------------------------------------------------------
# kernel


@gluon.jit
def flash_fwd_hopper_kernel(
    q_desc, k_desc, v_desc, out_ptr, lse_ptr, seqlen_q, seqlen_k, group, qk_scale2,
    stride_ob, stride_os, stride_oh, stride_lb, stride_lh, HEAD_DIM: gl.constexpr,
    BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, NUM_STAGES: gl.constexpr,
    CAUSAL: gl.constexpr, PRODUCER_REGS: gl.constexpr,
):  # fmt: skip
    """Output and log-sum-exp of BLOCK_M query rows of one head. ``q_desc``, ``k_desc``,
    ``v_desc``: copy-engine descriptors over q ``[batch, seqlen_q, heads · D]`` and k, v
    ``[batch, seqlen_k, heads_k · D]`` with boxes ``[1, BLOCK_M or BLOCK_N, D]`` (rows past a
    sequence arrive as zeros); ``out_ptr`` ``[batch, seqlen_q, heads, D]`` (unit stride
    along D), ``lse_ptr`` ``[batch, heads, seqlen_q]`` fp32 (unit stride along the rows)."""
    pid_m = gl.program_id(0)
    if CAUSAL:
        # the longest rows first: programs start in order of their index, and the last
        # query blocks see the most keys
        pid_m = gl.num_programs(0) - 1 - pid_m
    h = gl.program_id(1)
    b = gl.program_id(2)
    start_m = pid_m * BLOCK_M
    diag = seqlen_k - seqlen_q
    n_blocks = gl.cdiv(seqlen_k, BLOCK_N)
    n_full = seqlen_k // BLOCK_N
    if CAUSAL:
        # keys up to the last row's diagonal; blocks up to the first row's diagonal are whole
        n_blocks = gl.minimum(n_blocks, gl.cdiv(gl.maximum(start_m + BLOCK_M + diag, 0), BLOCK_N))
        n_full = gl.minimum(n_full, gl.maximum(start_m + diag + 1, 0) // BLOCK_N)
    # rows that see no key at all still take one (fully masked) block: output 0, lse +inf
    n_blocks = gl.maximum(n_blocks, 1)

    dtype: gl.constexpr = q_desc.dtype
    q_smem = gl.allocate_shared_memory(dtype, [1, 1, BLOCK_M, HEAD_DIM], q_desc.layout)
    k_smem = gl.allocate_shared_memory(dtype, [NUM_STAGES, 1, BLOCK_N, HEAD_DIM], k_desc.layout)
    v_smem = gl.allocate_shared_memory(dtype, [NUM_STAGES, 1, BLOCK_N, HEAD_DIM], v_desc.layout)
    q_bar = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    k_full = gl.allocate_shared_memory(gl.int64, [NUM_STAGES, 1], mbarrier.MBarrierLayout())
    v_full = gl.allocate_shared_memory(gl.int64, [NUM_STAGES, 1], mbarrier.MBarrierLayout())
    kv_empty = gl.allocate_shared_memory(gl.int64, [NUM_STAGES, 1], mbarrier.MBarrierLayout())
    mbarrier.init(q_bar, count=1)
    for i in gl.static_range(NUM_STAGES):
        mbarrier.init(k_full.index(i), count=1)
        mbarrier.init(v_full.index(i), count=1)
        mbarrier.init(kv_empty.index(i), count=1)
    # the initialised barriers, visible to the copy engine and to every warp before either
    # partition touches them
    fence_async_shared()
    _block_barrier()

    # (the argument tuples are written inline: assigned to a name first, their constexprs
    # would arrive as tensors)
    gl.warp_specialize(
        [
            (_consumer, (
                q_smem, k_smem, v_smem, q_bar, k_full, v_full, kv_empty, out_ptr, lse_ptr, b,
                h, start_m, seqlen_q, seqlen_k, diag, n_blocks, n_full, qk_scale2, stride_ob,
                stride_os, stride_oh, stride_lb, stride_lh, BLOCK_M, BLOCK_N, HEAD_DIM,
                NUM_STAGES, CAUSAL,
            )),
            (_producer, (
                q_desc, k_desc, v_desc, q_smem, k_smem, v_smem, q_bar, k_full, v_full,
                kv_empty, b, start_m, h * HEAD_DIM, (h // group) * HEAD_DIM, n_blocks,
                BLOCK_N, NUM_STAGES,
            )),
        ],
        [4],
        [PRODUCER_REGS],
    )  # fmt: skip
