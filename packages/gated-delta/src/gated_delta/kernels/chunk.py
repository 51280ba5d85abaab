"""Chunked gated delta rule (prefill): two kernels.

1. ``chunk_prepare_kernel`` (one program per chunk of 64 tokens and value head, all in
   parallel): gates (given, or computed from ``a``/``b`` as in the decode op), their
   cumulative sum G inside the chunk, the strictly lower matrix
   A = tril(beta_t exp(G_t - G_s) k_t . k_s, -1), its unit-lower inverse T = (I + A)^-1 by
   blocks of 16 (the nilpotent product (I - A)(I + A^2)(I + A^4)(I + A^8) on the four
   diagonal blocks, products for the rest), and the WY factors w = T (beta exp(G) K),
   u = T (beta V).
2. ``chunk_state_output_kernel`` (one program per sequence, value head and block of V,
   sequential over the sequence's chunks): state S lives in registers; per chunk
   U = u - w S, O = scale (exp(G) Q S + tril(Q K^T exp(G_t - G_s)) U),
   S = exp(G_last) S + (K exp(G_last - G))^T U. Writing O here instead of storing S per
   chunk saves a [chunks, HV, K, V] round trip through memory.

See ``gated_delta.reference.chunk_gated_delta_rule_native`` for the same algorithm in
PyTorch.
"""

import triton
import triton.language as tl

from tri_shared.offsets import wide

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
def _l2norm_rows(x):
    # same formula as the decode kernels: x / sqrt(sum(x^2) + 1e-6)
    return x / tl.sqrt(tl.sum(x * x, 1) + 1e-6)[:, None]


@triton.jit
def _gates(
    g,
    beta,
    a,
    b,
    A_log_hv,
    dt_bias_hv,
    hv,
    HV,
    t0,
    t_end,
    softplus_beta,
    softplus_threshold,
    FUSED_GATES: tl.constexpr,
):
    """Log decay and write strength of SUB tokens from t0 (0 and 0 past ``t_end``)."""
    offs_t = t0 + tl.arange(0, SUB)
    mask = offs_t < t_end
    idx = wide(offs_t) * HV + hv
    if FUSED_GATES:
        # g = -exp(A_log) * softplus(a + dt_bias), beta = sigmoid(b), as in the decode op
        x = tl.load(a + idx, mask=mask, other=0.0).to(tl.float32) + dt_bias_hv
        bx = softplus_beta * x
        sp = tl.where(
            bx <= softplus_threshold,
            tl.log(1.0 + tl.exp(tl.minimum(bx, softplus_threshold))) / softplus_beta,
            x,
        )
        g_t = tl.where(mask, -tl.exp(A_log_hv) * sp, 0.0)
        bb = tl.load(b + idx, mask=mask, other=0.0).to(tl.float32)
        beta_t = tl.where(mask, 1.0 / (1.0 + tl.exp(-bb)), 0.0)
    else:
        g_t = tl.load(g + idx, mask=mask, other=0.0).to(tl.float32)
        beta_t = tl.load(beta + idx, mask=mask, other=0.0).to(tl.float32)
    return g_t, beta_t


@triton.jit
def _block_a(kb_i, G_i, k_j, G_j, DIAG: tl.constexpr, PREC: tl.constexpr):
    """A block: (beta_i k_i) k_j^T exp(G_i - G_j), strictly lower on the diagonal."""
    return _decayed_block(kb_i, G_i, k_j, G_j, DIAG, False, PREC)


@triton.jit
def _block_p(q_i, G_i, k_j, G_j, DIAG: tl.constexpr, PREC: tl.constexpr):
    """P block: q_i k_j^T exp(G_i - G_j), lower triangle with the diagonal on the diagonal."""
    return _decayed_block(q_i, G_i, k_j, G_j, DIAG, True, PREC)


@triton.jit
def _decayed_block(x_i, G_i, k_j, G_j, DIAG: tl.constexpr, INCL: tl.constexpr, PREC: tl.constexpr):
    a = _dot(x_i, tl.trans(k_j), PREC)
    diff = G_i[:, None] - G_j[None, :]
    if DIAG:
        r = tl.arange(0, SUB)
        if INCL:
            low = r[:, None] >= r[None, :]
        else:
            low = r[:, None] > r[None, :]
        a = tl.where(low, a * tl.exp(tl.where(low, diff, 0.0)), 0.0)
    else:
        # rows of a later block: G_i <= G_j since g <= 0, so exp never overflows
        a = a * tl.exp(diff)
    return a


@triton.jit
def _dot(x, y, PREC: tl.constexpr):
    # PREC: "ieee" for fp32 inputs (tf32 would cost ~1e-3 relative error), else "tf32"
    return tl.dot(x, y, input_precision=PREC)


