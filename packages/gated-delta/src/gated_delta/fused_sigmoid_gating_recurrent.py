"""``fused_sigmoid_gating_delta_rule_update``: the gated delta-rule recurrence for decode and
short sequences, gating fused in, on a state pool updated in place.

SGLang's positional signature (an engine can swap it in) plus keyword-only extras: the
K-contiguous "vk" pool layout, speculative-decoding verify (per-step state buffer, pool left
unchanged) and a ``debug`` mode with checks that synchronise with the device.
"""

from __future__ import annotations

import torch

from tri_shared.launch import cdiv, fast_launcher, make_grid, next_power_of_2

from ._validate import check_softplus, validate_gdn_args, validate_intermediate_buffer
from .kernels.recurrent import fused_gdn_update_kernel

__all__ = ["fused_sigmoid_gating_delta_rule_update"]


def _last_dim_contiguous(x: torch.Tensor) -> torch.Tensor:
    # read-only inputs: a copy loses nothing, and the kernel takes any other strides
    return x if x.stride(-1) == 1 or x.shape[-1] == 1 else x.contiguous()


def _token_head_3d(x: torch.Tensor, B: int, T: int) -> torch.Tensor:
    """``[B*T, HV]`` or ``[B, T, HV]`` as a ``[B, T, HV]`` view (splitting dim 0 never copies)."""
    x = x.unflatten(0, (B, T)) if x.dim() == 2 else x
    return _last_dim_contiguous(x)


