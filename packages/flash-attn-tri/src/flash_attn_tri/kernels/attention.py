"""FlashAttention-2 kernels: forward, dQ per query block (which also writes
delta = rowsum(dO·O) for its rows, so it runs first), dK/dV per key block, and the dropout
keep-mask generator used by the tests.

Conventions shared by all kernels:
- Scores live in base 2: ``log2(e)`` is folded into the scale so each exponential is one
  ``exp2``; the saved log-sum-exp is natural (flash_attn's contract) and is converted back.
- One program handles one (block, head, sequence): grid ``(blocks, heads, batch)``. For
  varlen inputs ``CU_Q``/``CU_K`` give each sequence's start; otherwise the batch stride is
  used and the start is 0.
- Query ``i`` sits at key position ``i + diag`` with ``diag = seqlen_k - seqlen_q``
  (bottom-right alignment). Key ``j`` is visible when ``pos - left <= j <= pos + right``;
  ``HAS_LEFT`` / ``HAS_RIGHT`` are False for an unbounded side.
- Each key loop is split in three ranges: blocks that straddle the left edge of the window,
  blocks fully inside (no mask work), blocks that straddle the right edge or the sequence end.
- Tiles are [queries, keys] in the forward and the dQ pass, and [keys, queries] in the dK/dV
  pass; the mask, ALiBi and dropout helpers take the query and key positions already
  expanded along their axis (``offs_m[:, None]`` and ``offs_n[None, :]``, or the transpose).
- Fixed-length inputs with 16-byte aligned strides (``USE_DESC``) load through tensor
  descriptors over ``[batch, seqlen, heads, dim]``: the copy engine fills rows past the
  sequence and columns past the head dim with zeros, so those loads need no masks. Varlen
  inputs use pointers (a descriptor would read the neighbouring sequence's rows).
- No atomics: dK/dV are owned by the program of their key block (it loops over the query
  heads of its GQA group), dQ by the program of its query block, so gradients are
  bitwise reproducible.
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
    online_softmax_update_scaled,
)

# lengths, head counts and window sizes change from call to call: specialising on them (value 1,
# divisibility by 16) would recompile the kernels for every new sequence length
_NO_SPEC = ["seqlen_q", "seqlen_k", "n_heads", "group", "win_left", "win_right"]


@triton.jit
def _load(ptrs, rows_ok, cols_ok, MASK_ROWS: tl.constexpr, MASK_COLS: tl.constexpr):
    """Load a 2-D tile, masking only the dimensions that can be out of bounds (zero fill).

    ``rows_ok`` / ``cols_ok`` are already broadcastable to the tile; the unmasked variants
    let the compiler vectorise fully inside the sequence with an exact head dim."""
    if MASK_ROWS:
        if MASK_COLS:
            x = tl.load(ptrs, mask=rows_ok & cols_ok, other=0.0)
        else:
            x = tl.load(ptrs, mask=rows_ok, other=0.0)
    else:
        if MASK_COLS:
            x = tl.load(ptrs, mask=cols_ok, other=0.0)
        else:
            x = tl.load(ptrs)
    return x


@triton.jit
def _seq_range(CU, b, seqlen, IS_VARLEN: tl.constexpr):
    """(start, length) of sequence ``b``: from ``cu_seqlens`` or the fixed batch length."""
    if IS_VARLEN:
        start = tl.load(CU + b)
        end = tl.load(CU + b + 1)
        return start, end - start
    return b * 0, b * 0 + seqlen


@triton.jit
def _logits(
    qk,
    qi,
    kj,
    diag,
    qk_scale2,
    softcap_in,
    softcap_out2,
    slope2,
    IS_SOFTCAP: tl.constexpr,
    HAS_ALIBI: tl.constexpr,
):
    """Base-2 logits of a block of raw ``q·k``; also ``tanh`` (softcap) for the backward's
    chain rule (``qk`` itself when there is no softcap). ``qi`` / ``kj`` are the query / key
    positions, expanded along the tile's query / key axis (see the module docstring)."""
    if IS_SOFTCAP:
        # tanh(x) = 1 - 2 / (e^{2x} + 1): exact limits ±1 at both ends, no libdevice needed.
        t = 1.0 - 2.0 / (tl.math.exp2(qk * softcap_in) + 1.0)
        s = t * softcap_out2
    else:
        t = qk
        s = qk * qk_scale2
    if HAS_ALIBI:
        dist = qi + diag - kj
        s = s - slope2 * tl.abs(dist).to(tl.float32)
    return s, t


@triton.jit
def _visible(
    qi,
    kj,
    seqlen_k,
    diag,
    win_left,
    win_right,
    HAS_LEFT: tl.constexpr,
    HAS_RIGHT: tl.constexpr,
):
    """Boolean tile of visible (query, key) pairs (only the key axis without a window)."""
    vis = kj < seqlen_k
    if HAS_RIGHT:
        vis = vis & (kj <= qi + diag + win_right)
    if HAS_LEFT:
        vis = vis & (kj >= qi + diag - win_left)
    return vis


@triton.jit
def _keep(seed, salt, bh, qi, kj, dropout_p):
    """Dropout keep mask: a Philox counter (key, query, batch·heads + head, salt) under
    ``seed``, so the backward regenerates the forward's mask exactly, in either tile
    orientation."""
    zero = qi * 0 + kj * 0
    c0 = (zero + kj).to(tl.uint32, bitcast=True)
    c1 = (zero + qi).to(tl.uint32, bitcast=True)
    c2 = (zero + bh).to(tl.uint32, bitcast=True)
    c3 = (zero + salt).to(tl.uint32, bitcast=True)
    r0, _, _, _ = tl.philox(seed, c0, c1, c2, c3, 7)
    # top 24 bits -> uniform in [0, 1) exactly representable in fp32
    u = (r0 >> 8).to(tl.float32) * (1.0 / 16777216.0)
    return u >= dropout_p


