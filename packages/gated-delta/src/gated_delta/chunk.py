"""Chunked prefill: the gated delta rule over whole sequences, 64 tokens at a time.

``chunk_gated_delta_rule`` takes the gates precomputed (FLA's signature);
``fused_sigmoid_gating_delta_rule_prefill`` takes the decode operator's arguments (gates
computed on the GPU from A_log, a, dt_bias, b) and reads and writes the same state pool,
so an engine calls it for prompts and ``fused_sigmoid_gating_delta_rule_update`` for the
tokens after. Both run two main kernels (see ``kernels/chunk.py``), plus one for the q
norms with l2norm and one for the prefill's gates, and never synchronise with the host.
"""

from __future__ import annotations

import torch

from tri_shared.checks import FLOAT_DTYPES, check_choice, check_tensor
from tri_shared.dots import ieee_dots
from tri_shared.launch import cdiv, fast_launcher, make_grid, next_power_of_2

from ._validate import GDNSizes, check_softplus, validate_gdn_args
from .kernels.chunk import (
    chunk_prepare_kernel,
    chunk_state_output_kernel,
    rnorm_rows_kernel,
    sigmoid_gates_kernel,
)

__all__ = ["chunk_gated_delta_rule", "fused_sigmoid_gating_delta_rule_prefill"]

CHUNK_SIZE = 64
"""Tokens per chunk; the triangular solve works on 4 diagonal blocks of 16."""


def _contiguous(x: torch.Tensor | None) -> torch.Tensor | None:
    # read-only inputs: a copy loses nothing (no-op when already contiguous)
    return None if x is None else x.contiguous()


def _chunk_map(cu: torch.Tensor, N: int, num_tokens: int) -> tuple[torch.Tensor, ...]:
    """Varlen: the sequence of every chunk and each sequence's first chunk, computed on the
    device without a host sync (a few tiny ops).

    The grid is an upper bound, ``cdiv(num_tokens, C) + N`` (each sequence adds at most one
    partial chunk); chunks past the real count get sequence N and return at once.
    """
    C = CHUNK_SIZE
    bound = cdiv(num_tokens, C) + N
    n_chunks = torch.div(cu[1:] - cu[:-1] + (C - 1), C, rounding_mode="floor")
    ends = torch.cumsum(n_chunks, 0)
    ids = torch.arange(bound, device=cu.device, dtype=ends.dtype)
    chunk_seq = torch.searchsorted(ends, ids, right=True)
    return chunk_seq, ends - n_chunks, bound


TUNING: dict[str, tuple[int, int, int] | int | None] = {
    "state": None,
    "prepare_warps": 2,
}
"""Launch settings the benchmark sweeps: ``state`` = ``(BLOCK_V, num_warps, num_stages)`` of
the sequential kernel (None: the default below), ``prepare_warps`` of the chunk kernel."""


def _state_config(K: int, V: int) -> tuple[int, int, int]:
    """``(BLOCK_V, num_warps, num_stages)`` of the sequential kernel.

    At 4 x 8192 tokens, K = V = 128, on an H200 (BENCHMARKS.md): BLOCK_V = 64 on 4 warps,
    so the 128 sequence-heads become 256 programs, two per SM (8 warps or BLOCK_V = 128
    leave one per SM, BLOCK_V = 32 cannot fit four); and no software pipelining
    (num_stages = 1: 1.44 ms against 1.81 ms with 2). Small heads (K <= 64) keep
    num_stages = 2: with 1, Triton 3.6 generated an out-of-range shared-memory access in
    this kernel at K = V = 32 (fp16, compute-sanitizer), which 2 does not.
    """
    config = TUNING["state"]
    if config is not None:
        return config  # type: ignore[return-value]
    bk = max(16, next_power_of_2(K))
    bv = min(64, max(16, next_power_of_2(V)))
    return bv, 8 if bk * bv >= 256 * 64 else 4, 1 if bk >= 128 else 2


