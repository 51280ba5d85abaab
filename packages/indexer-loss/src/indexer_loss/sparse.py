"""The sparse DSA indexer loss: KL between the main model's attention over the top-k
selected keys (head-averaged) and the softmax of the indexer's scores, with its gradient
to the indexer scores."""

from __future__ import annotations

import functools
import os
from typing import Any

import torch

from tri_shared.checks import check_int_tensor
from tri_shared.dots import ieee_dots
from tri_shared.launch import fast_launcher, is_interpreter, make_grid, next_power_of_2
from tri_shared.softmax import LOG2E

from ._common import (
    check_index_score,
    check_indices,
    check_options,
    check_query_key,
    reduce_rows,
    row_grad,
    scale_rows,
)
from .kernels.row_loss import sparse_row_loss_kernel
from .kernels.sparse import sparse_indexer_fwd_kernel

try:  # Gluon (Triton >= 3.5); without it every launch takes the Triton kernel
    from .kernels.sparse_hopper import sparse_indexer_fwd_hopper_kernel
except ImportError:
    sparse_indexer_fwd_hopper_kernel = None

__all__ = ["compute_index_loss_sparse", "sparse_attention_target"]

_MAX_BLOCK_H = 64
# Key-row offsets within one batch's keys are computed in 32-bit below this many elements.
_OFFSET_LIMIT = 2**31
# Ring slots of 64 key rows, and the producer warpgroup's registers a thread, of the Gluon
# target kernel.
_HOPPER_SLOTS = 2
_HOPPER_PRODUCER_REGS = 32
# The loss kernel holds a row of up to this many entries in registers; longer rows take two
# passes over it.
_ROW_LOSS_MAX_BLOCK = 4096


def _block_sizes(num_heads: int, head_dim: int) -> tuple[int, int]:
    """(BLOCK_H, BLOCK_D): heads padded to a power of two (at least 16 for tl.dot), at most
    64 per block; D in one chunk up to 128, above that in chunks that divide it when one
    of 128/64/32 does (576 = 9 × 64, 192 = 3 × 64)."""
    block_h = min(_MAX_BLOCK_H, max(16, next_power_of_2(num_heads)))
    if head_dim <= 128:
        block_d = max(16, next_power_of_2(head_dim))
    else:
        block_d = next((c for c in (128, 64, 32) if head_dim % c == 0), 64)
    return block_h, block_d


def _launch_config(num_heads: int, head_dim: int) -> dict[str, int | bool]:
    """BLOCK_K, the matmul orientation of each sweep (KT1 / KT2: keys on the M side), num_warps
    and num_stages of the forward kernel. A fixed choice rather than autotuning: no tuning
    pause on each new shape; the bench script sweeps the alternatives (see BENCHMARKS.md)."""
    # Sweep 1 reduces over keys (running max and sum per head): heads on M keep that
    # reduction inside a warp. Sweep 2 reduces over heads (the head sum): keys on M keep it
    # inside a warp. On the 2026-11-21 H200 runs (BENCHMARKS.md) this mixed orientation beat
    # keys-on-M for both sweeps.
    if head_dim > 128:
        if num_heads > 64:
            # one 128-head block on 8 warps: each gathered key tile is used by every head
            return {
                "BLOCK_K": 128,
                "BLOCK_H": 128,
                "KT1": False,
                "KT2": True,
                "num_warps": 8,
                "num_stages": 2,
            }
        return {"BLOCK_K": 128, "KT1": False, "KT2": True, "num_warps": 4, "num_stages": 2}
    return {
        "BLOCK_K": 128 if num_heads >= 64 else 64,
        "KT1": False,
        "KT2": True,
        "num_warps": 4,
        "num_stages": 2,
    }


def _hopper_launch(
    num_heads: int, head_dim: int, topk: int, *, wide_keys: bool
) -> tuple[Any, dict[str, Any], dict[str, int]]:
    """(kernel, constexprs, launch options) of the Gluon target kernel; MARK_INVALID is the
    caller's."""
    constexprs = {
        "HEAD_DIM": head_dim,
        "BLOCK_H": 64,
        "BLOCK_K": 64,
        "NUM_SLOTS": _HOPPER_SLOTS,
        "PRODUCER_WARPS": 4,
        "PRODUCER_REGS": _HOPPER_PRODUCER_REGS,
        "WIDE_KEYS": wide_keys,
    }
    # Occupancy decides this kernel's speed (it waits on key gathers from L2): 64-key blocks
    # in a two-slot ring take 50 KiB of shared memory, and 64 registers a thread at launch
    # (8 warps: the consumer and the producer warpgroup) let four programs share an SM;
    # setmaxnreg then moves all but PRODUCER_REGS of the producer's share to the consumer.
    return sparse_indexer_fwd_hopper_kernel, constexprs, {"num_warps": 4, "maxnreg": 64}