@triton.jit
def _kv_blocks(
    start_m,
    seqlen_k,
    diag,
    win_left,
    win_right,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    HAS_LEFT: tl.constexpr,
    HAS_RIGHT: tl.constexpr,
):
    """Key ranges for the query block at ``start_m``: ``[lo, mid_lo)`` and ``[mid_hi, hi)`` need
    masking, ``[mid_lo, mid_hi)`` is fully visible for every row. lo, mid_lo, mid_hi are
    multiples of BLOCK_N."""
    lo = start_m * 0
    hi = seqlen_k + start_m * 0
    mid_lo = lo
    full_end = seqlen_k + start_m * 0
    if HAS_LEFT:
        lo = tl.maximum(start_m + diag - win_left, 0) // BLOCK_N * BLOCK_N
        first_full = tl.maximum(start_m + BLOCK_M - 1 + diag - win_left, 0)
        mid_lo = tl.maximum((first_full + BLOCK_N - 1) // BLOCK_N * BLOCK_N, lo)
    if HAS_RIGHT:
        hi = tl.minimum(seqlen_k, start_m + BLOCK_M + diag + win_right)
        full_end = tl.minimum(full_end, start_m + diag + win_right + 1)
    hi = tl.maximum(hi, lo)
    mid_lo = tl.minimum(mid_lo, hi)
    mid_hi = tl.maximum(tl.maximum(full_end, 0) // BLOCK_N * BLOCK_N, mid_lo)
    mid_hi = tl.minimum(mid_hi, hi)
    return lo, mid_lo, mid_hi, hi


@triton.jit
def _q_blocks(
    start_n,
    seqlen_q,
    seqlen_k,
    diag,
    win_left,
    win_right,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    HAS_LEFT: tl.constexpr,
    HAS_RIGHT: tl.constexpr,
):
    """Query ranges for the key block at ``start_n`` (mirror of :func:`_kv_blocks`)."""
    lo = start_n * 0
    hi = seqlen_q + start_n * 0
    mid_lo = lo
    full_end = seqlen_q + start_n * 0
    if HAS_RIGHT:
        # query i sees key j when j <= i + diag + right
        lo = tl.maximum(start_n - diag - win_right, 0) // BLOCK_M * BLOCK_M
        first_full = tl.maximum(start_n + BLOCK_N - 1 - diag - win_right, 0)
        mid_lo = tl.maximum((first_full + BLOCK_M - 1) // BLOCK_M * BLOCK_M, lo)
    if HAS_LEFT:
        # ... and j >= i + diag - left
        hi = tl.minimum(seqlen_q, start_n + BLOCK_N - diag + win_left)
        full_end = tl.minimum(full_end, start_n - diag + win_left + 1)
    hi = tl.maximum(hi, lo)
    mid_lo = tl.minimum(mid_lo, hi)
    mid_hi = tl.maximum(tl.maximum(full_end, 0) // BLOCK_M * BLOCK_M, mid_lo)
    mid_hi = tl.minimum(mid_hi, hi)
    if start_n + BLOCK_N > seqlen_k:
        # a key block past the sequence end is masked in every step
        mid_lo = hi
        mid_hi = hi
    return lo, mid_lo, mid_hi, hi


# ------------------------------------------------------------------------------------------
# forward
# ------------------------------------------------------------------------------------------


@triton.jit
def _fwd_inner(
    acc,
    m_i,
    l_i,
    q,
    k_base,
    v_base,
    stride_kn,
    stride_vn,
    offs_m,
    offs_d,
    offs_dv,
    lo,
    hi,
    seqlen_k,
    diag,
    win_left,
    win_right,
    qk_scale2,
    softcap_in,
    softcap_out2,
    slope2,
    seed,
    salt,
    bh,
    dropout_p,
    b,
    hk,
    HEAD_DIM: tl.constexpr,
    HEAD_DIM_V: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_DV: tl.constexpr,
    BLOCK_N: tl.constexpr,
    MASKED: tl.constexpr,
    HAS_LEFT: tl.constexpr,
    HAS_RIGHT: tl.constexpr,
    IS_SOFTCAP: tl.constexpr,
    HAS_ALIBI: tl.constexpr,
    HAS_DROPOUT: tl.constexpr,
    IEEE: tl.constexpr,
    USE_DESC: tl.constexpr,
    SCALE_POSITIVE: tl.constexpr,
):
    # Without softcap or ALiBi the logits are qk · scale; with a positive scale their row
    # maximum is the scaled maximum of qk, and masking qk with -inf masks the logits.
    PLAIN_SCALE: tl.constexpr = SCALE_POSITIVE and not IS_SOFTCAP and not HAS_ALIBI
    offs_n0 = tl.arange(0, BLOCK_N)
    if not USE_DESC:
        # 64-bit pointers built once and advanced: no per-element 64-bit multiply in the loop
        k_ptrs = k_base + wide(lo + offs_n0)[None, :] * stride_kn + offs_d[:, None]
        v_ptrs = v_base + wide(lo + offs_n0)[:, None] * stride_vn + offs_dv[None, :]
    d_ok = offs_d[:, None] < HEAD_DIM
    dv_ok = offs_dv[None, :] < HEAD_DIM_V
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + offs_n0
        if USE_DESC:
            # tensor-memory copies; rows past the sequence and columns past the head dim
            # arrive as zeros
            k = tl.trans(k_base.load([b, start_n, hk, 0]).reshape(BLOCK_N, BLOCK_D))
        else:
            # interior blocks (MASKED False) lie entirely inside the key sequence
            k = _load(k_ptrs, offs_n[None, :] < seqlen_k, d_ok, MASKED, HEAD_DIM != BLOCK_D)
        qk = dot(q, k, IEEE)
        if PLAIN_SCALE:
            s = qk  # logits = qk · scale: the scale goes into each exponent's multiply-add
        else:
            s, _t = _logits(
                qk,
                offs_m[:, None],
                offs_n[None, :],
                diag,
                qk_scale2,
                softcap_in,
                softcap_out2,
                slope2,
                IS_SOFTCAP,
                HAS_ALIBI,
            )
        if MASKED:
            vis = _visible(
                offs_m[:, None],
                offs_n[None, :],
                seqlen_k,
                diag,
                win_left,
                win_right,
                HAS_LEFT,
                HAS_RIGHT,
            )
            s = tl.where(vis, s, float("-inf"))
        if PLAIN_SCALE:
            m_i, l_i, p, alpha = online_softmax_update_scaled(m_i, l_i, s, qk_scale2)
        else:
            m_i, l_i, p, alpha = online_softmax_update(m_i, l_i, s)
        acc = acc * alpha[:, None]
        if HAS_DROPOUT:
            p = tl.where(_keep(seed, salt, bh, offs_m[:, None], offs_n[None, :], dropout_p), p, 0.0)
        if USE_DESC:
            v = v_base.load([b, start_n, hk, 0]).reshape(BLOCK_N, BLOCK_DV)
        else:
            v = _load(v_ptrs, offs_n[:, None] < seqlen_k, dv_ok, MASKED, HEAD_DIM_V != BLOCK_DV)
            k_ptrs += BLOCK_N * stride_kn
            v_ptrs += BLOCK_N * stride_vn
        acc = dot(p.to(v.dtype), v, IEEE, acc)
    return acc, m_i, l_i


@triton.jit(do_not_specialize=_NO_SPEC)
def _fwd_kernel(
    Q,
    K,
    V,
    Out,
    LSE,
    CU_Q,
    CU_K,
    SLOPES,
    RNG,
    stride_qb,
    stride_qs,
    stride_qh,
    stride_kb,
    stride_ks,
    stride_kh,
    stride_vb,
    stride_vs,
    stride_vh,
    stride_ob,
    stride_os,
    stride_oh,
    stride_lb,
    stride_lh,
    stride_ab,
    stride_ah,
    seqlen_q,
    seqlen_k,
    n_heads,
    group,
    qk_scale2,
    softcap_in,
    softcap_out2,
    win_left,
    win_right,
    dropout_p,
    dropout_scale,
    HEAD_DIM: tl.constexpr,
    HEAD_DIM_V: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_DV: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    IS_VARLEN: tl.constexpr,
    HAS_LEFT: tl.constexpr,
    HAS_RIGHT: tl.constexpr,
    IS_SOFTCAP: tl.constexpr,
    HAS_ALIBI: tl.constexpr,
    HAS_DROPOUT: tl.constexpr,
    IEEE: tl.constexpr,
    USE_DESC: tl.constexpr,
    SCALE_POSITIVE: tl.constexpr,
):
    """``USE_DESC``: Q, K, V, Out are tensor descriptors over ``[batch, seqlen, heads, dim]``
    (fixed-length inputs with 16-byte aligned strides) instead of pointers.
    ``SCALE_POSITIVE``: softmax_scale > 0 (the usual case; it allows the cheaper update)."""
    # last query blocks first: under a causal mask they have the most keys (better tail)
    pid_m = tl.num_programs(0) - 1 - tl.program_id(0)
    h = tl.program_id(1)
    b = tl.program_id(2)
    q_start, len_q = _seq_range(CU_Q, b, seqlen_q, IS_VARLEN)
    k_start, len_k = _seq_range(CU_K, b, seqlen_k, IS_VARLEN)
    start_m = pid_m * BLOCK_M
    if start_m >= len_q:
        return
    hk = h // group
    diag = len_k - len_q

    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    row_ok = offs_m < len_q
    if USE_DESC:
        k_base = K
        v_base = V
        q = Q.load([b, start_m, h, 0]).reshape(BLOCK_M, BLOCK_D)
    else:
        q_base = Q + wide(b) * stride_qb + wide(q_start) * stride_qs + wide(h) * stride_qh
        k_base = K + wide(b) * stride_kb + wide(k_start) * stride_ks + wide(hk) * stride_kh
        v_base = V + wide(b) * stride_vb + wide(k_start) * stride_vs + wide(hk) * stride_vh
        q = tl.load(
            q_base + wide(offs_m)[:, None] * stride_qs + offs_d[None, :],
            mask=row_ok[:, None] & (offs_d[None, :] < HEAD_DIM),
            other=0.0,
        )
    slope2 = 0.0
    if HAS_ALIBI:
        slope2 = tl.load(SLOPES + b * stride_ab + h * stride_ah).to(tl.float32) * LOG2E
    seed = 0
    salt = 0
    if HAS_DROPOUT:
        seed = tl.load(RNG)
        salt = tl.load(RNG + 1).to(tl.int32)
    bh = b * n_heads + h

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_DV], tl.float32)
    lo, mid_lo, mid_hi, hi = _kv_blocks(
        start_m, len_k, diag, win_left, win_right, BLOCK_M, BLOCK_N, HAS_LEFT, HAS_RIGHT
    )
    # left edge of the window (masked), interior (unmasked), right edge / sequence end (masked)
    acc, m_i, l_i = _fwd_inner(
        acc, m_i, l_i, q, k_base, v_base, stride_ks, stride_vs, offs_m, offs_d, offs_dv,
        lo, mid_lo, len_k, diag, win_left, win_right, qk_scale2, softcap_in, softcap_out2,
        slope2, seed, salt, bh, dropout_p, b, hk, HEAD_DIM, HEAD_DIM_V, BLOCK_D, BLOCK_DV,
        BLOCK_N, True, HAS_LEFT, HAS_RIGHT, IS_SOFTCAP, HAS_ALIBI, HAS_DROPOUT, IEEE, USE_DESC,
        SCALE_POSITIVE,
    )  # fmt: skip
    acc, m_i, l_i = _fwd_inner(
        acc, m_i, l_i, q, k_base, v_base, stride_ks, stride_vs, offs_m, offs_d, offs_dv,
        mid_lo, mid_hi, len_k, diag, win_left, win_right, qk_scale2, softcap_in, softcap_out2,
        slope2, seed, salt, bh, dropout_p, b, hk, HEAD_DIM, HEAD_DIM_V, BLOCK_D, BLOCK_DV,
        BLOCK_N, False, HAS_LEFT, HAS_RIGHT, IS_SOFTCAP, HAS_ALIBI, HAS_DROPOUT, IEEE, USE_DESC,
        SCALE_POSITIVE,
    )  # fmt: skip
    acc, m_i, l_i = _fwd_inner(
        acc, m_i, l_i, q, k_base, v_base, stride_ks, stride_vs, offs_m, offs_d, offs_dv,
        mid_hi, hi, len_k, diag, win_left, win_right, qk_scale2, softcap_in, softcap_out2,
        slope2, seed, salt, bh, dropout_p, b, hk, HEAD_DIM, HEAD_DIM_V, BLOCK_D, BLOCK_DV,
        BLOCK_N, True, HAS_LEFT, HAS_RIGHT, IS_SOFTCAP, HAS_ALIBI, HAS_DROPOUT, IEEE, USE_DESC,
        SCALE_POSITIVE,
    )  # fmt: skip

    # A row that saw no key: l = 0, output 0 and lse = +inf (so the backward's p is 0).
    inv_l = tl.where(l_i > 0.0, 1.0 / l_i, 0.0)
    if HAS_DROPOUT:
        inv_l = inv_l * dropout_scale
    out = acc * inv_l[:, None]
    lse = tl.where(l_i > 0.0, log2_sum_exp2(m_i, l_i) * LN2, float("inf"))
    if USE_DESC:
        # rows past the sequence and columns past the head dim are not written
        Out.store([b, start_m, h, 0], out.to(Out.dtype).reshape(1, BLOCK_M, 1, BLOCK_DV))
    else:
        o_base = Out + wide(b) * stride_ob + wide(q_start) * stride_os + wide(h) * stride_oh
        tl.store(
            o_base + wide(offs_m)[:, None] * stride_os + offs_dv[None, :],
            out.to(Out.dtype.element_ty),
            mask=row_ok[:, None] & (offs_dv[None, :] < HEAD_DIM_V),
        )
    tl.store(
        LSE + wide(b) * stride_lb + wide(h) * stride_lh + wide(q_start + offs_m), lse, mask=row_ok
    )


# ------------------------------------------------------------------------------------------
# backward
# ------------------------------------------------------------------------------------------


@triton.jit
def _bwd_dkdv_inner(
    dk,
    dv,
    k,
    v,
    q_base,
    do_base,
    lse_base,
    delta_base,
    stride_qs,
    stride_dos,
    offs_n,
    offs_d,
    offs_dv,
    lo,
    hi,
    len_q,
    len_k,
    diag,
    win_left,
    win_right,
    qk_scale2,
    softcap_in,
    softcap_out2,
    slope2,
    seed,
    salt,
    bh,
    dropout_p,
    dropout_scale,
    q_desc,
    do_desc,
    b,
    h,
    HEAD_DIM: tl.constexpr,
    HEAD_DIM_V: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_DV: tl.constexpr,
    BLOCK_M: tl.constexpr,
    MASKED: tl.constexpr,
    HAS_LEFT: tl.constexpr,
    HAS_RIGHT: tl.constexpr,
    IS_SOFTCAP: tl.constexpr,
    HAS_ALIBI: tl.constexpr,
    HAS_DROPOUT: tl.constexpr,
    IEEE: tl.constexpr,
    USE_DESC: tl.constexpr,
):
    offs_m0 = tl.arange(0, BLOCK_M)
    if not USE_DESC:
        q_ptrs = q_base + wide(lo + offs_m0)[:, None] * stride_qs + offs_d[None, :]
        do_ptrs = do_base + wide(lo + offs_m0)[:, None] * stride_dos + offs_dv[None, :]
    d_ok = offs_d[None, :] < HEAD_DIM
    dv_ok = offs_dv[None, :] < HEAD_DIM_V
    for start_m in range(lo, hi, BLOCK_M):
        offs_m = start_m + offs_m0
        row_ok = offs_m < len_q
        if USE_DESC:
            # zeros past the sequence end and the head dim, as the masked loads give
            q = q_desc.load([b, start_m, h, 0]).reshape(BLOCK_M, BLOCK_D)
            do = do_desc.load([b, start_m, h, 0]).reshape(BLOCK_M, BLOCK_DV)
        else:
            # interior blocks (MASKED False) lie entirely inside the query sequence
            q = _load(q_ptrs, row_ok[:, None], d_ok, MASKED, HEAD_DIM != BLOCK_D)
            do = _load(do_ptrs, row_ok[:, None], dv_ok, MASKED, HEAD_DIM_V != BLOCK_DV)
            q_ptrs += BLOCK_M * stride_qs
            do_ptrs += BLOCK_M * stride_dos
        # rows past the end get lse = +inf, hence p = 0: they contribute nothing
        if MASKED:
            lse2 = tl.load(lse_base + offs_m, mask=row_ok, other=float("inf")) * LOG2E
            delta = tl.load(delta_base + offs_m, mask=row_ok, other=0.0)
        else:
            lse2 = tl.load(lse_base + offs_m) * LOG2E
            delta = tl.load(delta_base + offs_m)
        # Transposed tiles [BLOCK_N keys, BLOCK_M queries]: P^T and dS^T come out of the
        # matmuls already as the left operands of dV += P^T dO and dK += dS^T Q, so they
        # feed the tensor cores from registers (no transpose through shared memory).
        qi = offs_m[None, :]
        kj = offs_n[:, None]
        s, t = _logits(
            dot(k, tl.trans(q), IEEE),
            qi,
            kj,
            diag,
            qk_scale2,
            softcap_in,
            softcap_out2,
            slope2,
            IS_SOFTCAP,
            HAS_ALIBI,
        )
        if MASKED:
            vis = _visible(qi, kj, len_k, diag, win_left, win_right, HAS_LEFT, HAS_RIGHT)
            s = tl.where(vis, s, float("-inf"))
        p = tl.math.exp2(s - lse2[None, :])
        dp = dot(v, tl.trans(do), IEEE)
        if HAS_DROPOUT:
            keep = _keep(seed, salt, bh, qi, kj, dropout_p)
            p_drop = tl.where(keep, p * dropout_scale, 0.0)
            dp = tl.where(keep, dp * dropout_scale, 0.0)
        else:
            p_drop = p
        dv = dot(p_drop.to(do.dtype), do, IEEE, dv)
        ds = p * (dp - delta[None, :])
        if IS_SOFTCAP:
            ds = ds * (1.0 - t * t)
        dk = dot(ds.to(q.dtype), q, IEEE, dk)
    return dk, dv


@triton.jit(do_not_specialize=_NO_SPEC)
def _bwd_dkdv_kernel(
    Q,
    K,
    V,
    DO,
    LSE,
    DELTA,
    DK,
    DV,
    CU_Q,
    CU_K,
    SLOPES,
    RNG,
    Q_DESC,
    DO_DESC,
    stride_qb,
    stride_qs,
    stride_qh,
    stride_kb,
    stride_ks,
    stride_kh,
    stride_vb,
    stride_vs,
    stride_vh,
    stride_dob,
    stride_dos,
    stride_doh,
    stride_dkb,
    stride_dks,
    stride_dkh,
    stride_dvb,
    stride_dvs,
    stride_dvh,
    stride_lb,
    stride_lh,
    stride_ab,
    stride_ah,
    seqlen_q,
    seqlen_k,
    n_heads,
    group,
    sm_scale,
    qk_scale2,
    softcap_in,
    softcap_out2,
    win_left,
    win_right,
    dropout_p,
    dropout_scale,
    HEAD_DIM: tl.constexpr,
    HEAD_DIM_V: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_DV: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    IS_VARLEN: tl.constexpr,
    HAS_LEFT: tl.constexpr,
    HAS_RIGHT: tl.constexpr,
    IS_SOFTCAP: tl.constexpr,
    HAS_ALIBI: tl.constexpr,
    HAS_DROPOUT: tl.constexpr,
    IEEE: tl.constexpr,
    USE_DESC: tl.constexpr,
):
    """``USE_DESC``: the query-side blocks of the inner loop come through the tensor
    descriptors ``Q_DESC`` / ``DO_DESC`` (fixed-length inputs) instead of pointers."""
    pid_n = tl.program_id(0)
    hk = tl.program_id(1)
    b = tl.program_id(2)
    q_start, len_q = _seq_range(CU_Q, b, seqlen_q, IS_VARLEN)
    k_start, len_k = _seq_range(CU_K, b, seqlen_k, IS_VARLEN)
    start_n = pid_n * BLOCK_N
    if start_n >= len_k:
        return
    diag = len_k - len_q
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    col_ok = offs_n < len_k
    rows_k = wide(k_start + offs_n)[:, None]
    k = tl.load(
        K + wide(b) * stride_kb + wide(hk) * stride_kh + rows_k * stride_ks + offs_d[None, :],
        mask=col_ok[:, None] & (offs_d[None, :] < HEAD_DIM),
        other=0.0,
    )
    v = tl.load(
        V + wide(b) * stride_vb + wide(hk) * stride_vh + rows_k * stride_vs + offs_dv[None, :],
        mask=col_ok[:, None] & (offs_dv[None, :] < HEAD_DIM_V),
        other=0.0,
    )
    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_DV], tl.float32)
    seed = 0
    salt = 0
    if HAS_DROPOUT:
        seed = tl.load(RNG)
        salt = tl.load(RNG + 1).to(tl.int32)
    lo, mid_lo, mid_hi, hi = _q_blocks(
        start_n, len_q, len_k, diag, win_left, win_right, BLOCK_M, BLOCK_N, HAS_LEFT, HAS_RIGHT
    )
    for g in range(group):
        h = hk * group + g
        bh = b * n_heads + h
        slope2 = 0.0
        if HAS_ALIBI:
            slope2 = tl.load(SLOPES + b * stride_ab + h * stride_ah).to(tl.float32) * LOG2E
        q_base = Q + wide(b) * stride_qb + wide(q_start) * stride_qs + wide(h) * stride_qh
        do_base = DO + wide(b) * stride_dob + wide(q_start) * stride_dos + wide(h) * stride_doh
        lse_base = LSE + wide(b) * stride_lb + wide(h) * stride_lh + wide(q_start)
        delta_base = DELTA + wide(b) * stride_lb + wide(h) * stride_lh + wide(q_start)
        dk, dv = _bwd_dkdv_inner(
            dk, dv, k, v, q_base, do_base, lse_base, delta_base, stride_qs, stride_dos, offs_n,
            offs_d, offs_dv, lo, mid_lo, len_q, len_k, diag, win_left, win_right, qk_scale2,
            softcap_in, softcap_out2, slope2, seed, salt, bh, dropout_p, dropout_scale,
            Q_DESC, DO_DESC, b, h, HEAD_DIM, HEAD_DIM_V, BLOCK_D, BLOCK_DV, BLOCK_M, True,
            HAS_LEFT, HAS_RIGHT, IS_SOFTCAP, HAS_ALIBI, HAS_DROPOUT, IEEE, USE_DESC,
        )  # fmt: skip
        dk, dv = _bwd_dkdv_inner(
            dk, dv, k, v, q_base, do_base, lse_base, delta_base, stride_qs, stride_dos, offs_n,
            offs_d, offs_dv, mid_lo, mid_hi, len_q, len_k, diag, win_left, win_right, qk_scale2,
            softcap_in, softcap_out2, slope2, seed, salt, bh, dropout_p, dropout_scale,
            Q_DESC, DO_DESC, b, h, HEAD_DIM, HEAD_DIM_V, BLOCK_D, BLOCK_DV, BLOCK_M, False,
            HAS_LEFT, HAS_RIGHT, IS_SOFTCAP, HAS_ALIBI, HAS_DROPOUT, IEEE, USE_DESC,
        )  # fmt: skip
        dk, dv = _bwd_dkdv_inner(
            dk, dv, k, v, q_base, do_base, lse_base, delta_base, stride_qs, stride_dos, offs_n,
            offs_d, offs_dv, mid_hi, hi, len_q, len_k, diag, win_left, win_right, qk_scale2,
            softcap_in, softcap_out2, slope2, seed, salt, bh, dropout_p, dropout_scale,
            Q_DESC, DO_DESC, b, h, HEAD_DIM, HEAD_DIM_V, BLOCK_D, BLOCK_DV, BLOCK_M, True,
            HAS_LEFT, HAS_RIGHT, IS_SOFTCAP, HAS_ALIBI, HAS_DROPOUT, IEEE, USE_DESC,
        )  # fmt: skip
    dk = dk * sm_scale
    tl.store(
        DK
        + wide(b) * stride_dkb
        + wide(hk) * stride_dkh
        + wide(k_start + offs_n)[:, None] * stride_dks
        + offs_d[None, :],
        dk.to(DK.dtype.element_ty),
        mask=col_ok[:, None] & (offs_d[None, :] < HEAD_DIM),
    )
    tl.store(
        DV
        + wide(b) * stride_dvb
        + wide(hk) * stride_dvh
        + wide(k_start + offs_n)[:, None] * stride_dvs
        + offs_dv[None, :],
        dv.to(DV.dtype.element_ty),
        mask=col_ok[:, None] & (offs_dv[None, :] < HEAD_DIM_V),
    )