def _chunk_forward(
    sizes: GDNSizes,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: torch.Tensor | None,
    *,
    g: torch.Tensor | None = None,
    beta: torch.Tensor | None = None,
    a: torch.Tensor | None = None,
    b: torch.Tensor | None = None,
    A_log: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
    softplus_beta: float = 1.0,
    softplus_threshold: float = 20.0,
    h0: torch.Tensor | None,
    ht: torch.Tensor | None,
    indices: torch.Tensor | None,
    state_vk: bool,
    store_empty: bool,
    use_qk_l2norm: bool,
) -> torch.Tensor:
    """Launch the kernels (see the module docstring); returns o ``[B, T, HV, V]`` in q's dtype."""
    B, T, H, HV, K, V, N = sizes.B, sizes.T, sizes.H, sizes.HV, sizes.K, sizes.V, sizes.N
    dev = q.device
    o = torch.empty(B, T, HV, V, dtype=q.dtype, device=dev)
    if N == 0 or sizes.num_tokens == 0:
        return o.zero_()  # as the decode op: nothing to compute, a defined result
    q, k, v = _contiguous(q), _contiguous(k), _contiguous(v)
    g, beta, a, b = _contiguous(g), _contiguous(beta), _contiguous(a), _contiguous(b)
    A_log, dt_bias = _contiguous(A_log), _contiguous(dt_bias)
    nt = sizes.num_tokens
    varlen = cu_seqlens is not None
    if varlen:
        chunk_seq, chunk_first, bound = _chunk_map(cu_seqlens, N, nt)
    else:
        chunk_seq = chunk_first = None
        bound = N * cdiv(T, CHUNK_SIZE)
    ieee = ieee_dots(q.dtype)
    BK = max(16, next_power_of_2(K))
    # T in the input dtype (a tensor-core operand of the next kernel), G in fp32
    t_rows = torch.empty(nt, HV, CHUNK_SIZE, dtype=q.dtype, device=dev)
    Gc = torch.empty(nt, HV, dtype=torch.float32, device=dev)
    if a is not None:
        # the decode op's gating, once per token and head (8 bytes each), for the kernels
        g = torch.empty(nt, HV, dtype=torch.float32, device=dev)
        beta = torch.empty_like(g)
        fast_launcher(sigmoid_gates_kernel)[make_grid(cdiv(nt * HV, 1024))](
            a,
            b,
            A_log,
            dt_bias,
            g,
            beta,
            nt * HV,
            float(softplus_beta),
            float(softplus_threshold),
            HV=HV,
            BLOCK=1024,
            num_warps=4,
        )
    # inverse l2 norms of the q and k rows, for the sequential kernel
    q_rnorm = k_rnorm = None
    if use_qk_l2norm:
        q_rnorm = torch.empty(nt, H, dtype=torch.float32, device=dev)
        k_rnorm = torch.empty(nt, H, dtype=torch.float32, device=dev)
        fast_launcher(rnorm_rows_kernel)[make_grid(cdiv(nt * H, 32))](
            q, q_rnorm, nt * H, K=K, BLOCK_ROWS=32, BK=BK, num_warps=4
        )
    if bound > 0:
        fast_launcher(chunk_prepare_kernel)[make_grid(bound * HV)](
            k,
            g,
            beta,
            chunk_seq,
            chunk_first,
            cu_seqlens,
            N,
            T,
            cdiv(T, CHUNK_SIZE),
            t_rows,
            Gc,
            k_rnorm,
            H=H,
            HV=HV,
            K=K,
            BK=BK,
            USE_L2NORM=use_qk_l2norm,
            IS_VARLEN=varlen,
            IEEE=ieee,
            num_warps=int(TUNING["prepare_warps"]),  # type: ignore[arg-type]
        )
    bv, warps, stages = _state_config(K, V)
    fast_launcher(chunk_state_output_kernel)[make_grid(N * HV * cdiv(V, bv))](
        q,
        k,
        v,
        t_rows,
        Gc,
        beta,
        q_rnorm,
        k_rnorm,
        o,
        h0,
        ht,
        indices,
        cu_seqlens,
        T,
        sizes.scale,
        H=H,
        HV=HV,
        K=K,
        V=V,
        BT=CHUNK_SIZE,
        BK=BK,
        BV=bv,
        HAS_H0=h0 is not None,
        STORE_HT=ht is not None,
        USE_INDICES=indices is not None,
        STATE_VK=state_vk,
        USE_L2NORM=use_qk_l2norm,
        STORE_EMPTY=store_empty,
        IS_VARLEN=varlen,
        IEEE=ieee,
        num_warps=warps,
        num_stages=stages,
    )
    return o


