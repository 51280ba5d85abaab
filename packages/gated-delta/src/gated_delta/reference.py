"""Plain PyTorch versions of the operators: the specification the kernels are tested against."""

import torch

from ._validate import check_softplus, validate_gdn_args, validate_intermediate_buffer

# --- Chunked prefill: gates given as inputs (g = log decay, beta = write strength) -----------


def _l2norm_last(x, eps=1e-6):
    """``x / sqrt(sum(x**2) + eps)`` over the last dimension (the kernels' l2norm)."""
    return x / (x.square().sum(-1, keepdim=True) + eps).sqrt()


def _sequence_bounds(cu_seqlens, B: int, T: int) -> list[tuple[int, int, int]]:
    """``(batch_row, bos, eos)`` of every sequence: B rows of T tokens, or the varlen ranges."""
    if cu_seqlens is None:
        return [(n, 0, T) for n in range(B)]
    cu = [int(c) for c in cu_seqlens.tolist()]
    return [(0, cu[n], cu[n + 1]) for n in range(len(cu) - 1)]


def recurrent_gated_delta_rule_native(
    q,
    k,
    v,
    g,
    beta,
    scale=None,
    initial_state=None,
    output_final_state=False,
    cu_seqlens=None,
    use_qk_l2norm_in_kernel=False,
):
    """The gated delta rule token by token, gates precomputed (the recurrent specification).

    q, k ``[B, T, H, K]``; v ``[B, T, HV, V]``; g (log decay, <= 0) and beta ``[B, T, HV]``;
    initial_state ``[N, HV, K, V]`` or None (zeros); with ``cu_seqlens`` ``[N + 1]`` B is 1 and
    the N sequences lie back to back along T. For every token, per value head (query/key head
    ``hv // (HV // H)``)::

        S = exp(g) * S;  u = beta * (v - S^T k);  S = S + k u^T;  o = S^T (scale * q)

    Computed in fp32 (fp64 when the inputs are fp64). Returns ``(o [B, T, HV, V]`` in v's
    dtype, ``final_state [N, HV, K, V]`` fp32 or None).
    """

    B, T, H, K = k.shape
    HV, V = v.shape[2], v.shape[3]
    ct = torch.float64 if q.dtype == torch.float64 else torch.float32
    scale = K**-0.5 if scale is None else scale
    q, k, v, g, beta = (x.to(ct) for x in (q, k, v, g, beta))
    if use_qk_l2norm_in_kernel:
        q, k = _l2norm_last(q), _l2norm_last(k)
    # each value head reads the query/key head it is grouped with
    q = q.repeat_interleave(HV // H, dim=2) * scale
    k = k.repeat_interleave(HV // H, dim=2)
    o = torch.zeros(B, T, HV, V, dtype=ct, device=v.device)
    bounds = _sequence_bounds(cu_seqlens, B, T)
    finals = []
    for n, (row, bos, eos) in enumerate(bounds):
        if initial_state is None:
            S = torch.zeros(HV, K, V, dtype=ct, device=v.device)
        else:
            S = initial_state[n].to(ct).clone()
        for t in range(bos, eos):
            S = S * torch.exp(g[row, t])[:, None, None]
            u = beta[row, t][:, None] * (v[row, t] - torch.einsum("hkv,hk->hv", S, k[row, t]))
            S = S + k[row, t][:, :, None] * u[:, None, :]
            o[row, t] = torch.einsum("hkv,hk->hv", S, q[row, t])
        finals.append(S)
    final = torch.stack(finals).to(torch.float32) if output_final_state else None
    return o.to(v.dtype), final


def chunk_gated_delta_rule_native(
    q,
    k,
    v,
    g,
    beta,
    scale=None,
    initial_state=None,
    output_final_state=False,
    cu_seqlens=None,
    use_qk_l2norm_in_kernel=False,
    chunk_size=64,
):
    """The same operator as :func:`recurrent_gated_delta_rule_native`, computed chunk by chunk.

    Within a chunk of C tokens, with G the cumulative sum of g from the chunk start, the
    per-token updates u_t = beta_t (v_t - exp(G_t) S0^T k_t - sum_{s<t} exp(G_t - G_s)
    (k_t . k_s) u_s) form a unit lower-triangular system (I + A) U = beta V - beta exp(G) K S0,
    A_ts = beta_t exp(G_t - G_s) k_t . k_s for s < t. With T = (I + A)^-1 (the WY / UT
    transform) the chunk reduces to matrix products::

        w = T (beta exp(G) K),  u = T (beta V),  U = u - w S0
        O = scale * (exp(G) Q S0 + tril(Q K^T * exp(G_t - G_s)) U)
        S = exp(G_C) S0 + (K * exp(G_C - G))^T U

    Same arguments and results as the recurrent reference, plus ``chunk_size``.
    """

    B, T, H, K = k.shape
    HV, V = v.shape[2], v.shape[3]
    ct = torch.float64 if q.dtype == torch.float64 else torch.float32
    scale = K**-0.5 if scale is None else scale
    q, k, v, g, beta = (x.to(ct) for x in (q, k, v, g, beta))
    if use_qk_l2norm_in_kernel:
        q, k = _l2norm_last(q), _l2norm_last(k)
    q = q.repeat_interleave(HV // H, dim=2) * scale
    k = k.repeat_interleave(HV // H, dim=2)
    o = torch.zeros(B, T, HV, V, dtype=ct, device=v.device)
    finals = []
    for n, (row, bos, eos) in enumerate(_sequence_bounds(cu_seqlens, B, T)):
        if initial_state is None:
            S = torch.zeros(HV, K, V, dtype=ct, device=v.device)
        else:
            S = initial_state[n].to(ct).clone()
        for start in range(bos, eos, chunk_size):
            end = min(start + chunk_size, eos)
            # per head: [HV, C, ...]
            qc, kc = q[row, start:end].transpose(0, 1), k[row, start:end].transpose(0, 1)
            vc = v[row, start:end].transpose(0, 1)
            bc = beta[row, start:end].transpose(0, 1)
            G = torch.cumsum(g[row, start:end].transpose(0, 1), dim=-1)  # [HV, C]
            C = end - start
            lower = torch.ones(C, C, dtype=torch.bool, device=v.device).tril(-1)
            # exp(G_t - G_s) only where s <= t, so exp never sees a positive exponent
            diff = G[:, :, None] - G[:, None, :]
            decay = torch.where(
                lower | torch.eye(C, dtype=torch.bool, device=v.device),
                diff,
                torch.full_like(diff, float("-inf")),
            ).exp()
            A = bc[:, :, None] * (kc @ kc.transpose(1, 2)) * decay * lower
            eye = torch.eye(C, dtype=ct, device=v.device).expand(HV, C, C)
            Tinv = torch.linalg.solve_triangular(eye + A, eye, upper=False, unitriangular=True)
            w = Tinv @ (bc[..., None] * G.exp()[..., None] * kc)
            u = Tinv @ (bc[..., None] * vc)
            U = u - w @ S
            attn = (qc @ kc.transpose(1, 2)) * decay  # decay is 0 above the diagonal
            oc = G.exp()[..., None] * (qc @ S) + attn @ U
            o[row, start:end] = oc.transpose(0, 1)
            G_last = G[:, -1]
            S = (
                G_last.exp()[:, None, None] * S
                + (kc * (G_last[:, None] - G).exp()[..., None]).transpose(1, 2) @ U
            )
        finals.append(S)
    final = torch.stack(finals).to(torch.float32) if output_final_state else None
    return o.to(v.dtype), final


# --- Decode / short sequences: the fused sigmoid-gating delta-rule update on a state pool -----


def _decode_gates(A_log, a, dt_bias, b, softplus_beta, softplus_threshold):
    """``g = -exp(A_log) * softplus(a + dt_bias)`` and ``beta = sigmoid(b)`` in fp32.

    softplus(x) = log(1 + exp(beta_sp * x)) / beta_sp where beta_sp * x <= threshold, else x.
    Shapes broadcast: a, b ``[..., HV]``; A_log, dt_bias ``[HV]``.
    """

    x = a.float() + dt_bias.float()
    bx = softplus_beta * x
    # the exp branch only where it is taken, so an overflow there cannot leak through where()
    sp = torch.where(
        bx <= softplus_threshold,
        torch.log(1.0 + torch.exp(bx.clamp(max=softplus_threshold))) / softplus_beta,
        x,
    )
    g = -torch.exp(A_log.float()) * sp
    beta = 1.0 / (1.0 + torch.exp(-b.float()))
    return g, beta


def _decode_qk(q, k, scale, use_qk_l2norm_in_kernel):
    """q, k in fp32, l2-normalised (``x / sqrt(sum(x**2) + 1e-6)``) when asked, q scaled."""

    q, k = q.float(), k.float()
    if use_qk_l2norm_in_kernel:
        q = q / torch.sqrt((q * q).sum(-1, keepdim=True) + 1e-6)
        k = k / torch.sqrt((k * k).sum(-1, keepdim=True) + 1e-6)
    return q * scale, k


def _decode_prepare(args):
    """Validate (the kernel's checks) and return sizes, per-token flat inputs and bounds."""

    check_softplus(args["softplus_beta"], args["softplus_threshold"])
    sizes = validate_gdn_args(
        args["q"],
        args["k"],
        args["v"],
        a=args["a"],
        b=args["b"],
        A_log=args["A_log"],
        dt_bias=args["dt_bias"],
        initial_state_source=args["initial_state_source"],
        initial_state_indices=args["initial_state_indices"],
        cu_seqlens=args["cu_seqlens"],
        scale=args["scale"],
        state_layout=args["state_layout"],
        debug=args["debug"],
    )
    steps = validate_intermediate_buffer(
        args["intermediate_states_buffer"],
        args["intermediate_state_indices"],
        args["cache_steps"],
        sizes,
        debug=args["debug"],
    )
    if args["cu_seqlens"] is None:
        bounds = [(n * sizes.T, (n + 1) * sizes.T) for n in range(sizes.N)]
    else:
        cu = [int(c) for c in args["cu_seqlens"].tolist()]
        bounds = [(cu[n], cu[n + 1]) for n in range(sizes.N)]
    nt, HV = sizes.num_tokens, sizes.HV
    g, beta = _decode_gates(
        args["A_log"],
        args["a"].reshape(nt, HV),
        args["dt_bias"],
        args["b"].reshape(nt, HV),
        args["softplus_beta"],
        args["softplus_threshold"],
    )
    q, k = _decode_qk(
        args["q"].reshape(nt, sizes.H, sizes.K),
        args["k"].reshape(nt, sizes.H, sizes.K),
        sizes.scale,
        args["use_qk_l2norm_in_kernel"],
    )
    v = args["v"].reshape(nt, HV, sizes.V).float()
    o = torch.zeros(nt, HV, sizes.V, dtype=torch.float32, device=v.device)
    return sizes, steps, bounds, g, beta, q, k, v, o


def fused_sigmoid_gating_delta_rule_update_native(
    A_log,
    a,
    dt_bias,
    softplus_beta,
    softplus_threshold,
    q,
    k,
    v,
    b,
    initial_state_source,
    initial_state_indices,
    scale=None,
    use_qk_l2norm_in_kernel=False,
    cu_seqlens=None,
    *,
    state_layout="kv",
    disable_state_update=False,
    intermediate_states_buffer=None,
    intermediate_state_indices=None,
    cache_steps=None,
    debug=False,
):
    """The decode operator as a plain loop over sequences, value heads and tokens (the spec).

    Same arguments, result and in-place pool/buffer writes as
    :func:`gated_delta.fused_sigmoid_gating_delta_rule_update`: q, k ``[B, T, H, K]``; v
    ``[B, T, HV, V]``; a, b ``[B*T, HV]`` or ``[B, T, HV]``; A_log, dt_bias ``[HV]``; pool
    ``[num_slots, HV, K, V]`` ("kv") or ``[num_slots, HV, V, K]`` ("vk"). Per token, in fp32::

        h = h * exp(g);  v' = (v - h^T k) * beta;  h = h + k v'^T;  o = h^T q

    Returns o ``[B, T, HV, V]`` in q's dtype.
    """

    args = dict(locals())
    sizes, steps, bounds, g, beta, q, k, v, o = _decode_prepare(args)
    pool, buf = initial_state_source, intermediate_states_buffer
    vk = sizes.layout == "vk"
    group = sizes.HV // sizes.H
    for n, (bos, eos) in enumerate(bounds):
        slot = int(initial_state_indices[n]) if pool is not None else -1
        cache = int(intermediate_state_indices[n]) if buf is not None else -1
        for hv in range(sizes.HV):
            hq = hv // group
            if slot >= 0:
                h = pool[slot, hv].float()
                h = h.t() if vk else h  # the math below works on [K, V]
            else:
                h = torch.zeros(sizes.K, sizes.V, dtype=torch.float32, device=v.device)
            for t in range(bos, eos):
                h = h * torch.exp(g[t, hv])
                v_new = (v[t, hv] - (h * k[t, hq][:, None]).sum(0)) * beta[t, hv]
                h = h + k[t, hq][:, None] * v_new[None, :]
                o[t, hv] = (h * q[t, hq][:, None]).sum(0)
                if cache >= 0 and t - bos < steps:
                    buf[cache, t - bos, hv] = (h.t() if vk else h).to(buf.dtype)
            if slot >= 0 and not disable_state_update and eos > bos:
                pool[slot, hv] = (h.t() if vk else h).to(pool.dtype)
    return o.reshape(sizes.B, sizes.T, sizes.HV, sizes.V).to(q.dtype)


def fused_sigmoid_gating_delta_rule_update_native_optimized(
    A_log,
    a,
    dt_bias,
    softplus_beta,
    softplus_threshold,
    q,
    k,
    v,
    b,
    initial_state_source,
    initial_state_indices,
    scale=None,
    use_qk_l2norm_in_kernel=False,
    cu_seqlens=None,
    *,
    state_layout="kv",
    disable_state_update=False,
    intermediate_states_buffer=None,
    intermediate_state_indices=None,
    cache_steps=None,
    debug=False,
):
    """The same operator as :func:`fused_sigmoid_gating_delta_rule_update_native`,
    vectorised over value heads (GQA included) and, in fixed-length mode, over sequences:
    the loop runs over tokens only. Same arguments, result and in-place writes."""

    args = dict(locals())
    sizes, steps, bounds, g, beta, q, k, v, o = _decode_prepare(args)
    pool, buf = initial_state_source, intermediate_states_buffer
    vk = sizes.layout == "vk"
    group = sizes.HV // sizes.H
    q = q.repeat_interleave(group, dim=1)  # [tokens, HV, K]: value head hv reads hv // group
    k = k.repeat_interleave(group, dim=1)
    dev = v.device
    # groups of sequences advanced together: all of them in fixed-length mode, one by one
    # in varlen mode (their lengths differ)
    if cu_seqlens is None:
        groups = [(torch.arange(sizes.N, device=dev), sizes.T)] if sizes.T > 0 else []
        starts = torch.arange(sizes.N, device=dev) * sizes.T
    else:
        groups = [(torch.tensor([n], device=dev), e - s) for n, (s, e) in enumerate(bounds)]
        starts = torch.tensor([s for s, _ in bounds], device=dev, dtype=torch.long)
    for seqs, length in groups:
        if length == 0:
            continue
        m = seqs.numel()
        h = torch.zeros(m, sizes.HV, sizes.K, sizes.V, dtype=torch.float32, device=dev)
        if pool is not None:
            slots = initial_state_indices.to(dev, torch.long)[seqs]
            has = slots >= 0
            h0 = pool[slots.clamp(min=0)].float()
            h0 = h0.transpose(-1, -2) if vk else h0
            h = torch.where(has[:, None, None, None], h0, h)
        if buf is not None:
            caches = intermediate_state_indices.to(dev, torch.long)[seqs]
        for t in range(length):
            tok = starts[seqs] + t
            h = h * torch.exp(g[tok])[:, :, None, None]
            kt, qt = k[tok], q[tok]
            v_new = (v[tok] - torch.einsum("nhkv,nhk->nhv", h, kt)) * beta[tok][:, :, None]
            h = h + kt[..., :, None] * v_new[..., None, :]
            o[tok] = torch.einsum("nhkv,nhk->nhv", h, qt)
            if buf is not None and t < steps:
                ok = caches >= 0
                hs = (h.transpose(-1, -2) if vk else h)[ok]
                buf[caches[ok], t] = hs.to(buf.dtype)
        if pool is not None and not disable_state_update:
            hs = (h.transpose(-1, -2) if vk else h)[has]
            pool[slots[has]] = hs.to(pool.dtype)
    return o.reshape(sizes.B, sizes.T, sizes.HV, sizes.V).to(q.dtype)
