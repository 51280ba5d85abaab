"""The attention forward for Hopper (sm_90), written in Gluon, warp-specialised.

The default forward at D = 128 (``attention._gluon_forward_wanted`` says where; the Triton
kernel keeps D = 64, where it measured faster).

What it covers: fixed-length ``[batch, seqlen, heads, D]`` inputs, fp16/bf16, D = 64 or 128
(v's head dim equal to q's), GQA, causal (aligned to the bottom right) or not, a positive
softmax scale; no window, softcap, ALiBi or dropout (those take the Triton kernel).

The work is cut into tiles of BLOCK_M = 128 query rows of one head, grouped into units
(one tile, or under a causal mask a long and a short one, see ``_tile_of``); program p
takes units p, p + programs, ... The host picks the schedule
(``attention._gluon_forward_schedule``): one program a unit, or persistent programs, one
a multiprocessor, where the next tile's keys and queries load while the current one
finishes (at 1024 keys a tile is only 8 key blocks, and its start and end cost about two
of them). A program has three warpgroups, each a partition of its own:

- a **producer** warpgroup issues the copy engine's loads (TMA): the two 64-row query
  tiles (two buffers for each consumer warpgroup, taken in turn from tile to tile), then
  each key block's K and V tiles into a ring of NUM_STAGES slots (the rings run on from
  tile to tile). K and V have barriers of their own both ways: a block's
  scores can start before its V has landed, and a K slot is handed back as soon as its
  scores are done, a whole step before its V. With two slots at D = 128, releasing K and
  V together left every step waiting for the copy of the next K (BENCHMARKS.md: 440 →
  590 TFLOP/s);
- two **consumer** warpgroups, 64 query rows each, run the matmuls and the online
  softmax. Step j issues ``S_{j+1} = Q·K_{j+1}ᵀ`` and ``O += P_j·V_j`` back to back, waits
  for the scores, runs their softmax, then waits for ``P·V`` and rescales O. The two
  warpgroups take turns at issuing (``PINGPONG``), so that one's softmax runs while the
  other's matmuls occupy the tensor cores. The output goes to global memory with plain
  stores from registers, or (``O_VIA_TMA``) through the tile's query buffer, its scores
  done, and one copy-engine store that runs while the warpgroup starts its next tile
  (the buffer is handed back once that store has read it).

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
    warpgroup_mma,
    warpgroup_mma_wait,
)

from tri_shared.gluon import block_barrier as _block_barrier
from tri_shared.gluon import tma_load as _tma_load
from tri_shared.gluon import tma_store as _tma_store
from tri_shared.gluon import tma_store_wait as _tma_store_wait

_LN2: gl.constexpr = gl.constexpr(0.6931471805599453)


# ---------------------------------------------------------------------------------------
# the schedule: which tiles a program takes


@gluon.jit
def _tiles_in_unit(unit, n_m, units_per_head, PAIR: gl.constexpr):
    """How many tiles (query blocks) unit ``unit`` holds: two when PAIR, but one for the
    middle block of an odd count."""
    n = 1
    if PAIR:
        n = 2 - (2 * (unit % units_per_head) + 1 == n_m).to(gl.int32)
    return n


@gluon.jit
def _tile_of(unit, half, heads, n_m, units_per_head, PAIR: gl.constexpr):
    """(batch, head, query block) of tile ``half`` of unit ``unit``. Units run over the
    query blocks of a head, then the heads, then the batch, so that the programs running
    at one time share the keys of a few heads in L2. Within a head the last query blocks
    come first: under a causal mask they see the most keys. When PAIR, unit u holds blocks
    n_m - 1 - u and u, whose key counts add up to about the same for every unit."""
    bh = unit // units_per_head
    u = unit - bh * units_per_head
    m = n_m - 1 - u
    if PAIR:
        m = m - half * (n_m - 1 - 2 * u)
    return bh // heads, bh % heads, m


@gluon.jit
def _key_blocks(start_m, seqlen_k, diag, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr,
                CAUSAL: gl.constexpr):  # fmt: skip
    """The key blocks the query rows from ``start_m`` see: all of them, or under CAUSAL those
    up to the last row's diagonal; at least one (rows that see no key at all still take one
    fully masked block: output 0, lse +inf)."""
    n_blocks = gl.cdiv(seqlen_k, BLOCK_N)
    if CAUSAL:
        n_blocks = gl.minimum(n_blocks, gl.cdiv(gl.maximum(start_m + BLOCK_M + diag, 0), BLOCK_N))
    return gl.maximum(n_blocks, 1)


# ---------------------------------------------------------------------------------------
# producer


@gluon.jit
def _producer(
    q_desc, k_desc, v_desc, q_smem, k_smem, v_smem, q_full, q_empty, k_full, v_full, k_empty,
    v_empty, seqlen_q, seqlen_k, heads, group, n_m, units_per_head, n_units,
    BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, HEAD_DIM: gl.constexpr,
    NUM_STAGES: gl.constexpr, CAUSAL: gl.constexpr, PAIR: gl.constexpr,
):  # fmt: skip
    """Tile after tile of the program: the first key block's K, the two query tiles (one
    per consumer warpgroup, into the buffer that warpgroup used two tiles before, once it
    has handed it back), then V and K of every key block the rows can see, in order. The
    K and V rings run on across tiles: a K (V) slot is refilled once both consumers have
    released it, K right after its scores, V after its ``P·V``; so the next tile's first
    keys and queries arrive while the consumers finish the current one."""
    ROWS_WG: gl.constexpr = BLOCK_M // 2
    diag = seqlen_k - seqlen_q
    ring = 0  # key blocks loaded so far, over all the program's tiles
    tile = 0
    for unit in range(gl.program_id(0), n_units, gl.num_programs(0)):
        for half in range(_tiles_in_unit(unit, n_m, units_per_head, PAIR)):
            b, h, m = _tile_of(unit, half, heads, n_m, units_per_head, PAIR)
            start_m = m * BLOCK_M
            col_kv = (h // group) * HEAD_DIM
            for j in range(_key_blocks(start_m, seqlen_k, diag, BLOCK_M, BLOCK_N, CAUSAL)):
                slot = ring % NUM_STAGES
                phase = ((ring // NUM_STAGES) & 1) ^ 1
                mbarrier.wait(k_empty.index(slot), phase)
                mbarrier.expect(k_full.index(slot), k_desc.block_type.nbytes)
                _tma_load(k_desc, [b, j * BLOCK_N, col_kv], k_full.index(slot), k_smem.index(slot))
                if j == 0:
                    for wg in gl.static_range(2):
                        buf = 2 * wg + tile % 2
                        mbarrier.wait(q_empty.index(buf), ((tile // 2) & 1) ^ 1)
                        mbarrier.expect(q_full.index(buf), q_desc.block_type.nbytes)
                        _tma_load(
                            q_desc, [b, start_m + wg * ROWS_WG, h * HEAD_DIM], q_full.index(buf),
                            q_smem.index(buf),
                        )  # fmt: skip
                mbarrier.wait(v_empty.index(slot), phase)
                mbarrier.expect(v_full.index(slot), v_desc.block_type.nbytes)
                _tma_load(v_desc, [b, j * BLOCK_N, col_kv], v_full.index(slot), v_smem.index(slot))
                ring += 1
            tile += 1


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
def _softmax_step(
    s, m_i, l_i, j, offs_m, offs_n0, seqlen_k, diag, qk_scale2, BLOCK_N: gl.constexpr,
    CAUSAL: gl.constexpr, MASKED: gl.constexpr,
):  # fmt: skip
    """Online softmax over block j's raw scores ``s`` (``qk_scale2`` = scale·log2(e) > 0):
    the new running maximum (base 2, scaled) and sum, the block's probabilities (fp32) and
    the factor that rescales what was accumulated before. Rows
    with no visible key so far keep m = -inf and shift by 0, so nothing turns NaN. MASKED:
    the block holds keys some rows must not see."""
    if MASKED:
        s = _mask_scores(s, offs_m, j * BLOCK_N + offs_n0, seqlen_k, diag, CAUSAL)
    m_new = gl.maximum(m_i, gl.max(s, axis=1) * qk_scale2)
    m_safe = gl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = gl.exp2(m_i - m_safe)
    p = gl.exp2(s * qk_scale2 - m_safe[:, None])
    l_i = l_i * alpha + gl.sum(p, axis=1)
    return m_new, l_i, p, alpha


@gluon.jit
def _tile(ring, slot, ROWS: gl.constexpr, HEAD_DIM: gl.constexpr):
    """Slot ``slot`` of a ring of ``[1, ROWS, HEAD_DIM]`` copy-engine boxes, as a matrix."""
    return ring.index(slot).reshape([ROWS, HEAD_DIM])


@gluon.jit
def _pipelined_step(
    p, acc, m_i, l_i, q, k_smem, v_smem, k_full, v_full, k_empty, v_empty, turn, zero_s, j,
    ring, step, offs_m, offs_n0, seqlen_k, diag, qk_scale2, BLOCK_N: gl.constexpr,
    HEAD_DIM: gl.constexpr, NUM_STAGES: gl.constexpr, CAUSAL: gl.constexpr,
    O_LAYOUT: gl.constexpr, P_LAYOUT: gl.constexpr, DTYPE: gl.constexpr, WG: gl.constexpr,
    PINGPONG: gl.constexpr, MASKED: gl.constexpr,
):  # fmt: skip
    """Block j's probabilities ``p`` in hand: issue block j + 1's scores and ``acc += P_j·V_j``
    back to back, release block j + 1's K once its scores are in, run their softmax, wait
    for ``P_j·V_j`` and rescale the accumulator. ``ring``: block j's place in the K/V rings
    (counted over the program's tiles); ``step``: the program's pipelined steps before this
    one (the issuing turns). MASKED refers to block j + 1."""
    slot = ring % NUM_STAGES
    nxt = (ring + 1) % NUM_STAGES
    # V of block j - 1: its P·V completed in the previous step. Released here rather than
    # right after that step's wait: the barrier in front of an arrive would drag the wait
    # up over the exponentials.
    mbarrier.arrive(v_empty.index((ring + NUM_STAGES - 1) % NUM_STAGES), pred=j > 0)
    mbarrier.wait(k_full.index(nxt), ((ring + 1) // NUM_STAGES) & 1)
    mbarrier.wait(v_full.index(slot), (ring // NUM_STAGES) & 1)
    if PINGPONG:
        # the two warpgroups take turns at issuing their matmuls, so that one's softmax
        # runs while the other's matmuls occupy the tensor cores
        mbarrier.wait(turn.index(WG), step & 1)
    s_next = warpgroup_mma(
        q, _tile(k_smem, nxt, BLOCK_N, HEAD_DIM).permute((1, 0)), zero_s, use_acc=False,
        is_async=True,
    )  # fmt: skip
    acc = warpgroup_mma(p, _tile(v_smem, slot, BLOCK_N, HEAD_DIM), acc, is_async=True)
    if PINGPONG:
        mbarrier.arrive(turn.index(1 - WG))
    s = warpgroup_mma_wait(1, deps=[s_next])
    mbarrier.arrive(k_empty.index(nxt))  # K of block j + 1 is no longer needed
    m_i, l_i, p_next, alpha = _softmax_step(
        s, m_i, l_i, j + 1, offs_m, offs_n0, seqlen_k, diag, qk_scale2, BLOCK_N, CAUSAL, MASKED
    )
    # p among the dependencies keeps its registers untouched while P·V reads them, so the
    # conversion of the next probabilities comes after the wait. p_next and l_i are there
    # to hold the exponentials before it, but ptxas schedules the wait ahead of them all
    # the same: within a warpgroup the softmax does not overlap its own P·V, the overlap is
    # between the two warpgroups.
    acc, p, p_next, l_i = warpgroup_mma_wait(0, deps=[acc, p, p_next, l_i])
    acc = acc * gl.convert_layout(alpha, gl.SliceLayout(1, O_LAYOUT))[:, None]
    return gl.convert_layout(p_next.to(DTYPE), P_LAYOUT), acc, m_i, l_i


@gluon.constexpr_function
def _scores_layout(block_n):
    """Layout of a consumer warpgroup's ``[64, BLOCK_N]`` scores (wgmma's accumulator)."""
    return gl.NVMMADistributedLayout(
        version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, block_n, 16]
    )


@gluon.constexpr_function
def _out_layout(head_dim):
    """Layout of a consumer warpgroup's ``[64, D]`` output accumulator."""
    return gl.NVMMADistributedLayout(
        version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, head_dim, 16]
    )