def chunk_gated_delta_rule(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    cu_seqlens: torch.Tensor | None = None,
    use_qk_l2norm_in_kernel: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Gated delta rule over whole sequences with precomputed gates (chunked, C = 64).

    Args:
        q, k: ``[B, T, H, K]`` fp16/bf16/fp32 (same dtype); v ``[B, T, HV, V]``, HV a
            multiple of H (value head hv reads q/k head ``hv // (HV // H)``).
        g: log decay ``[B, T, HV]`` (or ``[B*T, HV]``), <= 0; beta: ``[B, T, HV]``.
        scale: query scale, default ``K ** -0.5``.
        initial_state: ``[N, HV, K, V]`` (any float dtype) or None for zeros.
        output_final_state: also return the state after each sequence.
        cu_seqlens: ``[N + 1]`` int32/int64 sequence starts with B = 1 (varlen), else N = B.
        use_qk_l2norm_in_kernel: l2-normalise q and k per head first.

    Returns:
        o ``[B, T, HV, V]`` in q's dtype, and final_state ``[N, HV, K, V]`` fp32 or None.

    Raises TypeError / ValueError naming the argument on a bad dtype, shape or device.
    """
    sizes = validate_gdn_args(q, k, v, g=g, beta=beta, cu_seqlens=cu_seqlens, scale=scale)
    if g is None or beta is None:
        name = "g" if g is None else "beta"
        raise TypeError(f"{name}: expected a [B, T, HV] tensor, got None")
    if initial_state is not None:
        check_tensor(
            "initial_state",
            initial_state,
            shape=(sizes.N, sizes.HV, sizes.K, sizes.V),
            dtypes=FLOAT_DTYPES,
            device=sizes.device,
        )
    final = None
    if output_final_state:
        final = torch.empty(
            sizes.N, sizes.HV, sizes.K, sizes.V, dtype=torch.float32, device=q.device
        )
    o = _chunk_forward(
        sizes,
        q,
        k,
        v,
        cu_seqlens,
        g=g,
        beta=beta,
        h0=_contiguous(initial_state),
        ht=final,
        indices=None,
        state_vk=False,
        store_empty=True,
        use_qk_l2norm=bool(use_qk_l2norm_in_kernel),
    )
    return o, final


def fused_sigmoid_gating_delta_rule_prefill(
    A_log: torch.Tensor,
    a: torch.Tensor,
    dt_bias: torch.Tensor,
    softplus_beta: float,
    softplus_threshold: float,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    b: torch.Tensor,
    initial_state_source: torch.Tensor | None,
    initial_state_indices: torch.Tensor | None,
    scale: float | None = None,
    use_qk_l2norm_in_kernel: bool = False,
    cu_seqlens: torch.Tensor | None = None,
    *,
    state_layout: str = "kv",
    disable_state_update: bool = False,
    chunk_size: int = 64,
    debug: bool = False,
) -> torch.Tensor:
    """The decode operator's computation, chunked: for prompts (long sequences).

    Same arguments, validation, result and pool updates as
    :func:`gated_delta.fused_sigmoid_gating_delta_rule_update`: q, k ``[B, T, H, K]``;
    v ``[B, T, HV, V]``; a, b ``[B*T, HV]`` or ``[B, T, HV]``; A_log, dt_bias ``[HV]``;
    gates ``g = -exp(A_log) * softplus(a + dt_bias)``, ``beta = sigmoid(b)`` computed in
    the kernel. The pool ``[num_slots, HV, K, V]`` ("kv") or ``[num_slots, HV, V, K]``
    ("vk"), any float dtype, is read at ``initial_state_indices[n]`` and written there after
    the sequence (negative index: zero state, no write; empty sequence or
    ``disable_state_update``: slot untouched). ``chunk_size`` must be 64. ``debug=True`` adds
    checks that synchronise with the device.

    Returns o ``[B, T, HV, V]`` in q's dtype.
    """
    check_choice("chunk_size", chunk_size, (CHUNK_SIZE,))
    check_softplus(softplus_beta, softplus_threshold)
    for name, val in (("a", a), ("b", b), ("A_log", A_log), ("dt_bias", dt_bias)):
        if val is None:
            raise TypeError(f"{name}: expected a torch.Tensor, got None")
    sizes = validate_gdn_args(
        q,
        k,
        v,
        a=a,
        b=b,
        A_log=A_log,
        dt_bias=dt_bias,
        initial_state_source=initial_state_source,
        initial_state_indices=initial_state_indices,
        cu_seqlens=cu_seqlens,
        scale=scale,
        state_layout=state_layout,
        debug=debug,
    )
    pool = initial_state_source
    return _chunk_forward(
        sizes,
        q,
        k,
        v,
        cu_seqlens,
        a=a,
        b=b,
        A_log=A_log,
        dt_bias=dt_bias,
        softplus_beta=softplus_beta,
        softplus_threshold=softplus_threshold,
        h0=pool,
        ht=None if disable_state_update else pool,
        indices=initial_state_indices,
        state_vk=state_layout == "vk",
        store_empty=False,
        use_qk_l2norm=bool(use_qk_l2norm_in_kernel),
    )
