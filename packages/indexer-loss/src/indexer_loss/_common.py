"""What the sparse and the dense indexer losses share: input validation, the reduction of
per-row losses, and the backward ``grad = g · (softmax(index_score) − p)``.

Conventions used by both losses (rows are the ``B · S`` query positions):

- ``query`` ``[B, H, S, D]`` and ``key`` ``[B, L, D]``, same float dtype, same device.
- ``index_score`` ``[B, S, N]`` (fp32, bf16 or fp16): the indexer's logits over ``N`` entries
  (``N = topk`` for the sparse loss, one per selected key).
- Entry ``j`` of row ``t`` is *valid* when its key position ``pos`` satisfies
  ``0 <= pos < L`` and ``pos <= chunk_offset + t``; ``pos = indices[b, t, j]`` when indices
  are given, else ``pos = j``.
- The forward saves, per row, the natural log-sum-exp ``lse`` of ``index_score`` over the
  valid entries (``-inf`` for a row with none) and the number of valid entries ``n_valid``,
  plus, for the sparse loss's backward, ``q − p`` ``[B, S, N]`` (0 on invalid entries; fp32,
  or bf16 for a bf16 ``index_score``),
  so that backward is one multiply per entry (:func:`scale_rows`).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from tri_shared.checks import (
    FLOAT_DTYPES,
    check_choice,
    check_int,
    check_int_tensor,
    check_positive,
    check_same_device,
    check_same_dtype,
    check_tensor,
)
from tri_shared.launch import fast_launcher, make_grid, next_power_of_2
from tri_shared.offsets import wide

REDUCTIONS = ("none", "sum", "mean")


def check_query_key(query: torch.Tensor, key: torch.Tensor) -> tuple[int, int, int, int, int]:
    """Validate ``query`` ``[B, H, S, D]`` and ``key`` ``[B, L, D]`` (same float dtype and
    device, same batch and head dim). Returns ``(B, H, S, D, L)``.

    Raises TypeError for a non-tensor or a non-float dtype, ValueError for shapes or devices;
    the message names ``query`` or ``key``.
    """
    check_tensor("query", query, ndim=4, dtypes=FLOAT_DTYPES)
    check_tensor("key", key, ndim=3, dtypes=FLOAT_DTYPES)
    check_same_device(query=query, key=key)
    check_same_dtype(query=query, key=key)
    B, H, S, D = query.shape
    if key.shape[0] != B:
        raise ValueError(f"key: expected batch size {B} (query's), got shape {list(key.shape)}")
    if key.shape[2] != D:
        raise ValueError(
            f"key: expected head dim {D} (query's last dimension), got shape {list(key.shape)}"
        )
    if H < 1:
        raise ValueError(f"query: expected at least one head, got shape {list(query.shape)}")
    if D < 1:
        raise ValueError(f"query: expected a head dim >= 1, got shape {list(query.shape)}")
    return B, H, S, D, key.shape[1]


def check_index_score(
    index_score: torch.Tensor, batch: int, seqlen: int, n: int | None, device: torch.device
) -> int:
    """Validate ``index_score`` ``[B, S, N]`` (fp32/bf16/fp16, on ``device``); ``n=None``
    leaves N free. Returns N."""
    check_tensor(
        "index_score", index_score, shape=(batch, seqlen, n), dtypes=FLOAT_DTYPES, device=device
    )
    return index_score.shape[2]


def check_indices(
    indices: torch.Tensor, batch: int, seqlen: int, topk: int, device: torch.device
) -> None:
    """Validate ``indices`` ``[B, S, topk]`` int32/int64 on ``device`` (values are not read:
    invalid positions are masked in the kernel, never a host sync)."""
    check_int_tensor("indices", indices, device=device)
    check_tensor("indices", indices, shape=(batch, seqlen, topk))


def check_options(scaling: float, chunk_offset: int, reduction: str, eps: float) -> None:
    """``scaling`` a finite number, ``chunk_offset`` an int >= 0, ``reduction`` one of
    ``"none"``, ``"sum"``, ``"mean"``, ``eps`` >= 0."""
    if isinstance(scaling, bool) or not isinstance(scaling, (int, float)):
        raise TypeError(f"scaling: expected a number, got {type(scaling).__name__}")
    if scaling != scaling or abs(scaling) == float("inf"):
        raise ValueError(f"scaling: expected a finite number, got {scaling}")
    check_int("chunk_offset", chunk_offset, min_value=0)
    check_choice("reduction", reduction, REDUCTIONS)
    check_positive("eps", eps, allow_zero=True)


def reduce_rows(loss: torch.Tensor, n_valid: torch.Tensor, reduction: str) -> torch.Tensor:
    """Reduce per-row losses ``[B, S]`` fp32: ``"none"`` returns them, ``"sum"`` their sum,
    ``"mean"`` the sum over the number of rows with at least one valid entry (0 when there
    is none). ``n_valid`` ``[B, S]``: valid entries per row. No host sync."""
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    return loss.sum() / rows_with_entries(n_valid)


def rows_with_entries(n_valid: torch.Tensor) -> torch.Tensor:
    """Number of rows with at least one valid entry, as an fp32 scalar tensor clamped to
    >= 1 (so an all-empty batch divides 0 by 1)."""
    return (n_valid > 0).sum().clamp_min(1).to(torch.float32)


def row_grad(grad_output: torch.Tensor, n_valid: torch.Tensor, reduction: str) -> torch.Tensor:
    """The gradient reaching each row's loss, ``[B, S]`` fp32, from the gradient of the
    reduced loss (``[B, S]`` for ``"none"``, a scalar otherwise)."""
    g = grad_output.to(torch.float32)
    if reduction == "none":
        return g.expand(n_valid.shape)
    if reduction == "sum":
        return g.expand(n_valid.shape)
    return (g / rows_with_entries(n_valid)).expand(n_valid.shape)


@triton.jit
def _scale_rows_kernel(
    d_ptr, g_ptr, out_ptr, S, N, stride_gb, stride_gs, BLOCK_N: tl.constexpr
):  # fmt: skip
    row = tl.program_id(0)
    b = row // S
    t = row % S
    offs = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    inb = offs < N
    # d and out are contiguous [B*S, N] buffers allocated by the caller
    d = tl.load(d_ptr + wide(row) * N + offs, mask=inb, other=0.0).to(tl.float32)
    g = tl.load(g_ptr + wide(b) * stride_gb + wide(t) * stride_gs)
    tl.store(out_ptr + wide(row) * N + offs, (g * d).to(out_ptr.dtype.element_ty), mask=inb)


def scale_rows(diff: torch.Tensor, g_rows: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``grad[b, t, j] = g_rows[b, t] · diff[b, t, j]`` in ``dtype``, shape ``[B, S, N]``.

    ``diff`` ``[B, S, N]`` fp32 or bf16, contiguous (``q − p``, 0 on invalid entries);
    ``g_rows`` ``[B, S]`` fp32, any strides (e.g. an expanded scalar). The product is taken
    in fp32 and rounded once to ``dtype``. (A Triton kernel: ``torch.mul`` with the row
    factor broadcast takes PyTorch's strided elementwise path, 4x slower on an H200.)
    """
    B, S, N = diff.shape
    out = torch.empty((B, S, N), dtype=dtype, device=diff.device)
    if B * S == 0 or N == 0:
        return out
    block_n = min(1024, max(16, next_power_of_2(N)))
    grid = make_grid(B * S, triton.cdiv(N, block_n))
    fast_launcher(_scale_rows_kernel)[grid](
        diff, g_rows, out, S, N, *g_rows.stride(), BLOCK_N=block_n, num_warps=4
    )
    return out
