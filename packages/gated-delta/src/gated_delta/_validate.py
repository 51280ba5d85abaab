"""Argument checks shared by the gated-delta operators (decode update and chunked prefill).

:func:`validate_gdn_args` checks the arguments every operator of the package takes (q, k, v,
the per-token gates, the state pool and its indices, cu_seqlens, scale, state_layout) and
returns the derived sizes as a :class:`GDNSizes`. Each failure raises ``TypeError`` (kind or
dtype) or ``ValueError`` (shape, value, device, contiguity) whose message starts with the
argument's name. Checks that need a host synchronisation run only with ``debug=True``.

Conventions (the seeds' and SGLang's):

- q, k ``[B, T, H, K]``; v ``[B, T, HV, V]``; HV a multiple of H (GQA: value head ``hv``
  reads q/k head ``hv // (HV // H)``).
- per-token, per-value-head tensors (a, b, or a prefill's g and beta) ``[B*T, HV]`` or
  ``[B, T, HV]``; A_log, dt_bias ``[HV]``.
- ``cu_seqlens`` ``[N+1]`` with B = 1 (varlen); otherwise N = B sequences of T tokens.
- state pool ``[num_slots, HV, K, V]`` for ``state_layout="kv"`` (V contiguous) or
  ``[num_slots, HV, V, K]`` for ``"vk"`` (K contiguous); indices ``[N]``, int32/int64,
  ``-1`` (any negative) for "no slot". The pool is written in place, so it must be
  contiguous: it is never copied.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tri_shared.checks import (
    FLOAT_DTYPES,
    INT_DTYPES,
    check_choice,
    check_int,
    check_int_tensor,
    check_positive,
    check_same_device,
    check_same_dtype,
    check_tensor,
)

STATE_LAYOUTS = ("kv", "vk")
MAX_HEAD_DIM = 256
"""Largest K and V: the kernels keep a full ``[K, BLOCK_V]`` state tile in registers."""


@dataclass(frozen=True)
class GDNSizes:
    """Sizes derived from validated gated-delta arguments.

    ``B, T`` the leading dims of q; ``N`` the number of sequences (``len(cu_seqlens) - 1``
    in varlen mode, else B); ``num_tokens = B * T``; ``num_slots`` the pool's first dim
    (0 without a pool); ``scale`` the query scale actually used (``K ** -0.5`` by default).
    """

    B: int
    T: int
    H: int
    HV: int
    K: int
    V: int
    N: int
    num_tokens: int
    is_varlen: bool
    layout: str
    num_slots: int
    scale: float
    device: torch.device

    def state_shape(self) -> tuple[int, int, int]:
        """Per-slot state shape ``(HV, K, V)`` for "kv" or ``(HV, V, K)`` for "vk"."""
        return state_shape(self.HV, self.K, self.V, self.layout)


def state_shape(HV: int, K: int, V: int, layout: str) -> tuple[int, int, int]:
    """Per-slot state shape in the given layout."""
    return (HV, K, V) if layout == "kv" else (HV, V, K)


def check_token_head_tensor(name: str, t: torch.Tensor | None, sizes: GDNSizes) -> None:
    """A per-token, per-value-head tensor: ``[B*T, HV]`` or ``[B, T, HV]``, floating point."""
    if t is None:
        return
    check_tensor(name, t, dtypes=FLOAT_DTYPES)
    ok = (t.dim() == 2 and tuple(t.shape) == (sizes.num_tokens, sizes.HV)) or (
        t.dim() == 3 and tuple(t.shape) == (sizes.B, sizes.T, sizes.HV)
    )
    if not ok:
        raise ValueError(
            f"{name}: expected shape [{sizes.num_tokens}, {sizes.HV}] ([B*T, HV]) or "
            f"[{sizes.B}, {sizes.T}, {sizes.HV}] ([B, T, HV]), got {list(t.shape)}"
        )


def _check_pool(
    name: str, pool: torch.Tensor, lead: tuple[int | None, ...], sizes_hkv: tuple[int, ...]
) -> None:
    check_tensor(name, pool, dtypes=FLOAT_DTYPES, shape=(*lead, *sizes_hkv), contiguous=True)


def validate_gdn_args(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    a: torch.Tensor | None = None,
    b: torch.Tensor | None = None,
    A_log: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
    g: torch.Tensor | None = None,
    beta: torch.Tensor | None = None,
    initial_state_source: torch.Tensor | None = None,
    initial_state_indices: torch.Tensor | None = None,
    cu_seqlens: torch.Tensor | None = None,
    scale: float | None = None,
    state_layout: str = "kv",
    debug: bool = False,
) -> GDNSizes:
    """Check the arguments common to the gated-delta operators; return their sizes.

    Any of the optional tensors may be None (not used by the calling operator). ``a``, ``b``,
    ``g``, ``beta``: ``[B*T, HV]`` or ``[B, T, HV]``; ``A_log``, ``dt_bias``: ``[HV]``.
    ``initial_state_source`` and ``initial_state_indices`` come together or not at all.
    With ``debug=True`` (synchronises with the device) it also checks that cu_seqlens starts
    at 0, is non-decreasing and ends at most at T, that every index lies in
    ``[-1, num_slots)`` and that no slot is used by two sequences.
    """
    check_choice("state_layout", state_layout, STATE_LAYOUTS)
    check_tensor("q", q, ndim=4, dtypes=FLOAT_DTYPES)
    check_tensor("k", k, ndim=4, dtypes=FLOAT_DTYPES)
    check_tensor("v", v, ndim=4, dtypes=FLOAT_DTYPES)
    if k.shape != q.shape:
        raise ValueError(f"k: expected the shape of q {list(q.shape)}, got {list(k.shape)}")
    check_same_dtype(q=q, k=k)
    B, T, H, K = (int(s) for s in q.shape)
    HV, V = int(v.shape[2]), int(v.shape[3])
    if tuple(v.shape[:2]) != (B, T):
        raise ValueError(f"v: expected shape [{B}, {T}, HV, V] (B and T of q), got {list(v.shape)}")
    if H == 0 or HV == 0 or HV % H != 0:
        raise ValueError(
            f"v: expected a number of value heads HV that is a positive multiple of the "
            f"q/k heads H = {H}, got HV = {HV}"
        )
    if not 1 <= K <= MAX_HEAD_DIM:
        raise ValueError(f"q: expected head dim K in [1, {MAX_HEAD_DIM}], got K = {K}")
    if not 1 <= V <= MAX_HEAD_DIM:
        raise ValueError(f"v: expected head dim V in [1, {MAX_HEAD_DIM}], got V = {V}")

    device = check_same_device(
        q=q,
        k=k,
        v=v,
        a=a,
        b=b,
        A_log=A_log,
        dt_bias=dt_bias,
        g=g,
        beta=beta,
        initial_state_source=initial_state_source,
        initial_state_indices=initial_state_indices,
        cu_seqlens=cu_seqlens,
    )

    is_varlen = cu_seqlens is not None
    if is_varlen:
        check_int_tensor("cu_seqlens", cu_seqlens, ndim=1)
        if cu_seqlens.shape[0] < 1:
            raise ValueError("cu_seqlens: expected shape [N+1] with N >= 0, got an empty tensor")
        if B != 1:
            raise ValueError(
                f"cu_seqlens: varlen mode packs all sequences in one row, expected B = 1 "
                f"(q of shape [1, total_tokens, H, K]), got B = {B}"
            )
        N = int(cu_seqlens.shape[0]) - 1
    else:
        N = B

    if scale is None:
        scale = K**-0.5
    else:
        check_positive("scale", scale)
        scale = float(scale)

    num_slots = 0
    if (initial_state_source is None) != (initial_state_indices is None):
        missing = (
            "initial_state_indices" if initial_state_indices is None else "initial_state_source"
        )
        raise ValueError(
            f"{missing}: initial_state_source and initial_state_indices come together; "
            f"got one of them without the other"
        )
    sizes = GDNSizes(B, T, H, HV, K, V, N, B * T, is_varlen, state_layout, 0, scale, device)
    if initial_state_source is not None:
        _check_pool("initial_state_source", initial_state_source, (None,), sizes.state_shape())
        num_slots = int(initial_state_source.shape[0])
        check_int_tensor("initial_state_indices", initial_state_indices, shape=(N,))
        sizes = GDNSizes(
            B, T, H, HV, K, V, N, B * T, is_varlen, state_layout, num_slots, scale, device
        )

    for name, t in (("a", a), ("b", b), ("g", g), ("beta", beta)):
        check_token_head_tensor(name, t, sizes)
    for name, t in (("A_log", A_log), ("dt_bias", dt_bias)):
        if t is not None:
            check_tensor(name, t, shape=(HV,), dtypes=FLOAT_DTYPES)

    if debug:
        if is_varlen:
            debug_check_cu_seqlens(cu_seqlens, T)
        if initial_state_indices is not None:
            debug_check_indices(
                "initial_state_indices", initial_state_indices, num_slots, distinct=True
            )
    return sizes


def check_softplus(softplus_beta: float, softplus_threshold: float) -> None:
    """softplus_beta a number > 0 (it divides), softplus_threshold a number."""
    check_positive("softplus_beta", softplus_beta)
    if isinstance(softplus_threshold, bool) or not isinstance(softplus_threshold, (int, float)):
        raise TypeError(
            f"softplus_threshold: expected a number, got {type(softplus_threshold).__name__}"
        )


def validate_intermediate_buffer(
    buffer: torch.Tensor | None,
    indices: torch.Tensor | None,
    cache_steps: int | None,
    sizes: GDNSizes,
    *,
    debug: bool = False,
) -> int:
    """Check a speculative-decoding buffer ``[num_cache, cache_steps, *state_shape]`` and its
    indices ``[N]``; return the number of steps that are written (0 without a buffer).

    ``cache_steps`` defaults to ``buffer.shape[1]`` and may not exceed it. In fixed-length
    mode every sequence has T tokens, so ``cache_steps >= T`` is required; in varlen mode
    tokens past ``cache_steps`` are not recorded (``debug=True`` checks that none exist).
    """
    if buffer is None:
        if indices is not None:
            raise ValueError(
                "intermediate_states_buffer: intermediate_state_indices was given without a buffer"
            )
        return 0
    if indices is None:
        raise ValueError(
            "intermediate_state_indices: expected a [N] index tensor with "
            "intermediate_states_buffer, got None"
        )
    check_tensor(
        "intermediate_states_buffer",
        buffer,
        dtypes=FLOAT_DTYPES,
        shape=(None, None, *sizes.state_shape()),
        device=sizes.device,
        contiguous=True,
    )
    check_int_tensor("intermediate_state_indices", indices, shape=(sizes.N,), device=sizes.device)
    steps = int(buffer.shape[1])
    if cache_steps is not None:
        check_int("cache_steps", cache_steps, min_value=0, max_value=steps)
        steps = cache_steps
    if not sizes.is_varlen and steps < sizes.T:
        raise ValueError(
            f"intermediate_states_buffer: expected cache_steps >= T = {sizes.T} (one state per "
            f"token), got cache_steps = {steps} (buffer shape {list(buffer.shape)})"
        )
    if debug:
        debug_check_indices(
            "intermediate_state_indices", indices, int(buffer.shape[0]), distinct=True
        )
    return steps


def debug_check_cu_seqlens(cu_seqlens: torch.Tensor, total_tokens: int) -> None:
    """Host-side check (synchronises): starts at 0, non-decreasing, last entry <= tokens."""
    vals = cu_seqlens.detach().to("cpu", torch.int64)
    if vals.numel() == 0:
        return
    if int(vals[0]) != 0:
        raise ValueError(f"cu_seqlens: expected the first entry 0, got {int(vals[0])}")
    if vals.numel() > 1 and bool((vals[1:] < vals[:-1]).any()):
        raise ValueError(f"cu_seqlens: expected non-decreasing entries, got {vals.tolist()}")
    if int(vals[-1]) > total_tokens:
        raise ValueError(
            f"cu_seqlens: expected the last entry <= the token count {total_tokens}, "
            f"got {int(vals[-1])}"
        )


def debug_check_indices(
    name: str, indices: torch.Tensor, num_slots: int, *, distinct: bool
) -> None:
    """Host-side check (synchronises): every index in ``[-1, num_slots)``; with ``distinct``
    no non-negative index twice (two sequences writing one slot race)."""
    vals = indices.detach().to("cpu", torch.int64)
    bad = (vals < -1) | (vals >= num_slots)
    if bool(bad.any()):
        raise ValueError(
            f"{name}: expected indices in [-1, {num_slots}), got {int(vals[bad][0])} at "
            f"position {int(torch.nonzero(bad)[0])}"
        )
    if distinct:
        used = vals[vals >= 0]
        uniq, counts = torch.unique(used, return_counts=True)
        if bool((counts > 1).any()):
            raise ValueError(
                f"{name}: expected distinct slots (each is written by one sequence), slot "
                f"{int(uniq[counts > 1][0])} is used {int(counts[counts > 1][0])} times"
            )


__all__ = [
    "INT_DTYPES",
    "MAX_HEAD_DIM",
    "STATE_LAYOUTS",
    "GDNSizes",
    "check_softplus",
    "check_token_head_tensor",
    "debug_check_cu_seqlens",
    "debug_check_indices",
    "state_shape",
    "validate_gdn_args",
    "validate_intermediate_buffer",
]
