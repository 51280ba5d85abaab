"""The dense (warm-up) indexer loss: KL between the main model's head-averaged attention over
every causal key and the indexer's softmax over the same keys, fused in Triton.

Nothing of size ``[B, H, S, L]`` is ever built: the forward saves one base-2 log-sum-exp per
(batch, head, row) and per (batch, row) — O(B·H·S) — and the backward recomputes the
attention target block by block to write the gradient ``[B, S, L]`` directly.
"""

from __future__ import annotations

import torch
import triton

from tri_shared.dots import ieee_dots
from tri_shared.launch import make_grid, next_power_of_2, num_sms
from tri_shared.softmax import LOG2E

from ._common import check_index_score, check_options, check_query_key
from .kernels.dense import (
    _dense_head_lse_kernel,
    _dense_head_lse_tuned,
    _dense_index_lse_kernel,
    _dense_target_kernel,
    _dense_target_tuned,
)

__all__ = ["compute_index_loss_dense"]

# Query rows per program of the target kernel; fixed (not autotuned) because the number of
# key splits, which sets the grid, depends on it.
_TARGET_BLOCK_M = 64
# Problems with fewer head-score elements (H · S · L) than this run a fixed kernel config;
# larger ones are autotuned (once per head-dim block and dtype class, never per length).
_AUTOTUNE_MIN_WORK = 1 << 24


def _tuned(query: torch.Tensor, key: torch.Tensor) -> bool:
    _, H, S, _ = query.shape
    return H * S * key.shape[1] >= _AUTOTUNE_MIN_WORK


def _head_dim_blocks(d: int, dtype: torch.dtype) -> tuple[int, int]:
    """``(BLOCK_D, NUM_D)``: the whole head dim in one block (kept in registers across the
    inner loop) up to 128, or 256 for 2-byte types; else chunks of 64, which keep the
    pipelined query and key tiles of every config inside shared memory."""
    if d <= 128 or (d <= 256 and dtype != torch.float32):
        return max(16, next_power_of_2(d)), 1
    return 64, triton.cdiv(d, 64)


def _n_splits(device: torch.device, rows_blocks: int, key_len: int) -> int:
    """Key splits per query block: enough programs to fill the GPU at batch 1."""
    if device.type != "cuda":
        # The interpreter gains nothing from splits, but 3 keep the split logic under test.
        return max(1, min(3, triton.cdiv(key_len, 64)))
    index = device.index if device.index is not None else torch.cuda.current_device()
    want = triton.cdiv(4 * num_sms(index), max(rows_blocks, 1))
    return max(1, min(want, triton.cdiv(key_len, 64), 65535))


def _launch_target(
    query: torch.Tensor,
    key: torch.Tensor,
    index_score: torch.Tensor,
    lse: torch.Tensor,
    lsex: torch.Tensor,
    scaling: float,
    chunk_offset: int,
    eps: float,
    g: torch.Tensor | None,
) -> torch.Tensor:
    """Forward (``g`` None): per-row KL ``[B, S]`` fp32. Backward: the gradient ``[B, S, L]``."""
    B, H, S, D = query.shape
    L = key.shape[1]
    block_d, num_d = _head_dim_blocks(D, query.dtype)
    m_blocks = B * triton.cdiv(S, _TARGET_BLOCK_M)
    splits = _n_splits(query.device, m_blocks, L)
    grid = make_grid(m_blocks, splits)
    if g is None:
        out = torch.empty((B, S, splits), dtype=torch.float32, device=query.device)
        g_arg, g_strides = out, (0, 0)  # unused pointer when WRITE_GRAD is off
    else:
        out = torch.empty((B, S, L), dtype=index_score.dtype, device=query.device)
        g_arg, g_strides = g, g.stride()
    tuned = _tuned(query, key)
    kernel = _dense_target_tuned if tuned else _dense_target_kernel
    fixed = {} if tuned else {"BLOCK_N": 64, "num_warps": 4, "num_stages": 2}
    kernel[grid](
        query,
        key,
        index_score,
        lse,
        lsex,
        g_arg,
        out,
        S,
        L,
        H,
        chunk_offset,
        float(scaling) * LOG2E.value,
        1.0 / H,
        float(eps),
        *query.stride(),
        *key.stride(),
        *index_score.stride(),
        lse.stride(0),
        lse.stride(1),
        *g_strides,
        *out.stride(),
        D,
        BLOCK_D=block_d,
        NUM_D=num_d,
        IEEE=ieee_dots(query.dtype),
        WRITE_GRAD=g is not None,
        BLOCK_M=_TARGET_BLOCK_M,
        **fixed,
    )
    return out.sum(dim=-1) if g is None else out


