"""Plain PyTorch versions of the operators: the specification the kernels are tested against.

Masking follows flash_attn >= 2.1: query ``i`` and key ``j`` of a sequence with ``seqlen_q``
queries and ``seqlen_k`` keys are aligned at the bottom-right, i.e. query ``i`` sits at key
position ``i + seqlen_k - seqlen_q``. Key ``j`` is visible when
``pos - left <= j <= pos + right`` (a bound of -1 means unbounded); ``causal`` is ``right = 0``.
A query that sees no key gets output 0 and log-sum-exp ``+inf``.
"""

from __future__ import annotations

import math

import torch


def attention_mask_ref(
    seqlen_q: int,
    seqlen_k: int,
    *,
    causal: bool = False,
    window_size: tuple[int, int] = (-1, -1),
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Boolean ``[seqlen_q, seqlen_k]``: True where query ``i`` may attend to key ``j``."""
    left, right = window_size
    if causal:
        right = 0
    pos = torch.arange(seqlen_q, device=device)[:, None] + (seqlen_k - seqlen_q)
    j = torch.arange(seqlen_k, device=device)[None, :]
    visible = torch.ones(seqlen_q, seqlen_k, dtype=torch.bool, device=device)
    if right >= 0:
        visible &= j <= pos + right
    if left >= 0:
        visible &= j >= pos - left
    return visible


def attention_ref(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    softmax_scale: float | None = None,
    causal: bool = False,
    window_size: tuple[int, int] = (-1, -1),
    softcap: float = 0.0,
    alibi_slopes: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    dropout_mask: torch.Tensor | None = None,
    compute_dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact attention, the specification of :func:`flash_attn_tri.flash_attn_func`.

    ``q`` ``[batch, seqlen_q, heads, d]``, ``k`` ``[batch, seqlen_k, heads_k, d]``, ``v``
    ``[batch, seqlen_k, heads_k, dv]``; ``heads`` a multiple of ``heads_k`` (GQA: query head
    ``h`` reads key head ``h // (heads // heads_k)``). Logits are
    ``softcap·tanh(scale·q·k / softcap)`` (or ``scale·q·k`` when ``softcap`` is 0) plus the
    ALiBi bias ``-slope·|i + seqlen_k - seqlen_q - j|`` (slopes ``[heads]`` or
    ``[batch, heads]``), then masked. Dropout keeps the entries where ``dropout_mask``
    (bool ``[batch, heads, seqlen_q, seqlen_k]``) is True and scales them by
    ``1 / (1 - dropout_p)``; the log-sum-exp is that of the undropped logits.

    Computed in ``compute_dtype`` (fp32 by default; pass the input dtype to get the error
    of a plain PyTorch implementation). Returns ``(out [batch, seqlen_q, heads, dv]`` in
    ``compute_dtype``, ``lse [batch, heads, seqlen_q]`` fp32, natural log``)``.
    """
    batch, seqlen_q, heads, d = q.shape
    seqlen_k, heads_k = k.shape[1], k.shape[2]
    scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(d)
    group = heads // heads_k
    qc = q.to(compute_dtype)
    kc = k.to(compute_dtype).repeat_interleave(group, dim=2)
    vc = v.to(compute_dtype).repeat_interleave(group, dim=2)
    scores = torch.einsum("bihd,bjhd->bhij", qc, kc) * scale
    if softcap > 0:
        scores = softcap * torch.tanh(scores / softcap)
    if alibi_slopes is not None:
        slopes = alibi_slopes.to(compute_dtype)
        slopes = slopes.expand(batch, heads) if slopes.dim() == 1 else slopes
        pos = torch.arange(seqlen_q, device=q.device)[:, None] + (seqlen_k - seqlen_q)
        dist = (pos - torch.arange(seqlen_k, device=q.device)[None, :]).abs().to(compute_dtype)
        scores = scores - slopes[:, :, None, None] * dist
    visible = attention_mask_ref(
        seqlen_q, seqlen_k, causal=causal, window_size=window_size, device=q.device
    )
    scores = scores.masked_fill(~visible, float("-inf"))
    lse = torch.logsumexp(scores.float(), dim=-1)
    probs = torch.softmax(scores, dim=-1)
    # A row that sees nothing: softmax gives NaN; the specification is 0 (and lse = +inf).
    probs = probs.masked_fill(~visible.any(-1)[:, None], 0.0)
    lse = lse.masked_fill(~visible.any(-1), float("inf"))
    if dropout_p > 0:
        if dropout_mask is None:
            raise ValueError("dropout_mask: required when dropout_p > 0, got None")
        probs = probs.masked_fill(~dropout_mask, 0.0) / (1.0 - dropout_p)
    out = torch.einsum("bhij,bjhd->bihd", probs, vc)
    return out, lse


def attention_varlen_ref(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor,
    *,
    dropout_mask: torch.Tensor | None = None,
    alibi_slopes: torch.Tensor | None = None,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`attention_ref` over packed sequences: ``q`` ``[total_q, heads, d]``, ``k``/``v``
    ``[total_k, heads_k, d / dv]``, int32 ``cu_seqlens`` ``[batch + 1]``.

    ``dropout_mask`` is ``[batch, heads, max_seqlen_q, max_seqlen_k]`` (sequence ``b`` uses
    its top-left corner). Returns ``out [total_q, heads, dv]`` and ``lse [heads, total_q]``.
    """
    cq, ck = cu_seqlens_q.tolist(), cu_seqlens_k.tolist()
    outs, lses = [], []
    for b in range(len(cq) - 1):
        sq, sk = cq[b + 1] - cq[b], ck[b + 1] - ck[b]
        mask = None if dropout_mask is None else dropout_mask[b : b + 1, :, :sq, :sk]
        slopes = alibi_slopes
        if slopes is not None and slopes.dim() == 2:
            slopes = slopes[b : b + 1]
        o, lse = attention_ref(
            q[None, cq[b] : cq[b + 1]],
            k[None, ck[b] : ck[b + 1]],
            v[None, ck[b] : ck[b + 1]],
            dropout_mask=mask,
            alibi_slopes=slopes,
            **kwargs,
        )
        outs.append(o[0])
        lses.append(lse[0])
    return torch.cat(outs, 0), torch.cat(lses, 1)