@triton.jit
def _bwd_dq_inner(
    dq,
    q,
    do,
    lse2,
    delta,
    k_base,
    v_base,
    stride_kn,
    stride_vn,
    offs_m,
    offs_d,
    offs_dv,
    lo,
    hi,
    len_k,
    diag,
    win_left,
    win_right,
    qk_scale2,
    softcap_in,
    softcap_out2,
    slope2,
    seed,
    salt,
    bh,
    dropout_p,
    dropout_scale,
    k_desc,
    v_desc,
    b,
    hk,
    HEAD_DIM: tl.constexpr,
    HEAD_DIM_V: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_DV: tl.constexpr,
    BLOCK_N: tl.constexpr,
    MASKED: tl.constexpr,
    HAS_LEFT: tl.constexpr,
    HAS_RIGHT: tl.constexpr,
    IS_SOFTCAP: tl.constexpr,
    HAS_ALIBI: tl.constexpr,
    HAS_DROPOUT: tl.constexpr,
    IEEE: tl.constexpr,
    USE_DESC: tl.constexpr,
):
    offs_n0 = tl.arange(0, BLOCK_N)
    if not USE_DESC:
        k_ptrs = k_base + wide(lo + offs_n0)[:, None] * stride_kn + offs_d[None, :]
        v_ptrs = v_base + wide(lo + offs_n0)[:, None] * stride_vn + offs_dv[None, :]
    d_ok = offs_d[None, :] < HEAD_DIM
    dv_ok = offs_dv[None, :] < HEAD_DIM_V
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + offs_n0
        if USE_DESC:
            k = k_desc.load([b, start_n, hk, 0]).reshape(BLOCK_N, BLOCK_D)
            v = v_desc.load([b, start_n, hk, 0]).reshape(BLOCK_N, BLOCK_DV)
        else:
            # interior blocks (MASKED False) lie entirely inside the key sequence
            k = _load(k_ptrs, offs_n[:, None] < len_k, d_ok, MASKED, HEAD_DIM != BLOCK_D)
            v = _load(v_ptrs, offs_n[:, None] < len_k, dv_ok, MASKED, HEAD_DIM_V != BLOCK_DV)
            k_ptrs += BLOCK_N * stride_kn
            v_ptrs += BLOCK_N * stride_vn
        qk = dot(q, tl.trans(k), IEEE)
        s, t = _logits(
            qk,
            offs_m[:, None],
            offs_n[None, :],
            diag,
            qk_scale2,
            softcap_in,
            softcap_out2,
            slope2,
            IS_SOFTCAP,
            HAS_ALIBI,
        )
        if MASKED:
            vis = _visible(
                offs_m[:, None],
                offs_n[None, :],
                len_k,
                diag,
                win_left,
                win_right,
                HAS_LEFT,
                HAS_RIGHT,
            )
            s = tl.where(vis, s, float("-inf"))
        p = tl.math.exp2(s - lse2[:, None])
        dp = dot(do, tl.trans(v), IEEE)
        if HAS_DROPOUT:
            keep = _keep(seed, salt, bh, offs_m[:, None], offs_n[None, :], dropout_p)
            dp = tl.where(keep, dp * dropout_scale, 0.0)
        ds = p * (dp - delta[:, None])
        if IS_SOFTCAP:
            ds = ds * (1.0 - t * t)
        dq += dot(ds.to(k.dtype), k, IEEE)
    return dq


