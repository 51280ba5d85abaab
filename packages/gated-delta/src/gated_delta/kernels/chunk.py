"""Chunked gated delta rule (prefill): two kernels (three with l2norm).

1. ``chunk_prepare_kernel`` (one program per chunk of 64 tokens and value head, all in
   parallel): gates (given, or computed from ``a``/``b`` by ``sigmoid_gates_kernel`` as in
   the decode op), their
   cumulative sum G inside the chunk, the strictly lower matrix
   A = tril(beta_t exp(G_t - G_s) k_t . k_s, -1) and its unit-lower inverse T = (I + A)^-1
   by blocks of 16 (the nilpotent product (I - A)(I + A^2)(I + A^4)(I + A^8) on the four
   diagonal blocks, products for the rest). It stores G, T and, with l2norm, the
   inverse norms of the k rows (``rnorm_rows_kernel`` computes the q rows' beforehand).
   The WY factors u = T beta V and w = T beta exp(G) K are never stored: that saves their
   round trip through memory.
2. ``chunk_state_output_kernel`` (one program per sequence, value head and block of V,
   sequential over the sequence's chunks): state S in registers; per chunk
   U = u - w S = T (beta (V - exp(G) K S)),
   O = scale (exp(G) Q S + tril(Q K^T exp(G_t - G_s)) U),
   S = exp(G_last) S + (K exp(G_last - G))^T U.
   Writing O here instead of storing S per chunk saves a [chunks, HV, K, V] buffer and its
   round trip; the V split (two programs per SM) keeps the GPU busy. With l2norm the
   products take the raw q, k rows and are scaled by the rows' inverse norms.

See ``gated_delta.reference.chunk_gated_delta_rule_native`` for the same algorithm in
PyTorch.
"""

import triton
import triton.language as tl

from tri_shared.dots import dot
from tri_shared.offsets import wide

from .recurrent import _softplus

SUB: tl.constexpr = tl.constexpr(16)  # rows of one diagonal block of the triangular solve