@triton.jit
def _mm(x, y):
    # fp32 products of the small solve: exact (ieee) so the inverse does not lose tf32 bits
    return tl.dot(x, y, input_precision="ieee")


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
def _cat_rows(a, b):
    """[M, N] on top of [M, N] -> [2M, N] (join, then move the pair axis to the front)."""
    return tl.reshape(tl.permute(tl.join(a, b), (2, 0, 1)), (2 * a.shape[0], a.shape[1]))


@triton.jit
def _cat_cols(a, b):
    """[M, N] beside [M, N] -> [M, 2N]."""
    return tl.reshape(tl.permute(tl.join(a, b), (0, 2, 1)), (a.shape[0], 2 * a.shape[1]))


@triton.jit
def _store_rows(base, val, t0, t_end, stride_t, offs_c, mask_c):
    offs_t = t0 + tl.arange(0, SUB)
    ptrs = base + wide(offs_t)[:, None] * stride_t + offs_c[None, :]
    mask = (offs_t < t_end)[:, None] & mask_c[None, :]
    tl.store(ptrs, val.to(base.dtype.element_ty), mask=mask)


@triton.jit
def chunk_prepare_kernel(
    k,
    v,
    g,
    beta,
    a,
    b,
    A_log,
    dt_bias,
    softplus_beta,
    softplus_threshold,
    chunk_seq,
    chunk_first,
    cu_seqlens,
    N,
    T,
    NC,
    w,
    u,
    Gc,
    H: tl.constexpr,
    HV: tl.constexpr,
    K: tl.constexpr,
    V: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    FUSED_GATES: tl.constexpr,
    USE_L2NORM: tl.constexpr,
    IS_VARLEN: tl.constexpr,
    PREC: tl.constexpr,
    ASSEMBLE_T: tl.constexpr,
):
    """One chunk of 64 tokens of one value head: G, w, u (see the module docstring).

    ``ASSEMBLE_T``: put the 16 x 16 blocks of T together into one [64, 64] matrix and form
    w and u with two 64-row products in the input dtype (tensor-core friendly) instead of
    twenty 16-row fp32 products.

    Fixed length: sequence ``i_c // NC``, NC chunks of T tokens each. Varlen:
    ``chunk_seq[i_c]`` (N past the last chunk: the grid is an upper bound) and the sequence's
    first chunk ``chunk_first[n]``.
    """
    i_c = tl.program_id(0)
    hv = tl.program_id(1)
    if IS_VARLEN:
        n = tl.load(chunk_seq + i_c)
        if n >= N:
            return
        first = tl.load(chunk_first + n)
        t0 = tl.load(cu_seqlens + n).to(tl.int64) + (i_c - first).to(tl.int64) * (4 * SUB)
        t_end = tl.load(cu_seqlens + n + 1).to(tl.int64)
    else:
        n = i_c // NC
        t0 = n.to(tl.int64) * T + (i_c % NC) * (4 * SUB)
        t_end = n.to(tl.int64) * T + T
    h = hv // (HV // H)
    t1, t2, t3 = t0 + SUB, t0 + 2 * SUB, t0 + 3 * SUB

    offs_k = tl.arange(0, BK)
    mask_k = offs_k < K
    offs_v = tl.arange(0, BV)
    mask_v = offs_v < V
    k_base = k + h * K
    v_base = v + hv * V
    dt = k.dtype.element_ty

    A_log_hv = 0.0
    dt_bias_hv = 0.0
    if FUSED_GATES:
        A_log_hv = tl.load(A_log + hv).to(tl.float32)
        dt_bias_hv = tl.load(dt_bias + hv).to(tl.float32)

    # gates of the four sub-blocks; G is the running sum from the chunk start
    g0, b0 = _gates(
        g,
        beta,
        a,
        b,
        A_log_hv,
        dt_bias_hv,
        hv,
        HV,
        t0,
        t_end,
        softplus_beta,
        softplus_threshold,
        FUSED_GATES,
    )
    g1, b1 = _gates(
        g,
        beta,
        a,
        b,
        A_log_hv,
        dt_bias_hv,
        hv,
        HV,
        t1,
        t_end,
        softplus_beta,
        softplus_threshold,
        FUSED_GATES,
    )
    g2, b2 = _gates(
        g,
        beta,
        a,
        b,
        A_log_hv,
        dt_bias_hv,
        hv,
        HV,
        t2,
        t_end,
        softplus_beta,
        softplus_threshold,
        FUSED_GATES,
    )
    g3, b3 = _gates(
        g,
        beta,
        a,
        b,
        A_log_hv,
        dt_bias_hv,
        hv,
        HV,
        t3,
        t_end,
        softplus_beta,
        softplus_threshold,
        FUSED_GATES,
    )
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
        k0, k1, k2, k3 = _l2norm_rows(k0), _l2norm_rows(k1), _l2norm_rows(k2), _l2norm_rows(k3)

    # A blocks from input-dtype operands (tensor cores), fp32 accumulation
    kd0, kd1, kd2, kd3 = k0.to(dt), k1.to(dt), k2.to(dt), k3.to(dt)
    kb0, kb1 = (k0 * b0[:, None]).to(dt), (k1 * b1[:, None]).to(dt)
    kb2, kb3 = (k2 * b2[:, None]).to(dt), (k3 * b3[:, None]).to(dt)
    a00 = _block_a(kb0, G0, kd0, G0, True, PREC)
    a11 = _block_a(kb1, G1, kd1, G1, True, PREC)
    a22 = _block_a(kb2, G2, kd2, G2, True, PREC)
    a33 = _block_a(kb3, G3, kd3, G3, True, PREC)
    a10 = _block_a(kb1, G1, kd0, G0, False, PREC)
    a20 = _block_a(kb2, G2, kd0, G0, False, PREC)
    a21 = _block_a(kb2, G2, kd1, G1, False, PREC)
    a30 = _block_a(kb3, G3, kd0, G0, False, PREC)
    a31 = _block_a(kb3, G3, kd1, G1, False, PREC)
    a32 = _block_a(kb3, G3, kd2, G2, False, PREC)

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

    # w = T (beta exp(G) K), u = T (beta V)
    kg0 = k0 * (b0 * tl.exp(G0))[:, None]
    kg1 = k1 * (b1 * tl.exp(G1))[:, None]
    kg2 = k2 * (b2 * tl.exp(G2))[:, None]
    kg3 = k3 * (b3 * tl.exp(G3))[:, None]
    vb0 = _rows(v_base, t0, t_end, HV * V, offs_v, mask_v, SUB) * b0[:, None]
    vb1 = _rows(v_base, t1, t_end, HV * V, offs_v, mask_v, SUB) * b1[:, None]
    vb2 = _rows(v_base, t2, t_end, HV * V, offs_v, mask_v, SUB) * b2[:, None]
    vb3 = _rows(v_base, t3, t_end, HV * V, offs_v, mask_v, SUB) * b3[:, None]
    w_base = w + hv * K
    u_base = u + hv * V
    if ASSEMBLE_T:
        zero = tl.zeros([SUB, SUB], dtype=tl.float32)
        t_full = _cat_rows(
            _cat_rows(
                _cat_cols(_cat_cols(t00, zero), _cat_cols(zero, zero)),
                _cat_cols(_cat_cols(t10, t11), _cat_cols(zero, zero)),
            ),
            _cat_rows(
                _cat_cols(_cat_cols(t20, t21), _cat_cols(t22, zero)),
                _cat_cols(_cat_cols(t30, t31), _cat_cols(t32, t33)),
            ),
        )
        kg = _cat_rows(_cat_rows(kg0, kg1), _cat_rows(kg2, kg3))
        vb = _cat_rows(_cat_rows(vb0, vb1), _cat_rows(vb2, vb3))
        if PREC == "ieee":
            w_all = _dot(t_full, kg, PREC)
            u_all = _dot(t_full, vb, PREC)
        else:
            t_d = t_full.to(dt)
            w_all = _dot(t_d, kg.to(dt), PREC)
            u_all = _dot(t_d, vb.to(dt), PREC)
        rows = wide(t0 + tl.arange(0, 4 * SUB))
        valid = (t0 + tl.arange(0, 4 * SUB)) < t_end
        tl.store(
            w_base + rows[:, None] * (HV * K) + offs_k[None, :],
            w_all.to(w.dtype.element_ty),
            mask=valid[:, None] & mask_k[None, :],
        )
        tl.store(
            u_base + rows[:, None] * (HV * V) + offs_v[None, :],
            u_all.to(u.dtype.element_ty),
            mask=valid[:, None] & mask_v[None, :],
        )
    else:
        w0 = _dot(t00, kg0, PREC)
        w1 = _dot(t10, kg0, PREC) + _dot(t11, kg1, PREC)
        w2 = _dot(t20, kg0, PREC) + _dot(t21, kg1, PREC) + _dot(t22, kg2, PREC)
        w3 = _dot(t30, kg0, PREC) + _dot(t31, kg1, PREC) + _dot(t32, kg2, PREC)
        w3 += _dot(t33, kg3, PREC)
        _store_rows(w_base, w0, t0, t_end, HV * K, offs_k, mask_k)
        _store_rows(w_base, w1, t1, t_end, HV * K, offs_k, mask_k)
        _store_rows(w_base, w2, t2, t_end, HV * K, offs_k, mask_k)
        _store_rows(w_base, w3, t3, t_end, HV * K, offs_k, mask_k)
        u0 = _dot(t00, vb0, PREC)
        u1 = _dot(t10, vb0, PREC) + _dot(t11, vb1, PREC)
        u2 = _dot(t20, vb0, PREC) + _dot(t21, vb1, PREC) + _dot(t22, vb2, PREC)
        u3 = _dot(t30, vb0, PREC) + _dot(t31, vb1, PREC) + _dot(t32, vb2, PREC)
        u3 += _dot(t33, vb3, PREC)
        _store_rows(u_base, u0, t0, t_end, HV * V, offs_v, mask_v)
        _store_rows(u_base, u1, t1, t_end, HV * V, offs_v, mask_v)
        _store_rows(u_base, u2, t2, t_end, HV * V, offs_v, mask_v)
        _store_rows(u_base, u3, t3, t_end, HV * V, offs_v, mask_v)