def _forward_rows(
    query: torch.Tensor,
    key: torch.Tensor,
    index_score: torch.Tensor,
    scaling: float,
    chunk_offset: int,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-row losses ``[B, S]`` fp32 plus the saved statistics: per-head base-2
    log-sum-exp ``[B, H, S]`` and index_score base-2 log-sum-exp ``[B, S]``."""
    B, H, S, D = query.shape
    L = key.shape[1]
    dev = query.device
    lse = torch.empty((B, H, S), dtype=torch.float32, device=dev)
    lsex = torch.empty((B, S), dtype=torch.float32, device=dev)
    if B * S == 0 or L == 0:
        # No row has a valid key: loss 0 (and, in backward, gradient 0).
        return torch.zeros((B, S), dtype=torch.float32, device=dev), lse, lsex
    block_d, num_d = _head_dim_blocks(D, query.dtype)
    tuned = _tuned(query, key)
    kernel = _dense_head_lse_tuned if tuned else _dense_head_lse_kernel
    fixed = {} if tuned else {"BLOCK_M": 64, "BLOCK_N": 64, "num_warps": 4, "num_stages": 2}
    kernel[lambda meta: make_grid(B * triton.cdiv(S, meta["BLOCK_M"]), H)](
        query,
        key,
        lse,
        S,
        L,
        chunk_offset,
        float(scaling) * LOG2E.value,
        *query.stride(),
        *key.stride(),
        lse.stride(0),
        lse.stride(1),
        D,
        BLOCK_D=block_d,
        NUM_D=num_d,
        IEEE=ieee_dots(query.dtype),
        **fixed,
    )
    block_r = 16
    _dense_index_lse_kernel[make_grid(B * triton.cdiv(S, block_r))](
        index_score,
        lsex,
        S,
        L,
        chunk_offset,
        *index_score.stride(),
        BLOCK_R=block_r,
        BLOCK_C=min(256, max(16, next_power_of_2(L))),
        num_warps=4,
    )
    rows = _launch_target(query, key, index_score, lse, lsex, scaling, chunk_offset, eps, None)
    return rows, lse, lsex


class _IndexLossDense(torch.autograd.Function):
    """Per-row dense loss ``[B, S]``; gradient to ``index_score`` only."""

    @staticmethod
    def forward(ctx, query, key, index_score, scaling, chunk_offset, eps):
        rows, lse, lsex = _forward_rows(query, key, index_score, scaling, chunk_offset, eps)
        ctx.save_for_backward(query, key, index_score, lse, lsex)
        ctx.scaling, ctx.chunk_offset, ctx.eps = scaling, chunk_offset, eps
        return rows

    @staticmethod
    def backward(ctx, grad_rows):
        if not ctx.needs_input_grad[2]:
            return None, None, None, None, None, None
        query, key, index_score, lse, lsex = ctx.saved_tensors
        B, _, S, _ = query.shape
        L = key.shape[1]
        if B * S == 0 or L == 0:
            grad = torch.zeros_like(index_score, memory_format=torch.contiguous_format)
        else:
            g = grad_rows.to(torch.float32)
            grad = _launch_target(
                query, key, index_score, lse, lsex, ctx.scaling, ctx.chunk_offset, ctx.eps, g
            )
        # query and key are constants of this loss: no gradient, even when they require one.
        return None, None, grad, None, None, None


def compute_index_loss_dense(
    query: torch.Tensor,
    key: torch.Tensor,
    index_score: torch.Tensor,
    scaling: float,
    chunk_offset: int = 0,
    *,
    reduction: str = "none",
    eps: float = 1e-10,
) -> torch.Tensor:
    """The DSA dense warm-up indexer loss, fused: KL(p ‖ softmax(index_score)) per query row.

    Args:
        query: ``[B, H, S, D]`` fp32/bf16/fp16, the main model's query heads for S tokens.
        key: ``[B, L, D]``, same dtype and device, one key per position shared by all heads.
        index_score: ``[B, S, L]`` fp32/bf16/fp16, the indexer's logits over every key.
        scaling: score scale, usually ``1 / sqrt(D)``.
        chunk_offset: absolute position of query row 0; key j is valid for row t when
            ``j <= chunk_offset + t`` (rows past the last key see every key).
        reduction: ``"none"`` → ``[B, S]`` fp32; ``"sum"``; ``"mean"`` over rows with at
            least one valid key (0 when none has).
        eps: guards the logarithms: terms are ``p (ln(p + eps) − ln(q + eps))``.

    ``p`` is the head mean of the per-head softmax of ``scaling · query · keyᵀ`` over the
    valid keys and ``q`` the softmax of ``index_score`` over the same keys, both in fp32;
    terms with ``p = 0`` count 0. The gradient reaches ``index_score`` only:
    ``g · (q − p)`` on valid keys, 0 elsewhere, in index_score's dtype. ``query`` and ``key``
    are constants of this loss (the main model is detached from the indexer loss in DSA):
    they get no gradient from it even when they require one. Extra memory: O(B·H·S) fp32.
    """
    B, _, S, _, L = check_query_key(query, key)
    check_index_score(index_score, B, S, L, query.device)
    check_options(scaling, chunk_offset, reduction, eps)
    rows = _IndexLossDense.apply(query, key, index_score, float(scaling), chunk_offset, eps)
    if reduction == "none":
        return rows
    total = rows.sum()
    if reduction == "sum":
        return total
    # Every row has key 0 valid when L >= 1 (chunk_offset >= 0): the count is known on host.
    n_rows = B * S if L > 0 else 0
    return total / max(n_rows, 1)
