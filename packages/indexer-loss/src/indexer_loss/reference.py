"""Plain PyTorch versions of the operators: the specification the kernels are tested against."""

import torch


def _to_compute_dtype(t: torch.Tensor) -> torch.Tensor:
    """fp32 for fp32/fp16/bf16 inputs; fp64 inputs stay fp64 (tests use them as an oracle)."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def _sparse_valid(indices: torch.Tensor, key_len: int, chunk_offset: int) -> torch.Tensor:
    """Entry j of row t is valid when 0 <= indices[b, t, j] < L and it is not in the future
    of the query's absolute position chunk_offset + t. ``[B, S, topk]`` bool."""
    seqlen = indices.shape[1]
    pos = chunk_offset + torch.arange(seqlen, device=indices.device)
    idx = indices.long()
    return (idx >= 0) & (idx < key_len) & (idx <= pos[None, :, None])


def sparse_attention_target_ref(
    query: torch.Tensor,
    key: torch.Tensor,
    indices: torch.Tensor,
    scaling: float,
    chunk_offset: int = 0,
) -> torch.Tensor:
    """The head-averaged sparse attention distribution ``p`` ``[B, S, topk]`` fp32.

    ``query`` ``[B, H, S, D]``, ``key`` ``[B, L, D]``, ``indices`` ``[B, S, topk]``.
    ``s[h, j] = scaling · query[b, h, t] · key[b, indices[b, t, j]]``, softmax per head over
    the valid entries, mean over heads; 0 on invalid entries and on rows with none valid.
    Computed in fp32 (the inputs are treated as constants: no gradient flows through).
    """
    B, H = query.shape[:2]
    L = key.shape[1]
    valid = _sparse_valid(indices, L, chunk_offset)
    safe = torch.where(valid, indices.long(), 0)
    with torch.no_grad():
        batch = torch.arange(B, device=key.device)[:, None, None]
        keys = _to_compute_dtype(key)[batch, safe]  # [B, S, topk, D]
        s = torch.einsum("bhsd,bskd->bhsk", _to_compute_dtype(query), keys) * scaling
        s = s.masked_fill(~valid[:, None], float("-inf"))
        probs = torch.softmax(s, dim=-1).nan_to_num(0.0)  # rows with no valid entry: 0
        p = probs.sum(dim=1) / H
    return torch.where(valid, p, 0.0)


def index_loss_sparse_ref(
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
    """KL(p ‖ softmax(index_score)) per query row over the valid top-k entries.

    ``p`` from :func:`sparse_attention_target_ref`; ``q`` the softmax of ``index_score``
    (``[B, S, topk]``) over the valid entries, in fp32;
    ``loss[b, t] = Σ_valid p (log(p + eps) − log(q + eps))``, terms with ``p = 0`` count 0,
    a row with no valid entry has loss 0. ``reduction``: ``"none"`` → ``[B, S]`` fp32,
    ``"sum"``, ``"mean"`` over rows with at least one valid entry (0 when none has).
    Differentiable in ``index_score`` only.
    """
    L = key.shape[1]
    valid = _sparse_valid(indices, L, chunk_offset)
    row_ok = valid.any(dim=-1, keepdim=True)
    p = sparse_attention_target_ref(query, key, indices, scaling, chunk_offset)
    x = _to_compute_dtype(index_score).masked_fill(~valid, float("-inf"))
    x = torch.where(row_ok, x, 0.0)  # keeps empty rows finite (their gradient is 0)
    q = torch.where(valid, torch.softmax(x, dim=-1), 0.0)
    terms = p * (torch.log(p + eps) - torch.log(q + eps))
    loss = torch.where(valid & (p > 0), terms, 0.0).sum(dim=-1)
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    if reduction == "mean":
        return loss.sum() / row_ok.sum().clamp_min(1)
    raise ValueError(f"reduction: expected 'none', 'sum' or 'mean', got {reduction!r}")


def index_loss_dense_ref(
    query: torch.Tensor,
    key: torch.Tensor,
    index_score: torch.Tensor,
    scaling: float,
    chunk_offset: int = 0,
    *,
    reduction: str = "none",
    eps: float = 1e-10,
) -> torch.Tensor:
    """The dense (warm-up) loss: :func:`index_loss_sparse_ref` with every causal key as entry.

    ``query`` ``[B, H, S, D]``, ``key`` ``[B, L, D]``, ``index_score`` ``[B, S, L]``; key j is
    valid for row t when ``j <= chunk_offset + t``. ``p`` = head mean of the per-head softmax
    of ``scaling · query · keyᵀ`` over the valid keys, ``q`` = softmax of ``index_score`` over
    the same keys, ``loss[b, t] = Σ_valid p (log(p + eps) − log(q + eps))`` (terms with
    ``p = 0`` count 0; a row with no valid key, only possible when L = 0, has loss 0).
    Materialises ``[B, H, S, L]``: small shapes only. Differentiable in ``index_score`` only.
    """
    B, H, S, _ = query.shape
    L = key.shape[1]
    pos = chunk_offset + torch.arange(S, device=key.device)
    valid = (torch.arange(L, device=key.device)[None, :] <= pos[:, None]).expand(B, S, L)
    row_ok = valid.any(dim=-1, keepdim=True)
    with torch.no_grad():
        s = torch.einsum("bhsd,bld->bhsl", _to_compute_dtype(query), _to_compute_dtype(key))
        s = (s * scaling).masked_fill(~valid[:, None], float("-inf"))
        p = torch.softmax(s, dim=-1).nan_to_num(0.0).sum(dim=1) / H
        p = torch.where(valid, p, 0.0)
    x = _to_compute_dtype(index_score).masked_fill(~valid, float("-inf"))
    x = torch.where(row_ok, x, 0.0)  # keeps empty rows finite (their gradient is 0)
    q = torch.where(valid, torch.softmax(x, dim=-1), 0.0)
    terms = p * (torch.log(p + eps) - torch.log(q + eps))
    loss = torch.where(valid & (p > 0), terms, 0.0).sum(dim=-1)
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    if reduction == "mean":
        return loss.sum() / row_ok.sum().clamp_min(1)
    raise ValueError(f"reduction: expected 'none', 'sum' or 'mean', got {reduction!r}")