@gluon.constexpr_function
def _probs_layout(head_dim):
    """Layout of the probabilities as the first operand of ``P·V`` (from registers)."""
    return gl.DotOperandLayout(operand_index=0, parent=_out_layout(head_dim), k_width=2)


@gluon.jit
def _rows(start_m, seqlen_k, diag, WG: gl.constexpr, ROWS_WG: gl.constexpr,
          BLOCK_N: gl.constexpr, CAUSAL: gl.constexpr):  # fmt: skip
    """The query rows of warpgroup WG in the tile from ``start_m`` (layout of the scores'
    rows) and how many leading key blocks every one of them sees whole."""
    S_LAYOUT: gl.constexpr = _scores_layout(BLOCK_N)
    row0 = start_m + WG * ROWS_WG
    offs_m = row0 + gl.arange(0, ROWS_WG, layout=gl.SliceLayout(1, S_LAYOUT))
    n_full = seqlen_k // BLOCK_N
    if CAUSAL:
        n_full = gl.minimum(n_full, gl.maximum(row0 + diag + 1, 0) // BLOCK_N)
    return offs_m, n_full


@gluon.jit
def _first_softmax(s, offs_m, n_full, seqlen_k, diag, qk_scale2, BLOCK_N: gl.constexpr,
                   CAUSAL: gl.constexpr):  # fmt: skip
    """A tile's first block: the running maximum and sum and the probabilities (fp32) of its
    scores ``s``, masked unless every row sees the whole block."""
    S_LAYOUT: gl.constexpr = _scores_layout(BLOCK_N)
    ROWS_WG: gl.constexpr = s.shape[0]
    offs_n0 = gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, S_LAYOUT))
    m_i = gl.full([ROWS_WG], float("-inf"), gl.float32, gl.SliceLayout(1, S_LAYOUT))
    l_i = gl.zeros([ROWS_WG], gl.float32, gl.SliceLayout(1, S_LAYOUT))
    if n_full > 0:
        m_i, l_i, p, _ = _softmax_step(
            s, m_i, l_i, 0, offs_m, offs_n0, seqlen_k, diag, qk_scale2, BLOCK_N, CAUSAL, False
        )
    else:
        m_i, l_i, p, _ = _softmax_step(
            s, m_i, l_i, 0, offs_m, offs_n0, seqlen_k, diag, qk_scale2, BLOCK_N, CAUSAL, True
        )
    return p, m_i, l_i