@triton.jit(do_not_specialize=_NO_SPEC)
def _bwd_dq_kernel(
    Q,
    K,
    V,
    DO,
    Out,
    LSE,
    DELTA,
    DQ,
    CU_Q,
    CU_K,
    SLOPES,
    RNG,
    K_DESC,
    V_DESC,
    stride_qb,
    stride_qs,
    stride_qh,
    stride_kb,
    stride_ks,
    stride_kh,
    stride_vb,
    stride_vs,
    stride_vh,
    stride_dob,
    stride_dos,
    stride_doh,
    stride_ob,
    stride_os,
    stride_oh,
    stride_dqb,
    stride_dqs,
    stride_dqh,
    stride_lb,
    stride_lh,
    stride_ab,
    stride_ah,
    seqlen_q,
    seqlen_k,
    n_heads,
    group,
    sm_scale,
    qk_scale2,
    softcap_in,
    softcap_out2,
    win_left,
    win_right,
    dropout_p,
    dropout_scale,
    HEAD_DIM: tl.constexpr,
    HEAD_DIM_V: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_DV: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    IS_VARLEN: tl.constexpr,
    HAS_LEFT: tl.constexpr,
    HAS_RIGHT: tl.constexpr,
    IS_SOFTCAP: tl.constexpr,
    HAS_ALIBI: tl.constexpr,
    HAS_DROPOUT: tl.constexpr,
    IEEE: tl.constexpr,
    USE_DESC: tl.constexpr,
):
    """dQ for one block of query rows. It also computes ``delta = rowsum(O · dO)`` of those
    rows (every dS needs it) and stores it in ``DELTA`` for the dK/dV kernel, which runs
    after this one: dO is loaded here anyway, so no separate pass over O and dO.

    ``USE_DESC``: the key-side blocks of the inner loop come through the tensor
    descriptors ``K_DESC`` / ``V_DESC`` (fixed-length inputs) instead of pointers."""
    # last query blocks first: under a causal mask they have the most keys (better tail)
    pid_m = tl.num_programs(0) - 1 - tl.program_id(0)
    h = tl.program_id(1)
    b = tl.program_id(2)
    q_start, len_q = _seq_range(CU_Q, b, seqlen_q, IS_VARLEN)
    k_start, len_k = _seq_range(CU_K, b, seqlen_k, IS_VARLEN)
    start_m = pid_m * BLOCK_M
    if start_m >= len_q:
        return
    hk = h // group
    diag = len_k - len_q
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    row_ok = offs_m < len_q
    rows = wide(q_start + offs_m)[:, None]
    q = tl.load(
        Q + wide(b) * stride_qb + wide(h) * stride_qh + rows * stride_qs + offs_d[None, :],
        mask=row_ok[:, None] & (offs_d[None, :] < HEAD_DIM),
        other=0.0,
    )
    dv_mask = row_ok[:, None] & (offs_dv[None, :] < HEAD_DIM_V)
    do = tl.load(
        DO + wide(b) * stride_dob + wide(h) * stride_doh + rows * stride_dos + offs_dv[None, :],
        mask=dv_mask,
        other=0.0,
    )
    o = tl.load(
        Out + wide(b) * stride_ob + wide(h) * stride_oh + rows * stride_os + offs_dv[None, :],
        mask=dv_mask,
        other=0.0,
    )
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    l_off = wide(b) * stride_lb + wide(h) * stride_lh + wide(q_start + offs_m)
    tl.store(DELTA + l_off, delta, mask=row_ok)
    lse2 = tl.load(LSE + l_off, mask=row_ok, other=float("inf")) * LOG2E
    slope2 = 0.0
    if HAS_ALIBI:
        slope2 = tl.load(SLOPES + b * stride_ab + h * stride_ah).to(tl.float32) * LOG2E
    seed = 0
    salt = 0
    if HAS_DROPOUT:
        seed = tl.load(RNG)
        salt = tl.load(RNG + 1).to(tl.int32)
    bh = b * n_heads + h
    k_base = K + wide(b) * stride_kb + wide(k_start) * stride_ks + wide(hk) * stride_kh
    v_base = V + wide(b) * stride_vb + wide(k_start) * stride_vs + wide(hk) * stride_vh
    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    lo, mid_lo, mid_hi, hi = _kv_blocks(
        start_m, len_k, diag, win_left, win_right, BLOCK_M, BLOCK_N, HAS_LEFT, HAS_RIGHT
    )
    dq = _bwd_dq_inner(
        dq, q, do, lse2, delta, k_base, v_base, stride_ks, stride_vs, offs_m, offs_d, offs_dv,
        lo, mid_lo, len_k, diag, win_left, win_right, qk_scale2, softcap_in, softcap_out2,
        slope2, seed, salt, bh, dropout_p, dropout_scale, K_DESC, V_DESC, b, hk, HEAD_DIM,
        HEAD_DIM_V, BLOCK_D, BLOCK_DV, BLOCK_N, True, HAS_LEFT, HAS_RIGHT, IS_SOFTCAP,
        HAS_ALIBI, HAS_DROPOUT, IEEE, USE_DESC,
    )  # fmt: skip
    dq = _bwd_dq_inner(
        dq, q, do, lse2, delta, k_base, v_base, stride_ks, stride_vs, offs_m, offs_d, offs_dv,
        mid_lo, mid_hi, len_k, diag, win_left, win_right, qk_scale2, softcap_in, softcap_out2,
        slope2, seed, salt, bh, dropout_p, dropout_scale, K_DESC, V_DESC, b, hk, HEAD_DIM,
        HEAD_DIM_V, BLOCK_D, BLOCK_DV, BLOCK_N, False, HAS_LEFT, HAS_RIGHT, IS_SOFTCAP,
        HAS_ALIBI, HAS_DROPOUT, IEEE, USE_DESC,
    )  # fmt: skip
    dq = _bwd_dq_inner(
        dq, q, do, lse2, delta, k_base, v_base, stride_ks, stride_vs, offs_m, offs_d, offs_dv,
        mid_hi, hi, len_k, diag, win_left, win_right, qk_scale2, softcap_in, softcap_out2,
        slope2, seed, salt, bh, dropout_p, dropout_scale, K_DESC, V_DESC, b, hk, HEAD_DIM,
        HEAD_DIM_V, BLOCK_D, BLOCK_DV, BLOCK_N, True, HAS_LEFT, HAS_RIGHT, IS_SOFTCAP,
        HAS_ALIBI, HAS_DROPOUT, IEEE, USE_DESC,
    )  # fmt: skip
    dq = dq * sm_scale
    tl.store(
        DQ
        + wide(b) * stride_dqb
        + wide(h) * stride_dqh
        + wide(q_start + offs_m)[:, None] * stride_dqs
        + offs_d[None, :],
        dq.to(DQ.dtype.element_ty),
        mask=row_ok[:, None] & (offs_d[None, :] < HEAD_DIM),
    )