@functools.cache
def _capability_major(device_index: int | None) -> int:
    """The compute capability's major number of a CUDA device (asked once per device)."""
    return torch.cuda.get_device_capability(device_index)[0]


def _hopper_eligible(query: torch.Tensor, key: torch.Tensor) -> bool:
    """Whether the Gluon forward handles this call: a Hopper GPU, fp16/bf16, 33 to 64 heads,
    D of 64 or 128, unit strides along D and 16-element aligned key rows (cp.async copies 16
    bytes at a time). ``INDEXER_LOSS_GLUON=0`` turns it off."""
    if sparse_indexer_fwd_hopper_kernel is None or not query.is_cuda:
        return False
    if os.environ.get("INDEXER_LOSS_GLUON", "1") == "0":
        return False
    if _capability_major(query.device.index) != 9:
        return False
    _, H, _, D = query.shape
    return (
        query.dtype in (torch.float16, torch.bfloat16)
        and 32 < H <= 64
        and D in (64, 128)
        and query.stride(3) == 1
        and key.stride(2) == 1
        and key.stride(0) % 16 == 0
        and key.stride(1) % 16 == 0
        and key.data_ptr() % 16 == 0
    )


def _forward(
    query: torch.Tensor,
    key: torch.Tensor,
    index_score: torch.Tensor | None,
    indices: torch.Tensor,
    scaling: float,
    chunk_offset: int,
    eps: float,
    store: str | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Launch the fused kernel. Returns ``(loss [B, S], out, lse [B, S], n_valid [B, S])``;
    ``out`` ``[B, S, topk]`` holds p in fp32 (``store="p"``), q − p on the valid entries
    (``store="diff"``, needs ``index_score``; dtype from :func:`_diff_dtype`) or nothing
    (None). loss, lse and n_valid are meaningful only when ``index_score`` is given."""
    B, H, S, D = query.shape
    L = key.shape[1]
    topk = indices.shape[2]
    dev = query.device
    loss = torch.empty((B, S), dtype=torch.float32, device=dev)
    lse = torch.empty((B, S), dtype=torch.float32, device=dev)
    n_valid = torch.empty((B, S), dtype=torch.int32, device=dev)
    gluon = _hopper_eligible(query, key)
    # the Gluon kernel stores the target; the loss is computed from it by a second kernel
    full = store == "p" or (gluon and index_score is not None)
    p = torch.empty((B, S, topk) if full else (1,), dtype=torch.float32, device=dev)
    diff = None
    if store == "diff":
        diff = torch.empty((B, S, topk), dtype=_diff_dtype(index_score), device=dev)
    out = diff if store == "diff" else p
    if B * S == 0:
        return loss, out, lse, n_valid
    # the largest element offset of a key row within one batch (the batch offset is 64-bit)
    wide_keys = (L - 1) * key.stride(1) + (D - 1) * key.stride(2) >= _OFFSET_LIMIT
    grid = make_grid(B * S)
    sizes = (S, H, L, topk, chunk_offset, float(scaling) * LOG2E.value)
    if gluon:
        fn, constexprs, options = _hopper_launch(H, D, topk, wide_keys=wide_keys)
        # unit strides along D are part of the Gluon kernel's contract: not passed
        strides = (*query.stride()[:3], *key.stride()[:2], *indices.stride())
        mark = index_score is not None  # -1 on invalid entries tells the loss kernel
        fast_launcher(fn)[grid](
            query, key, indices, p, *sizes, *strides, MARK_INVALID=mark, **constexprs, **options
        )
        if index_score is not None:
            _row_loss(index_score, p, diff, loss, lse, n_valid, eps)
        return loss, out, lse, n_valid
    x = index_score if index_score is not None else loss  # dummy pointer without a loss
    xs = index_score.stride() if index_score is not None else (0, 0, 0)
    buffers = (query, key, x, indices, loss, out, lse, n_valid)
    outputs = {
        "STORE_P": store == "p",
        "STORE_DIFF": store == "diff",
        "COMPUTE_LOSS": index_score is not None,
    }
    block_h, block_d = _block_sizes(H, D)
    config = dict(_launch_config(H, D))
    block_h = int(config.pop("BLOCK_H", block_h))
    # sweep 0 (index_score statistics, no matmul) runs in wide blocks
    block_x = min(2048, max(16, next_power_of_2(topk)))
    one_head_block = block_h >= H
    # Per-head log-sum-exp handed between the kernel's two sweeps when H spans several
    # head blocks: [B·S, H] fp32, small next to p (H <= 128 against topk entries).
    hlse = (
        torch.empty((1,), dtype=torch.float32, device=dev)
        if one_head_block
        else torch.empty((B * S, H), dtype=torch.float32, device=dev)
    )
    fast_launcher(sparse_indexer_fwd_kernel)[grid](
        *buffers,
        hlse,
        *sizes,
        float(eps),
        *query.stride(),
        *key.stride(),
        *xs,
        *indices.stride(),
        HEAD_DIM=D,
        BLOCK_H=block_h,
        BLOCK_D=block_d,
        ONE_HEAD_BLOCK=one_head_block,
        IEEE=ieee_dots(query.dtype),
        BLOCK_X=block_x,
        WIDE_KEYS=wide_keys,
        **outputs,
        **config,
    )
    return loss, out, lse, n_valid


def _diff_dtype(index_score: torch.Tensor) -> torch.dtype:
    """The dtype in which the forward keeps ``q − p`` for the backward.

    bf16 for a bf16 ``index_score``: half the bytes to write and to read again, and bf16 has
    fp32's exponent range, so the backward's ``g · (q − p)``, rounded twice, is within one
    unit in the last place of the fp32 product rounded once. fp32 otherwise: fp16 would
    flush small differences that a large ``g``, such as a loss scale, brings back into
    range."""
    return torch.bfloat16 if index_score.dtype == torch.bfloat16 else torch.float32


def _row_loss(
    index_score: torch.Tensor,
    p: torch.Tensor,
    diff: torch.Tensor | None,
    loss: torch.Tensor,
    lse: torch.Tensor,
    n_valid: torch.Tensor,
    eps: float,
) -> None:
    """The loss of each row from the target ``p`` ``[B, S, topk]`` fp32 (contiguous, -1 on
    invalid entries) into ``loss``, ``lse`` and ``n_valid`` ``[B, S]``; and ``q - p`` (0 on
    invalid entries) into ``diff`` (contiguous, like p) when it is given."""
    B, S, topk = index_score.shape
    block_x = min(_ROW_LOSS_MAX_BLOCK, max(16, next_power_of_2(topk)))
    fast_launcher(sparse_row_loss_kernel)[make_grid(B * S)](
        index_score,
        p,
        p if diff is None else diff,  # not written without STORE_DIFF
        loss,
        lse,
        n_valid,
        S,
        topk,
        float(eps),
        *index_score.stride(),
        BLOCK_X=block_x,
        ONE_BLOCK=topk <= block_x,
        STORE_DIFF=diff is not None,
        FAST_LOG=not is_interpreter(),
        # 4 warps (16 entries a thread at topk 2048): more rows in flight per SM than with 8,
        # 34 -> 31 us at topk 2048 on an H200 (BENCHMARKS.md, run 11); 8 for longer rows
        num_warps=4 if topk <= 2048 else 8,
    )


def _check(
    query: torch.Tensor,
    key: torch.Tensor,
    index_score: torch.Tensor | None,
    indices: torch.Tensor,
    scaling: float,
    chunk_offset: int,
    reduction: str,
    eps: float,
) -> None:
    B, _, S, _, _ = check_query_key(query, key)
    check_options(scaling, chunk_offset, reduction, eps)
    if index_score is not None:
        topk = check_index_score(index_score, B, S, None, query.device)
    else:
        check_int_tensor("indices", indices, ndim=3)
        topk = indices.shape[2]
    check_indices(indices, B, S, topk, query.device)


class _SparseIndexLoss(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any,
        query: torch.Tensor,
        key: torch.Tensor,
        index_score: torch.Tensor,
        indices: torch.Tensor,
        scaling: float,
        chunk_offset: int,
        reduction: str,
        eps: float,
        needs_grad: bool,
    ) -> torch.Tensor:
        # with a gradient to come, the kernel stores q − p: the backward is then one multiply
        loss, diff, _, n_valid = _forward(
            query,
            key,
            index_score,
            indices,
            scaling,
            chunk_offset,
            eps,
            store="diff" if needs_grad else None,
        )
        ctx.reduction = reduction
        ctx.grad_dtype = index_score.dtype
        if needs_grad:
            ctx.save_for_backward(diff, n_valid)
        return reduce_rows(loss, n_valid, reduction)

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        diff, n_valid = ctx.saved_tensors
        g_rows = row_grad(grad_output, n_valid, ctx.reduction)
        grad = scale_rows(diff, g_rows, ctx.grad_dtype)
        # query and key are constants of this loss: no gradient, even if they require one.
        return None, None, grad, None, None, None, None, None, None


def compute_index_loss_sparse(
    query: torch.Tensor,
    key: torch.Tensor,
    index_score: torch.Tensor,
    indices: torch.Tensor,
    scaling: float,
    chunk_offset: int = 0,
    *,
    reduction: str = "none",
    eps: float = 1e-10,
) -> torch.Tensor:
    """The DSA indexer loss over the top-k selected keys, fused in one Triton kernel.

    Args:
        query: ``[B, H, S, D]`` fp32/fp16/bf16, the main model's query heads for S tokens.
        key: ``[B, L, D]``, same dtype, one key row per position shared by all heads.
        index_score: ``[B, S, topk]`` fp32/fp16/bf16, the indexer's logits.
        indices: ``[B, S, topk]`` int32/int64, the selected key positions. Entry j of row t
            is valid when ``0 <= indices[b, t, j] < L`` and
            ``indices[b, t, j] <= chunk_offset + t``; others (−1 padding, out of range,
            future) take no part; duplicates count as separate entries.
        scaling: score scale, usually ``D ** -0.5``.
        chunk_offset: absolute position of query row 0 (>= 0).
        reduction: ``"none"`` → ``[B, S]`` fp32; ``"sum"``; ``"mean"`` over rows with at
            least one valid entry (0 when no row has one).
        eps: guards the logarithms only: ``p (log(p + eps) − log(q + eps))``.

    ``p[j]`` is the per-head softmax of ``scaling · q·k`` over the valid entries, averaged
    over heads; ``q`` the softmax of ``index_score`` over the valid entries; the loss of a row
    is ``Σ p (log p − log q)`` (0 for a row without valid entry).

    Gradient: only to ``index_score``, ``g · (q − p)`` on valid entries, 0 elsewhere, in
    ``index_score``'s dtype. ``query`` and ``key`` are constants of this loss (DSA detaches
    the main model from the indexer loss): they get no gradient from it even when they
    require one. Extra memory: ``q − p`` ``[B, S, topk]`` (fp32; bf16 for a bf16
    ``index_score``) is kept for the backward only when ``index_score`` requires a gradient.
    """
    _check(query, key, index_score, indices, scaling, chunk_offset, reduction, eps)
    # p is kept for the backward only when a gradient will be asked for (inside forward,
    # grad mode is always off, so decide here).
    needs_grad = index_score.requires_grad and torch.is_grad_enabled()
    return _SparseIndexLoss.apply(
        query, key, index_score, indices, scaling, chunk_offset, reduction, eps, needs_grad
    )


def sparse_attention_target(
    query: torch.Tensor,
    key: torch.Tensor,
    indices: torch.Tensor,
    scaling: float,
    chunk_offset: int = 0,
) -> torch.Tensor:
    """The target distribution ``p`` ``[B, S, topk]`` fp32 of the sparse indexer loss.

    Shapes and validity rules as in :func:`compute_index_loss_sparse`: the per-head softmax
    of ``scaling · query · key[indices]`` over the valid entries, averaged over the H heads;
    0 on invalid entries and on rows with no valid entry. No gradient flows through it.
    """
    _check(query, key, None, indices, scaling, chunk_offset, "none", 0.0)
    with torch.no_grad():
        _, p, _, _ = _forward(query, key, None, indices, scaling, chunk_offset, 0.0, store="p")
    return p