@triton.jit
def _rows(base, t0, t_end, stride_t, offs_c, mask_c, BS: tl.constexpr):
    """Rows t0 .. t0 + BS of a [tokens, C] view (row stride ``stride_t``) as fp32, zeros
    past ``t_end``."""
    offs_t = t0 + tl.arange(0, BS)
    ptrs = base + wide(offs_t)[:, None] * stride_t + offs_c[None, :]
    mask = (offs_t < t_end)[:, None] & mask_c[None, :]
    return tl.load(ptrs, mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _rnorm(x):
    """Inverse l2 norm of each row of x, as the decode kernels normalise:
    x / sqrt(sum(x^2) + 1e-6)."""
    return 1.0 / tl.sqrt(tl.sum(x * x, 1) + 1e-6)


@triton.jit
def _gates(g, beta, hv, HV, t0, t_end):
    """Log decay and write strength of SUB tokens from t0 (0 and 0 past ``t_end``)."""
    offs_t = t0 + tl.arange(0, SUB)
    mask = offs_t < t_end
    idx = wide(offs_t) * HV + hv
    g_t = tl.load(g + idx, mask=mask, other=0.0).to(tl.float32)
    beta_t = tl.load(beta + idx, mask=mask, other=0.0).to(tl.float32)
    return g_t, beta_t


@triton.jit
def sigmoid_gates_kernel(
    a,
    b,
    A_log,
    dt_bias,
    g,
    beta,
    n,
    softplus_beta,
    softplus_threshold,
    HV: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """The decode op's gating for n = tokens * HV entries of [tokens, HV]:
    g = -exp(A_log) softplus(a + dt_bias), beta = sigmoid(b), both fp32."""
    offs = wide(tl.program_id(0)) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    hv = offs % HV
    x = tl.load(a + offs, mask=mask, other=0.0).to(tl.float32)
    x += tl.load(dt_bias + hv, mask=mask, other=0.0).to(tl.float32)
    neg_A = -tl.exp(tl.load(A_log + hv, mask=mask, other=0.0).to(tl.float32))
    tl.store(g + offs, neg_A * _softplus(x, softplus_beta, softplus_threshold), mask=mask)
    bb = tl.load(b + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(beta + offs, 1.0 / (1.0 + tl.exp(-bb)), mask=mask)


@triton.jit
def _block_a(kb_i, G_i, k_j, G_j, DIAG: tl.constexpr, IEEE: tl.constexpr):
    """A block: (beta_i k_i) k_j^T exp(G_i - G_j), strictly lower on the diagonal."""
    a = dot(kb_i, tl.trans(k_j), IEEE)
    diff = G_i[:, None] - G_j[None, :]
    if DIAG:
        r = tl.arange(0, SUB)
        low = r[:, None] > r[None, :]
        a = tl.where(low, a * tl.exp(tl.where(low, diff, 0.0)), 0.0)
    else:
        # rows of a later block: G_i <= G_j since g <= 0, so exp never overflows
        a = a * tl.exp(diff)
    return a


@triton.jit
def _mm(x, y):
    # products of the small solve: exact fp32 whatever the input dtype, so that the inverse
    # does not lose tf32 bits
    return dot(x, y, True)


@triton.jit
def _inv_unit_lower(a):
    """(I + a)^-1 for a strictly lower [16, 16] block.

    a is nilpotent (a^16 = 0), so (I + a)^-1 = (I - a)(I + a^2)(I + a^4)(I + a^8): six
    small products instead of a 16-step forward substitution whose row extractions and
    reductions serialise the warps.
    """
    r = tl.arange(0, SUB)
    eye = tl.where(r[:, None] == r[None, :], 1.0, 0.0)
    a2 = _mm(a, a)
    a4 = _mm(a2, a2)
    a8 = _mm(a4, a4)
    t = _mm(eye - a, eye + a2)
    t = _mm(t, eye + a4)
    return _mm(t, eye + a8)


@triton.jit
def rnorm_rows_kernel(x, out, n_rows, K: tl.constexpr, BLOCK_ROWS: tl.constexpr, BK: tl.constexpr):
    """``out[r] = 1 / sqrt(sum(x[r]^2) + 1e-6)`` for the rows of a contiguous [n_rows, K]
    tensor (the q rows' inverse l2 norms; the sequential kernel scales its products by them
    instead of normalising [64, K] tiles itself)."""
    rows = wide(tl.program_id(0)) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    offs_k = tl.arange(0, BK)
    valid = rows < n_rows
    tile = tl.load(
        x + rows[:, None] * K + offs_k[None, :],
        mask=valid[:, None] & (offs_k < K)[None, :],
        other=0.0,
    ).to(tl.float32)
    tl.store(out + rows, _rnorm(tile), mask=valid)


@triton.jit
def _store_block(base, blk, r0, t_end, HV, col0):
    """A [16, 16] block of T: rows r0 .. r0 + 16 (tokens, row stride HV * 64), columns
    col0 .. col0 + 16, rows past ``t_end`` skipped."""
    offs = tl.arange(0, SUB)
    ptrs = base + wide(r0 + offs)[:, None] * (HV * 4 * SUB) + col0 + offs[None, :]
    tl.store(ptrs, blk.to(base.dtype.element_ty), mask=(r0 + offs < t_end)[:, None])


@triton.jit
def _chunk_bounds(i_c, chunk_seq, chunk_first, cu_seqlens, N, T, NC, IS_VARLEN: tl.constexpr):
    """Sequence ``n``, first token ``t0`` and sequence end ``t_end`` of global chunk ``i_c``;
    ``n == N`` marks a chunk past the last one (the varlen grid is an upper bound)."""
    if IS_VARLEN:
        n = tl.load(chunk_seq + i_c)
        if n < N:
            first = tl.load(chunk_first + n)
            t0 = tl.load(cu_seqlens + n).to(tl.int64) + (i_c - first).to(tl.int64) * (4 * SUB)
            t_end = tl.load(cu_seqlens + n + 1).to(tl.int64)
        else:
            t0 = wide(i_c * 0)
            t_end = t0
    else:
        n = i_c // NC
        t0 = n.to(tl.int64) * T + (i_c % NC) * (4 * SUB)
        t_end = n.to(tl.int64) * T + T
    return n, t0, t_end


@triton.jit
def chunk_prepare_kernel(
    k,
    g,
    beta,
    chunk_seq,
    chunk_first,
    cu_seqlens,
    N,
    T,
    NC,
    Tm,
    Gc,
    k_rnorm,
    H: tl.constexpr,
    HV: tl.constexpr,
    K: tl.constexpr,
    BK: tl.constexpr,
    USE_L2NORM: tl.constexpr,
    IS_VARLEN: tl.constexpr,
    IEEE: tl.constexpr,
):
    """One chunk of 64 tokens of one value head: G per token, and T = (I + A)^-1
    (see the module docstring) as rows of 64 in ``Tm`` ``[tokens, HV, 64]``. Only the
    blocks on and below the diagonal are written; readers mask the rest. With
    ``USE_L2NORM``, the first value head of each k head also stores the k rows' inverse
    norms to ``k_rnorm`` ``[tokens, H]`` (fp32) for the sequential kernel.

    Fixed length: sequence ``i_c // NC``, NC chunks of T tokens each. Varlen:
    ``chunk_seq[i_c]`` (N past the last chunk: the grid is an upper bound) and the sequence's
    first chunk ``chunk_first[n]``.
    """
    # flat grid, value heads fastest: the HV // H heads that read one k head run together
    i_c = tl.program_id(0) // HV
    hv = tl.program_id(0) % HV
    n, t0, t_end = _chunk_bounds(i_c, chunk_seq, chunk_first, cu_seqlens, N, T, NC, IS_VARLEN)
    if n >= N:
        return
    h = hv // (HV // H)
    t1, t2, t3 = t0 + SUB, t0 + 2 * SUB, t0 + 3 * SUB

    offs_k = tl.arange(0, BK)
    mask_k = offs_k < K
    k_base = k + h * K
    dt = k.dtype.element_ty

    # gates of the four sub-blocks; G is the running sum from the chunk start
    g0, b0 = _gates(g, beta, hv, HV, t0, t_end)
    g1, b1 = _gates(g, beta, hv, HV, t1, t_end)
    g2, b2 = _gates(g, beta, hv, HV, t2, t_end)
    g3, b3 = _gates(g, beta, hv, HV, t3, t_end)
    G0 = tl.cumsum(g0, 0)
    G1 = tl.cumsum(g1, 0) + tl.sum(g0, 0)
    G2 = tl.cumsum(g2, 0) + tl.sum(g1, 0) + tl.sum(g0, 0)
    G3 = tl.cumsum(g3, 0) + tl.sum(g2, 0) + tl.sum(g1, 0) + tl.sum(g0, 0)
    offs_s = tl.arange(0, SUB)
    tl.store(Gc + wide(t0 + offs_s) * HV + hv, G0, mask=t0 + offs_s < t_end)
    tl.store(Gc + wide(t1 + offs_s) * HV + hv, G1, mask=t1 + offs_s < t_end)
    tl.store(Gc + wide(t2 + offs_s) * HV + hv, G2, mask=t2 + offs_s < t_end)
    tl.store(Gc + wide(t3 + offs_s) * HV + hv, G3, mask=t3 + offs_s < t_end)

    k0 = _rows(k_base, t0, t_end, H * K, offs_k, mask_k, SUB)
    k1 = _rows(k_base, t1, t_end, H * K, offs_k, mask_k, SUB)
    k2 = _rows(k_base, t2, t_end, H * K, offs_k, mask_k, SUB)
    k3 = _rows(k_base, t3, t_end, H * K, offs_k, mask_k, SUB)
    if USE_L2NORM:
        rk0, rk1, rk2, rk3 = _rnorm(k0), _rnorm(k1), _rnorm(k2), _rnorm(k3)
        k0, k1 = k0 * rk0[:, None], k1 * rk1[:, None]
        k2, k3 = k2 * rk2[:, None], k3 * rk3[:, None]
        if hv % (HV // H) == 0:
            # one value head per q/k head stores the row norms for the next kernel
            r_base = k_rnorm + h
            tl.store(r_base + wide(t0 + offs_s) * H, rk0, mask=t0 + offs_s < t_end)
            tl.store(r_base + wide(t1 + offs_s) * H, rk1, mask=t1 + offs_s < t_end)
            tl.store(r_base + wide(t2 + offs_s) * H, rk2, mask=t2 + offs_s < t_end)
            tl.store(r_base + wide(t3 + offs_s) * H, rk3, mask=t3 + offs_s < t_end)

    # A blocks from input-dtype operands (tensor cores), fp32 accumulation
    kd0, kd1, kd2, kd3 = k0.to(dt), k1.to(dt), k2.to(dt), k3.to(dt)
    kb0, kb1 = (k0 * b0[:, None]).to(dt), (k1 * b1[:, None]).to(dt)
    kb2, kb3 = (k2 * b2[:, None]).to(dt), (k3 * b3[:, None]).to(dt)
    a00 = _block_a(kb0, G0, kd0, G0, True, IEEE)
    a11 = _block_a(kb1, G1, kd1, G1, True, IEEE)
    a22 = _block_a(kb2, G2, kd2, G2, True, IEEE)
    a33 = _block_a(kb3, G3, kd3, G3, True, IEEE)
    a10 = _block_a(kb1, G1, kd0, G0, False, IEEE)
    a20 = _block_a(kb2, G2, kd0, G0, False, IEEE)
    a21 = _block_a(kb2, G2, kd1, G1, False, IEEE)
    a30 = _block_a(kb3, G3, kd0, G0, False, IEEE)
    a31 = _block_a(kb3, G3, kd1, G1, False, IEEE)
    a32 = _block_a(kb3, G3, kd2, G2, False, IEEE)

    # T = (I + A)^-1 by blocks: T_ii = (I + A_ii)^-1, T_ij = -T_ii sum_{j<=m<i} A_im T_mj
    t00 = _inv_unit_lower(a00)
    t11 = _inv_unit_lower(a11)
    t22 = _inv_unit_lower(a22)
    t33 = _inv_unit_lower(a33)
    t10 = -_mm(t11, _mm(a10, t00))
    t21 = -_mm(t22, _mm(a21, t11))
    t32 = -_mm(t33, _mm(a32, t22))
    t20 = -_mm(t22, _mm(a20, t00) + _mm(a21, t10))
    t31 = -_mm(t33, _mm(a31, t11) + _mm(a32, t21))
    t30 = -_mm(t33, _mm(a30, t00) + _mm(a31, t10) + _mm(a32, t20))

    # T by 16 x 16 blocks into rows of 64; the six blocks above the diagonal stay unwritten
    t_base = Tm + hv * (4 * SUB)
    _store_block(t_base, t00, t0, t_end, HV, 0)
    _store_block(t_base, t10, t1, t_end, HV, 0)
    _store_block(t_base, t11, t1, t_end, HV, SUB)
    _store_block(t_base, t20, t2, t_end, HV, 0)
    _store_block(t_base, t21, t2, t_end, HV, SUB)
    _store_block(t_base, t22, t2, t_end, HV, 2 * SUB)
    _store_block(t_base, t30, t3, t_end, HV, 0)
    _store_block(t_base, t31, t3, t_end, HV, SUB)
    _store_block(t_base, t32, t3, t_end, HV, 2 * SUB)
    _store_block(t_base, t33, t3, t_end, HV, 3 * SUB)


@triton.jit
def chunk_state_output_kernel(
    q,
    k,
    v,
    Tm,
    Gc,
    beta,
    q_rnorm,
    k_rnorm,
    o,
    h0,
    ht,
    state_indices,
    cu_seqlens,
    T,
    scale,
    H: tl.constexpr,
    HV: tl.constexpr,
    K: tl.constexpr,
    V: tl.constexpr,
    BT: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    HAS_H0: tl.constexpr,
    STORE_HT: tl.constexpr,
    USE_INDICES: tl.constexpr,
    STATE_VK: tl.constexpr,
    USE_L2NORM: tl.constexpr,
    STORE_EMPTY: tl.constexpr,
    IS_VARLEN: tl.constexpr,
    IEEE: tl.constexpr,
):
    """One sequence, one value head, one block of V: the chunks in order, state in registers,
    outputs written on the way. Per chunk, with S the state entering it:
    U = T (beta (V - exp(G) K S)), O = scale (exp(G) Q S + tril(Q K^T exp(G_t - G_s)) U),
    S = exp(G_last) S + (K exp(G_last - G))^T U.

    With ``USE_L2NORM`` the products take the raw q and k rows and are scaled by the rows'
    inverse norms the chunk kernel stored (the norms factor out of every product).
    ``h0`` is read and ``ht`` written at row ``state_indices[n]`` (or ``n``); a negative
    index means a zero initial state and no write, as in the decode op.
    """
    NV = (V + BV - 1) // BV
    i_nh = tl.program_id(0) // NV
    i_v = tl.program_id(0) % NV
    n = i_nh // HV
    hv = i_nh % HV
    h_qk = hv // (HV // H)
    if IS_VARLEN:
        bos = tl.load(cu_seqlens + n).to(tl.int64)
        eos = tl.load(cu_seqlens + n + 1).to(tl.int64)
    else:
        bos = n.to(tl.int64) * T
        eos = bos + T

    offs_k = tl.arange(0, BK)
    mask_k = offs_k < K
    offs_v = i_v * BV + tl.arange(0, BV)
    mask_v = offs_v < V
    offs_t = tl.arange(0, BT)
    dt = k.dtype.element_ty

    slot = n.to(tl.int64)
    if USE_INDICES:
        slot = tl.load(state_indices + n).to(tl.int64)
    # element (k, v) of a state row: [K, V] ("kv") or [V, K] ("vk") layout
    if STATE_VK:
        s_off = wide(offs_v)[None, :] * K + offs_k[:, None]
    else:
        s_off = wide(offs_k)[:, None] * V + offs_v[None, :]
    s_mask = mask_k[:, None] & mask_v[None, :]
    s_row = (slot * HV + hv) * K * V

    # a negative slot (or an empty sequence) is a uniform branch of the whole program, not a
    # per-element mask: no [BK, BV] flag tile to keep
    S = tl.zeros([BK, BV], dtype=tl.float32)
    # two ifs: a compile-time branch (no h0 pointer at all) around a run-time one
    if HAS_H0:  # noqa: SIM102
        if slot >= 0:
            S = tl.load(h0 + s_row + s_off, mask=s_mask, other=0.0).to(tl.float32)

    q_base = q + h_qk * K
    k_base = k + h_qk * K
    v_base = v + hv * V
    o_base = o + hv * V
    # rows of T: only blocks on and below the diagonal were written
    t_mask_blocks = offs_t[None, :] < (offs_t[:, None] // SUB + 1) * SUB
    causal = offs_t[:, None] >= offs_t[None, :]
    for t0 in range(bos, eos, BT):
        valid = t0 + offs_t < eos
        rows = wide(t0 + offs_t)[:, None]
        qk_mask = valid[:, None] & mask_k[None, :]
        b_k = tl.load(k_base + rows * (H * K) + offs_k[None, :], mask=qk_mask, other=0.0)
        b_q = tl.load(q_base + rows * (H * K) + offs_k[None, :], mask=qk_mask, other=0.0)
        v_mask = valid[:, None] & mask_v[None, :]
        b_v = tl.load(v_base + rows * (HV * V) + offs_v[None, :], mask=v_mask, other=0.0)
        b_T = tl.load(
            Tm + rows * (HV * BT) + hv * BT + offs_t[None, :],
            mask=valid[:, None] & t_mask_blocks,
            other=0.0,
        )
        b_G = tl.load(Gc + wide(t0 + offs_t) * HV + hv, mask=valid, other=0.0)
        b_beta = tl.load(beta + wide(t0 + offs_t) * HV + hv, mask=valid, other=0.0).to(tl.float32)
        G_last = tl.load(Gc + (tl.minimum(t0 + BT, eos) - 1) * HV + hv)
        # row scales: the query scale and decay, and the inverse l2 norms when normalising
        q_scale = tl.exp(b_G) * scale
        k_scale = tl.full([BT], 1.0, tl.float32)
        rq = tl.full([BT], 1.0, tl.float32)
        if USE_L2NORM:
            rq = tl.load(q_rnorm + wide(t0 + offs_t) * H + h_qk, mask=valid, other=0.0)
            k_scale = tl.load(k_rnorm + wide(t0 + offs_t) * H + h_qk, mask=valid, other=0.0)
            q_scale = q_scale * rq

        S_d = S.to(dt)
        # U = T (beta (V - exp(G) K S)): the chunk's corrected values
        KS = dot(b_k, S_d, IEEE)
        X = (b_v.to(tl.float32) - KS * (tl.exp(b_G) * k_scale)[:, None]) * b_beta[:, None]
        b_U = dot(b_T.to(dt), X.to(dt), IEEE)
        b_Ud = b_U.to(dt)
        # O = scale (exp(G) Q S + P U), P the decayed causal part of Q K^T
        qk = dot(b_q, tl.trans(b_k), IEEE) * k_scale[None, :]
        keep = causal & valid[:, None]
        decay = tl.exp(tl.where(keep, b_G[:, None] - b_G[None, :], 0.0))
        P = tl.where(keep, qk * decay * (rq * scale)[:, None], 0.0)
        b_o = dot(b_q, S_d, IEEE) * q_scale[:, None]
        b_o += dot(P.to(dt), b_Ud, IEEE)
        tl.store(
            o_base + rows * (HV * V) + offs_v[None, :], b_o.to(o.dtype.element_ty), mask=v_mask
        )
        # S = exp(G_last) S + (K exp(G_last - G))^T U, the decay applied to the rows of U
        # (a [64, BV] tile) rather than of K ([64, K]: K would need registers, not only
        # shared memory)
        k_decay = tl.where(valid, k_scale * tl.exp(G_last - b_G), 0.0)
        S = S * tl.exp(G_last) + dot(tl.trans(b_k), (b_U * k_decay[:, None]).to(dt), IEEE)

    if STORE_HT:
        store = slot >= 0
        if not STORE_EMPTY:
            # an empty sequence leaves its pool slot untouched (bit for bit), as in decode
            store = store & (eos > bos)
        if store:
            tl.store(ht + s_row + s_off, S.to(ht.dtype.element_ty), mask=s_mask)