def pick_config(
    n_heads_total: int, K: int, V: int, layout: str = "kv", state_bytes: int = 4
) -> tuple[int, int]:
    """``(BLOCK_V, num_warps)`` for ``n_heads_total = N * HV`` sequence-heads.

    From a sweep on an H200 at the Qwen3-Next shape (K = V = 128, see BENCHMARKS.md): few
    warps, each thread holding 64-128 state elements, are fastest (more bytes in flight per
    thread, cheap reductions). fp32 "kv" (V contiguous) wants wide V blocks once the batch
    fills the GPU (64 at N·HV >= 1024, else 32 for more programs); fp32 "vk" (K contiguous,
    rows of 512 B already) wants narrow V blocks (8 from N·HV >= 4096, else 16) on one warp;
    2-byte pools ("kv") do best with 32-wide V blocks on one warp.
    """
    block_k = next_power_of_2(K)
    full_v = next_power_of_2(V)
    if layout == "kv" and state_bytes < 4:
        return max(1, min(32, full_v)), 1
    if layout == "kv":
        block_v = 64 if n_heads_total >= 1024 else 32
    else:
        block_v = 8 if n_heads_total >= 4096 else 16
    block_v = max(1, min(block_v, full_v))
    # about 128 state elements per thread (64 lanes of 2 warps at K = 128, BLOCK_V = 64)
    num_warps = max(1, min(8, block_k * block_v // (32 * 128)))
    return block_v, num_warps


def launch_grid(N: int, HV: int, V: int, block_v: int, *, flat: bool = True) -> tuple[int, ...]:
    """The launch grid, inside CUDA's limits for any batch (``make_grid`` raises otherwise).

    ``flat`` (the default): one axis of ``N * HV * cdiv(V, block_v)`` programs, V blocks
    fastest, up to 2**31 - 1 programs. Else ``(N * HV, cdiv(V, block_v))``: sequence-heads on
    axis 0, the few V blocks on axis 1 (which stops at 65535).
    """
    if flat:
        return make_grid(N * HV * cdiv(V, block_v))
    return make_grid(N * HV, cdiv(V, block_v))


def fused_sigmoid_gating_delta_rule_update(
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
    intermediate_states_buffer: torch.Tensor | None = None,
    intermediate_state_indices: torch.Tensor | None = None,
    cache_steps: int | None = None,
    debug: bool = False,
) -> torch.Tensor:
    """One gated delta-rule step per token, gating fused in, state pool updated in place.

    Shapes: q, k ``[B, T, H, K]``; v ``[B, T, HV, V]`` (HV a multiple of H, K and V <= 256);
    a, b ``[B*T, HV]`` or ``[B, T, HV]``; A_log, dt_bias ``[HV]``; initial_state_source
    ``[num_slots, HV, K, V]`` ("kv") or ``[num_slots, HV, V, K]`` ("vk"), fp32/bf16/fp16,
    contiguous; initial_state_indices ``[N]`` int32/int64 (negative: start from zeros, write
    nothing); cu_seqlens ``[N+1]`` with B = 1, else N = B.

    Per sequence and value head hv (q/k head ``hv // (HV // H)``), in fp32, per token::

        g = -exp(A_log) * softplus(a + dt_bias);  beta = sigmoid(b)
        q, k = l2norm(q), l2norm(k) (optional);  q = q * scale
        h = h * exp(g);  v' = (v - h^T k) * beta;  h = h + k v'^T;  o = h^T q

    The final state goes back to ``pool[slot]`` unless ``disable_state_update``; with
    ``intermediate_states_buffer`` ``[num_cache, cache_steps, *state]`` the state after token
    t goes to ``buffer[intermediate_state_indices[n], t]``. Returns o ``[B, T, HV, V]`` in
    q's dtype. No host synchronisation unless ``debug=True`` (extra checks on cu_seqlens and
    indices), so the call captures into a CUDA graph.
    """
    return _forward(
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
        scale,
        use_qk_l2norm_in_kernel,
        cu_seqlens,
        state_layout=state_layout,
        disable_state_update=disable_state_update,
        intermediate_states_buffer=intermediate_states_buffer,
        intermediate_state_indices=intermediate_state_indices,
        cache_steps=cache_steps,
        debug=debug,
    )


def _forward(
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
    block_v: int | None = None,
    num_warps: int | None = None,
    num_stages: int = 1,
    stream_state: bool = False,
    flat_grid: bool = True,
) -> torch.Tensor:
    """The launch behind the public function; ``block_v``/``num_warps``/``stream_state``
    (L2 eviction hints on the state)/``flat_grid`` override the defaults (benchmark
    sweeps)."""
    check_softplus(softplus_beta, softplus_threshold)
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
    # a and b are required by this operator (validate_gdn_args accepts None for others)
    for name, val in (("a", a), ("b", b), ("A_log", A_log), ("dt_bias", dt_bias)):
        if val is None:
            raise TypeError(f"{name}: expected a torch.Tensor, got None")
    steps = validate_intermediate_buffer(
        intermediate_states_buffer,
        intermediate_state_indices,
        cache_steps,
        sizes,
        debug=debug,
    )
    B, T, H, HV, K, V, N = sizes.B, sizes.T, sizes.H, sizes.HV, sizes.K, sizes.V, sizes.N
    o = torch.empty((B, T, HV, V), dtype=q.dtype, device=q.device)
    if N == 0 or sizes.num_tokens == 0:
        return o.zero_()

    q, k, v = _last_dim_contiguous(q), _last_dim_contiguous(k), _last_dim_contiguous(v)
    a3, b3 = _token_head_3d(a, B, T), _token_head_3d(b, B, T)
    A_log, dt_bias = A_log.contiguous(), dt_bias.contiguous()
    has_state = initial_state_source is not None
    has_buf = intermediate_states_buffer is not None
    pool = initial_state_source if has_state else o
    pool_idx = initial_state_indices.contiguous() if has_state else o
    buf = intermediate_states_buffer if has_buf else o
    buf_idx = intermediate_state_indices.contiguous() if has_buf else o
    cu = cu_seqlens.contiguous() if cu_seqlens is not None else o

    state_bytes = initial_state_source.element_size() if has_state else 4
    auto_bv, auto_warps = pick_config(N * HV, K, V, state_layout, state_bytes)
    block_v = auto_bv if block_v is None else block_v
    num_warps = auto_warps if num_warps is None else num_warps
    red = 0 if state_layout == "kv" else 1
    grid = launch_grid(N, HV, V, block_v, flat=flat_grid)
    fast_launcher(fused_gdn_update_kernel)[grid](
        A_log,
        a3,
        dt_bias,
        q,
        k,
        v,
        b3,
        o,
        pool,
        pool_idx,
        buf,
        buf_idx,
        cu,
        float(softplus_beta),
        float(softplus_threshold),
        sizes.scale,
        T,
        steps,
        q.stride(0),
        q.stride(1),
        q.stride(2),
        k.stride(0),
        k.stride(1),
        k.stride(2),
        v.stride(0),
        v.stride(1),
        v.stride(2),
        a3.stride(0),
        a3.stride(1),
        b3.stride(0),
        b3.stride(1),
        pool.stride(0) if has_state else 0,
        buf.stride(0) if has_buf else 0,
        buf.stride(1) if has_buf else 0,
        H=H,
        HV=HV,
        K=K,
        V=V,
        BLOCK_K=next_power_of_2(K),
        BLOCK_V=block_v,
        RED=red,
        KEEP=1 - red,
        IS_VARLEN=sizes.is_varlen,
        HAS_STATE=has_state,
        UPDATE_STATE=has_state and not disable_state_update,
        HAS_BUFFER=has_buf,
        USE_L2NORM=bool(use_qk_l2norm_in_kernel),
        STREAM_STATE=stream_state,
        FLAT_GRID=flat_grid,
        ONE_TOKEN=not sizes.is_varlen and T == 1,
        num_warps=num_warps,
        num_stages=num_stages,
    )
    return o