@triton.jit
def chunk_state_output_kernel(
    q,
    k,
    w,
    u,
    Gc,
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
    PREC: tl.constexpr,
):
    """One sequence, one value head, one block of V: the chunks in order, state in registers.

    ``h0`` is read and ``ht`` written at row ``state_indices[n]`` (or ``n``); a negative
    index means a zero initial state and no write, as in the decode op.
    """
    i_nh = tl.program_id(0)
    i_v = tl.program_id(1)
    n = i_nh // HV
    hv = i_nh % HV
    h = hv // (HV // H)
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
    # broadcast the per-program flag to the tile first: the interpreter rejects a block mask
    # and-ed with a scalar
    has_slot = (tl.zeros([BK, BV], dtype=tl.int64) + slot) >= 0
    s_mask = mask_k[:, None] & mask_v[None, :] & has_slot
    s_row = (slot * HV + hv) * K * V

    S = tl.zeros([BK, BV], dtype=tl.float32)
    if HAS_H0:
        S = tl.load(h0 + s_row + s_off, mask=s_mask, other=0.0).to(tl.float32)

    q_base = q + h * K
    k_base = k + h * K
    w_base = w + hv * K
    u_base = u + hv * V
    o_base = o + hv * V
    low = offs_t[:, None] >= offs_t[None, :]
    for t0 in range(bos, eos, BT):
        valid = t0 + offs_t < eos
        rows = wide(t0 + offs_t)[:, None]
        o_ptrs = o_base + rows * (HV * V) + offs_v[None, :]
        o_mask = valid[:, None] & mask_v[None, :]
        b_k = _rows(k_base, t0, eos, H * K, offs_k, mask_k, BT)
        if USE_L2NORM:
            b_k = _l2norm_rows(b_k)
        b_w = tl.load(
            w_base + rows * (HV * K) + offs_k[None, :],
            mask=valid[:, None] & mask_k[None, :],
            other=0.0,
        )
        b_u = tl.load(u_base + rows * (HV * V) + offs_v[None, :], mask=o_mask, other=0.0)
        b_G = tl.load(Gc + wide(t0 + offs_t) * HV + hv, mask=valid, other=0.0)
        G_last = tl.load(Gc + (tl.minimum(t0 + BT, eos) - 1) * HV + hv)

        S_d = S.to(dt)
        # U = u - w S: the chunk's corrected values
        b_U = b_u.to(tl.float32) - _dot(b_w.to(dt), S_d, PREC)
        b_Ud = b_U.to(dt)
        b_q = _rows(q_base, t0, eos, H * K, offs_k, mask_k, BT)
        if USE_L2NORM:
            b_q = _l2norm_rows(b_q)
        b_q = b_q * scale
        # intra-chunk causal part with decay exp(G_t - G_s), s <= t
        keep = low & valid[:, None]
        qk = _dot(b_q.to(dt), tl.trans(b_k.to(dt)), PREC)
        diff = tl.where(keep, b_G[:, None] - b_G[None, :], 0.0)
        P = tl.where(keep, qk * tl.exp(diff), 0.0)
        b_o = _dot((b_q * tl.exp(b_G)[:, None]).to(dt), S_d, PREC)
        b_o += _dot(P.to(dt), b_Ud, PREC)
        tl.store(o_ptrs, b_o.to(o.dtype.element_ty), mask=o_mask)
        # S = exp(G_last) S + (K exp(G_last - G))^T U
        kd = tl.where(valid[:, None], b_k * tl.exp(G_last - b_G)[:, None], 0.0)
        S = S * tl.exp(G_last) + _dot(tl.trans(kd.to(dt)), b_Ud, PREC)

    if STORE_HT:
        st_mask = s_mask
        if not STORE_EMPTY:
            # an empty sequence leaves its pool slot untouched (bit for bit), as in decode
            st_mask = st_mask & ((tl.zeros([BK, BV], dtype=tl.int64) + eos) > bos)
        tl.store(ht + s_row + s_off, S.to(ht.dtype.element_ty), mask=st_mask)