@triton.jit
def _bwd_preprocess_kernel(
    OUT,
    DOUT,
    LSE,
    ROW_STATS,
    DQ_ACC,
    seqlen_q,
    stride_ob,
    stride_os,
    stride_oh,
    stride_dob,
    stride_dos,
    stride_doh,
    stride_lb,
    stride_lh,
    stride_ab,
    stride_as,
    stride_ah,
    HEAD_DIM: tl.constexpr,
    BLOCK_M: tl.constexpr,
):
    """For the fused backward (its dK/dV kernel also adds up dQ), BLOCK_M rows of one head
    of fixed-length ``OUT`` and ``DOUT`` ``[batch, seqlen_q, heads, HEAD_DIM]`` (unit
    stride along the head dim): the row statistics lse·log2 e (``LSE`` ``[batch, heads,
    seqlen_q]``, natural log, unit stride along the rows; +inf past the sequence) and delta
    = rowsum(O · dO) in fp32 (0 past it) into ``ROW_STATS`` ``[batch, heads, 2, rows]``,
    contiguous, and zeros into the same rows of the fp32 dQ accumulator ``DQ_ACC``
    ``[batch, rows, heads, HEAD_DIM]``; ``rows`` is the programs' rows (a multiple of
    BLOCK_M: every row of the block is stored)."""
    pid_m = tl.program_id(0)
    h = tl.program_id(1)
    b = tl.program_id(2)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m < seqlen_q
    rows = wide(offs_m)[:, None]
    o = tl.load(
        OUT + wide(b) * stride_ob + wide(h) * stride_oh + rows * stride_os + offs_d[None, :],
        mask=row_ok[:, None],
        other=0.0,
    )
    do = tl.load(
        DOUT + wide(b) * stride_dob + wide(h) * stride_doh + rows * stride_dos + offs_d[None, :],
        mask=row_ok[:, None],
        other=0.0,
    )
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), axis=1)
    lse = tl.load(
        LSE + wide(b) * stride_lb + wide(h) * stride_lh + offs_m, mask=row_ok, other=float("inf")
    )
    padded = tl.num_programs(0) * BLOCK_M
    stats = ROW_STATS + wide(2 * (b * tl.num_programs(1) + h)) * padded + offs_m
    tl.store(stats, lse * LOG2E)
    tl.store(stats + padded, delta)
    acc = DQ_ACC + wide(b) * stride_ab + wide(h) * stride_ah + rows * stride_as
    tl.store(acc + offs_d[None, :], tl.zeros([BLOCK_M, HEAD_DIM], tl.float32))


@triton.jit
def _dropout_mask_kernel(
    KEEP,
    RNG,
    n_heads,
    max_seqlen_q,
    max_seqlen_k,
    dropout_p,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """The keep mask ``[batch, heads, max_seqlen_q, max_seqlen_k]`` the kernels draw (tests)."""
    pid_m = tl.program_id(0)
    h = tl.program_id(1)
    b = tl.program_id(2)
    seed = tl.load(RNG)
    salt = tl.load(RNG + 1).to(tl.int32)
    bh = b * n_heads + h
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    base = KEEP + wide(bh) * max_seqlen_q * max_seqlen_k
    for start_n in range(0, max_seqlen_k, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        keep = _keep(seed, salt, bh, offs_m[:, None], offs_n[None, :], dropout_p)
        tl.store(
            base + wide(offs_m)[:, None] * max_seqlen_k + offs_n[None, :],
            keep.to(tl.int8),
            mask=(offs_m[:, None] < max_seqlen_q) & (offs_n[None, :] < max_seqlen_k),
        )