@gluon.jit
def _open_tile(
    q_smem, k_smem, q_full, k_full, k_empty, start_m, seqlen_k, diag, ring, tile, qk_scale2,
    WG: gl.constexpr, ROWS_WG: gl.constexpr, BLOCK_N: gl.constexpr, HEAD_DIM: gl.constexpr,
    NUM_STAGES: gl.constexpr, CAUSAL: gl.constexpr,
):  # fmt: skip
    """The tile's first block on its own: wait for its query tile and first K, the scores
    (waited for) and their softmax. Returns the probabilities (operand layout), the running
    maximum and sum."""
    S_LAYOUT: gl.constexpr = _scores_layout(BLOCK_N)
    P_LAYOUT: gl.constexpr = _probs_layout(HEAD_DIM)
    offs_m, n_full = _rows(start_m, seqlen_k, diag, WG, ROWS_WG, BLOCK_N, CAUSAL)
    q_buf = 2 * WG + tile % 2
    mbarrier.wait(q_full.index(q_buf), (tile // 2) & 1)
    mbarrier.wait(k_full.index(ring % NUM_STAGES), (ring // NUM_STAGES) & 1)
    s = warpgroup_mma(
        _tile(q_smem, q_buf, ROWS_WG, HEAD_DIM),
        _tile(k_smem, ring % NUM_STAGES, BLOCK_N, HEAD_DIM).permute((1, 0)),
        gl.zeros([ROWS_WG, BLOCK_N], gl.float32, S_LAYOUT), use_acc=False,
    )  # fmt: skip
    mbarrier.arrive(k_empty.index(ring % NUM_STAGES))
    p, m_i, l_i = _first_softmax(s, offs_m, n_full, seqlen_k, diag, qk_scale2, BLOCK_N, CAUSAL)
    return gl.convert_layout(p.to(q_smem.dtype), P_LAYOUT), m_i, l_i


@gluon.jit
def _run_tile(
    p, m_i, l_i, q_smem, k_smem, v_smem, k_full, v_full, k_empty, v_empty, turn, start_m,
    seqlen_k, diag, n_blocks, ring, tile, step, qk_scale2, WG: gl.constexpr,
    ROWS_WG: gl.constexpr, BLOCK_N: gl.constexpr, HEAD_DIM: gl.constexpr,
    NUM_STAGES: gl.constexpr, CAUSAL: gl.constexpr, PINGPONG: gl.constexpr,
):  # fmt: skip
    """The tile's pipelined steps, from its first block's probabilities ``p`` (and running
    maximum and sum) to its last block's: block j's ``P·V`` beside block j + 1's scores for
    j < n_blocks - 1. ``step``: the issuing turns taken before. Returns p, the accumulator
    (all blocks but the last), m_i, l_i."""
    S_LAYOUT: gl.constexpr = _scores_layout(BLOCK_N)
    O_LAYOUT: gl.constexpr = _out_layout(HEAD_DIM)
    P_LAYOUT: gl.constexpr = _probs_layout(HEAD_DIM)
    DTYPE: gl.constexpr = q_smem.dtype
    offs_m, n_full = _rows(start_m, seqlen_k, diag, WG, ROWS_WG, BLOCK_N, CAUSAL)
    offs_n0 = gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, S_LAYOUT))
    zero_s = gl.zeros([ROWS_WG, BLOCK_N], gl.float32, S_LAYOUT)
    acc = gl.zeros([ROWS_WG, HEAD_DIM], gl.float32, O_LAYOUT)
    q = _tile(q_smem, 2 * WG + tile % 2, ROWS_WG, HEAD_DIM)
    # step j multiplies block j and scores block j + 1: unmasked while j + 1 < n_full
    n_pipe = n_blocks - 1
    n_plain = gl.minimum(gl.maximum(n_full - 1, 0), n_pipe)
    for j in range(n_plain):
        p, acc, m_i, l_i = _pipelined_step(
            p, acc, m_i, l_i, q, k_smem, v_smem, k_full, v_full, k_empty, v_empty, turn, zero_s, j,
            ring + j, step + j, offs_m, offs_n0, seqlen_k, diag, qk_scale2, BLOCK_N, HEAD_DIM,
            NUM_STAGES, CAUSAL, O_LAYOUT, P_LAYOUT, DTYPE, WG, PINGPONG, False,
        )  # fmt: skip
    for j in range(n_plain, n_pipe):
        p, acc, m_i, l_i = _pipelined_step(
            p, acc, m_i, l_i, q, k_smem, v_smem, k_full, v_full, k_empty, v_empty, turn, zero_s, j,
            ring + j, step + j, offs_m, offs_n0, seqlen_k, diag, qk_scale2, BLOCK_N, HEAD_DIM,
            NUM_STAGES, CAUSAL, O_LAYOUT, P_LAYOUT, DTYPE, WG, PINGPONG, True,
        )  # fmt: skip
    return p, acc, m_i, l_i


@gluon.jit
def _last_pv(p, acc, v_smem, v_full, v_empty, last, n_blocks, BLOCK_N: gl.constexpr,
             HEAD_DIM: gl.constexpr, NUM_STAGES: gl.constexpr):  # fmt: skip
    """``acc += P·V`` of the tile's last block (place ``last`` in the V ring), waited for."""
    slot = last % NUM_STAGES
    # V of the block before the last: its P·V completed in the last pipelined step
    mbarrier.arrive(v_empty.index((last + NUM_STAGES - 1) % NUM_STAGES), pred=n_blocks > 1)
    mbarrier.wait(v_full.index(slot), (last // NUM_STAGES) & 1)
    acc = warpgroup_mma(p, _tile(v_smem, slot, BLOCK_N, HEAD_DIM), acc)
    mbarrier.arrive(v_empty.index(slot))
    return acc


@gluon.jit
def _close_tile(
    acc, m_i, l_i, q_smem, o_desc, out_ptr, lse_ptr, b, h, start_m, seqlen_q, tile, stride_ob,
    stride_os, stride_oh, stride_lb, stride_lh, WG: gl.constexpr, ROWS_WG: gl.constexpr,
    BLOCK_N: gl.constexpr, HEAD_DIM: gl.constexpr, O_VIA_TMA: gl.constexpr,
):  # fmt: skip
    """The output (``acc`` over the row sums) and the log-sum-exp of the warpgroup's rows.
    A row that saw no key: l = 0, output 0 and lse = +inf (so the backward's p is 0)."""
    S_LAYOUT: gl.constexpr = _scores_layout(BLOCK_N)
    O_LAYOUT: gl.constexpr = _out_layout(HEAD_DIM)
    row0 = start_m + WG * ROWS_WG
    l_o = gl.convert_layout(l_i, gl.SliceLayout(1, O_LAYOUT))
    out = acc * gl.where(l_o > 0.0, 1.0 / l_o, 0.0)[:, None]
    if O_VIA_TMA:
        # the output leaves through the copy engine from this tile's query buffer (its
        # scores are all done), while the warpgroup goes on to the next tile; rows past
        # the sequence are not written
        q_buf = 2 * WG + tile % 2
        _tile(q_smem, q_buf, ROWS_WG, HEAD_DIM).store(out.to(q_smem.dtype))
        fence_async_shared()
        _block_barrier()
        _tma_store(o_desc, [b, row0, h * HEAD_DIM], q_smem.index(q_buf))
    else:
        offs_mo = row0 + gl.arange(0, ROWS_WG, layout=gl.SliceLayout(1, O_LAYOUT))
        offs_d = gl.arange(0, HEAD_DIM, layout=gl.SliceLayout(0, O_LAYOUT))
        o_rows = out_ptr + b.to(gl.int64) * stride_ob + h.to(gl.int64) * stride_oh
        gl.store(
            o_rows + offs_mo.to(gl.int64)[:, None] * stride_os + offs_d[None, :],
            out.to(out_ptr.dtype.element_ty),
            mask=(offs_mo < seqlen_q)[:, None],
        )
    offs_m = row0 + gl.arange(0, ROWS_WG, layout=gl.SliceLayout(1, S_LAYOUT))
    lse = gl.where(l_i > 0.0, (m_i + gl.log2(l_i)) * _LN2, float("inf"))
    lse_row = lse_ptr + b.to(gl.int64) * stride_lb + h.to(gl.int64) * stride_lh
    gl.store(lse_row + offs_m, lse, mask=offs_m < seqlen_q)


@gluon.jit
def _release_output_buffer(q_empty, tile, WG: gl.constexpr):
    """O_VIA_TMA: once the previous tile's output has left its query buffer, hand the
    buffer back to the producer (for tile ``tile + 1``'s queries)."""
    _tma_store_wait(0)
    _block_barrier()
    mbarrier.arrive(q_empty.index(2 * WG + (tile + 1) % 2), pred=tile > 0)


@gluon.jit
def _consumer(
    q_smem, k_smem, v_smem, q_full, q_empty, k_full, v_full, k_empty, v_empty, turn, o_desc,
    out_ptr, lse_ptr, seqlen_q, seqlen_k, heads, n_m, units_per_head, n_units, qk_scale2, stride_ob,
    stride_os, stride_oh, stride_lb, stride_lh, WG: gl.constexpr, BLOCK_M: gl.constexpr,
    BLOCK_N: gl.constexpr, HEAD_DIM: gl.constexpr, NUM_STAGES: gl.constexpr,
    CAUSAL: gl.constexpr, PINGPONG: gl.constexpr, PAIR: gl.constexpr,
    O_VIA_TMA: gl.constexpr,
):  # fmt: skip
    """One consumer warpgroup (4 warps, 64 query rows of every tile): the program's tiles
    in the producer's order. Each warpgroup is a partition of its own, so that waiting
    for its matmuls never stalls the other one. A tile opens with its first block's
    scores waited for and closes with its last ``P·V`` waited for, both outside the
    issuing turns: every tile takes n_blocks - 1 turns."""
    ROWS_WG: gl.constexpr = BLOCK_M // 2
    diag = seqlen_k - seqlen_q
    ring = 0
    tile = 0
    for unit in range(gl.program_id(0), n_units, gl.num_programs(0)):
        for half in range(_tiles_in_unit(unit, n_m, units_per_head, PAIR)):
            b, h, m = _tile_of(unit, half, heads, n_m, units_per_head, PAIR)
            start_m = m * BLOCK_M
            n_blocks = _key_blocks(start_m, seqlen_k, diag, BLOCK_M, BLOCK_N, CAUSAL)
            # every tile before this one took n_blocks - 1 turns
            step = ring - tile
            p, m_i, l_i = _open_tile(
                q_smem, k_smem, q_full, k_full, k_empty, start_m, seqlen_k, diag, ring, tile,
                qk_scale2, WG, ROWS_WG, BLOCK_N, HEAD_DIM, NUM_STAGES, CAUSAL,
            )  # fmt: skip
            if O_VIA_TMA:
                _release_output_buffer(q_empty, tile, WG)
            p, acc, m_i, l_i = _run_tile(
                p, m_i, l_i, q_smem, k_smem, v_smem, k_full, v_full, k_empty, v_empty, turn,
                start_m, seqlen_k, diag, n_blocks, ring, tile, step, qk_scale2, WG, ROWS_WG,
                BLOCK_N, HEAD_DIM, NUM_STAGES, CAUSAL, PINGPONG,
            )  # fmt: skip
            if not O_VIA_TMA:
                # every score of the tile is in: the query tile may take the next tile's rows
                mbarrier.arrive(q_empty.index(2 * WG + tile % 2))
            last = ring + n_blocks - 1
            acc = _last_pv(
                p, acc, v_smem, v_full, v_empty, last, n_blocks, BLOCK_N, HEAD_DIM, NUM_STAGES
            )
            _close_tile(
                acc, m_i, l_i, q_smem, o_desc, out_ptr, lse_ptr, b, h, start_m, seqlen_q, tile,
                stride_ob, stride_os, stride_oh, stride_lb, stride_lh, WG, ROWS_WG, BLOCK_N,
                HEAD_DIM, O_VIA_TMA,
            )  # fmt: skip
            ring += n_blocks
            tile += 1
    if O_VIA_TMA:
        _tma_store_wait(0)  # the last output has left shared memory before the program ends


# ---------------------------------------------------------------------------------------
# kernel


@gluon.jit
def flash_fwd_hopper_kernel(
    q_desc, k_desc, v_desc, o_desc, out_ptr, lse_ptr, seqlen_q, seqlen_k, heads, group, n_units,
    qk_scale2, stride_ob, stride_os, stride_oh, stride_lb, stride_lh, HEAD_DIM: gl.constexpr,
    BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, NUM_STAGES: gl.constexpr,
    CAUSAL: gl.constexpr, PINGPONG: gl.constexpr, PAIR: gl.constexpr,
    O_VIA_TMA: gl.constexpr, CONSUMER_REGS: gl.constexpr,
    PRODUCER_REGS: gl.constexpr,
):  # fmt: skip
    """Output and log-sum-exp of every (BLOCK_M query rows, head, batch) tile, ``n_units``
    units of one tile (two query blocks when PAIR, see ``_tile_of``) shared out over the
    programs: program p takes units p, p + programs, p + 2 · programs, ... (a grid of
    ``n_units`` programs gives each one unit; fewer make the kernel persistent, each
    program loading the next tile while it finishes the current one).
    ``q_desc``, ``k_desc``, ``v_desc``: copy-engine descriptors over q ``[batch, seqlen_q,
    heads · D]`` and k, v ``[batch, seqlen_k, heads_k · D]`` with boxes ``[1, BLOCK_M / 2
    or BLOCK_N, D]`` (rows past a sequence arrive as zeros); the output is written through
    ``o_desc`` (a descriptor like q's over it) when O_VIA_TMA, else through ``out_ptr``
    ``[batch, seqlen_q, heads, D]`` (unit stride along D); ``lse_ptr`` ``[batch, heads,
    seqlen_q]`` fp32 (unit stride along the rows); ``group`` = heads / heads_k."""
    n_m = gl.cdiv(seqlen_q, BLOCK_M)
    if PAIR:
        units_per_head = gl.cdiv(n_m, 2)
    else:
        units_per_head = n_m

    dtype: gl.constexpr = q_desc.dtype
    ROWS_WG: gl.constexpr = BLOCK_M // 2
    # two query buffers for each consumer warpgroup: buffer 2 · wg + tile % 2
    q_smem = gl.allocate_shared_memory(dtype, [4, 1, ROWS_WG, HEAD_DIM], q_desc.layout)
    k_smem = gl.allocate_shared_memory(dtype, [NUM_STAGES, 1, BLOCK_N, HEAD_DIM], k_desc.layout)
    v_smem = gl.allocate_shared_memory(dtype, [NUM_STAGES, 1, BLOCK_N, HEAD_DIM], v_desc.layout)
    q_full = gl.allocate_shared_memory(gl.int64, [4, 1], mbarrier.MBarrierLayout())
    q_empty = gl.allocate_shared_memory(gl.int64, [4, 1], mbarrier.MBarrierLayout())
    k_full = gl.allocate_shared_memory(gl.int64, [NUM_STAGES, 1], mbarrier.MBarrierLayout())
    v_full = gl.allocate_shared_memory(gl.int64, [NUM_STAGES, 1], mbarrier.MBarrierLayout())
    k_empty = gl.allocate_shared_memory(gl.int64, [NUM_STAGES, 1], mbarrier.MBarrierLayout())
    v_empty = gl.allocate_shared_memory(gl.int64, [NUM_STAGES, 1], mbarrier.MBarrierLayout())
    turn = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
    for i in gl.static_range(4):
        mbarrier.init(q_full.index(i), count=1)
        mbarrier.init(q_empty.index(i), count=1)  # released by its own warpgroup
    for i in gl.static_range(NUM_STAGES):
        mbarrier.init(k_full.index(i), count=1)
        mbarrier.init(v_full.index(i), count=1)
        # released by both consumer warpgroups
        mbarrier.init(k_empty.index(i), count=2)
        mbarrier.init(v_empty.index(i), count=2)
    mbarrier.init(turn.index(0), count=1)
    mbarrier.init(turn.index(1), count=1)
    # the initialised barriers, visible to the copy engine and to every warp before either
    # partition touches them
    fence_async_shared()
    _block_barrier()
    if PINGPONG:
        mbarrier.arrive(turn.index(0))  # warpgroup 0 issues first

    # (the argument tuples are written inline: assigned to a name first, their constexprs
    # would arrive as tensors)
    gl.warp_specialize(
        [
            (_consumer, (
                q_smem, k_smem, v_smem, q_full, q_empty, k_full, v_full, k_empty, v_empty, turn,
                o_desc, out_ptr, lse_ptr, seqlen_q, seqlen_k, heads, n_m, units_per_head, n_units,
                qk_scale2, stride_ob, stride_os, stride_oh, stride_lb, stride_lh, 0, BLOCK_M,
                BLOCK_N, HEAD_DIM, NUM_STAGES, CAUSAL, PINGPONG, PAIR, O_VIA_TMA,
            )),
            (_consumer, (
                q_smem, k_smem, v_smem, q_full, q_empty, k_full, v_full, k_empty, v_empty, turn,
                o_desc, out_ptr, lse_ptr, seqlen_q, seqlen_k, heads, n_m, units_per_head, n_units,
                qk_scale2, stride_ob, stride_os, stride_oh, stride_lb, stride_lh, 1, BLOCK_M,
                BLOCK_N, HEAD_DIM, NUM_STAGES, CAUSAL, PINGPONG, PAIR, O_VIA_TMA,
            )),
            (_producer, (
                q_desc, k_desc, v_desc, q_smem, k_smem, v_smem, q_full, q_empty, k_full, v_full,
                k_empty, v_empty, seqlen_q, seqlen_k, heads, group, n_m, units_per_head,
                n_units, BLOCK_M, BLOCK_N, HEAD_DIM, NUM_STAGES, CAUSAL, PAIR,
            )),
        ],
        [4, 4],
        [CONSUMER_REGS, PRODUCER_REGS],
    )  # fmt: skip
