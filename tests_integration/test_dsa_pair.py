"""The DeepSeek Sparse Attention pair: indexer-loss's attention target against attention
probabilities rebuilt from flash-attn-tri, and a small indexer trained on the loss."""

from __future__ import annotations

import pytest
import torch

from flash_attn_tri import flash_attn_func
from indexer_loss import compute_index_loss_sparse, sparse_attention_target
from tri_shared.testing import assert_close, generator, randn


@pytest.mark.parametrize(
    ("heads", "queries", "keys", "dim", "dtype"),
    [
        (4, 24, 40, 32, torch.float32),
        (3, 17, 17, 40, torch.float16),
        pytest.param(16, 1024, 2048, 128, torch.bfloat16, marks=pytest.mark.gpu, id="realistic"),
    ],
)
def test_target_equals_head_averaged_probabilities_from_lse(
    device, heads, queries, keys, dim, dtype
):
    query = randn((1, heads, queries, dim), seed=1, device=device, dtype=dtype)
    key = randn((1, keys, dim), seed=2, device=device, dtype=dtype)
    scaling = dim**-0.5
    chunk_offset = keys - queries  # the queries are the last `queries` positions
    every_key = torch.arange(keys, device=device).expand(1, queries, keys).contiguous()

    target = sparse_attention_target(query, key, every_key, scaling, chunk_offset)

    # one shared key head (MQA); causal masking in flash_attn is aligned to the bottom right,
    # which is exactly position chunk_offset + t for query row t
    value = randn((1, keys, 1, dim), seed=3, device=device, dtype=dtype)
    _, lse, _ = flash_attn_func(
        query.transpose(1, 2).contiguous(),
        key[:, :, None, :].contiguous(),
        value,
        softmax_scale=scaling,
        causal=True,
        return_attn_probs=True,
    )
    scores = torch.einsum("bhsd,bld->bhsl", query.double(), key.double()) * scaling
    rows = torch.arange(queries, device=device)[:, None] + chunk_offset
    causal = torch.arange(keys, device=device)[None, :] <= rows
    probs = torch.exp(scores - lse.double()[..., None]).masked_fill(~causal, 0.0)
    # both sides score the same low-precision inputs in fp32; they differ by rounding only
    assert_close(
        target,
        probs.mean(1),
        max_rel_err=1e-4 if dtype == torch.float32 else 1e-3,
        name="attention target",
    )
    assert torch.allclose(
        target.sum(-1), torch.ones(1, queries, dtype=target.dtype, device=device), atol=1e-5
    )


class TinyIndexer(torch.nn.Module):
    """Scores keys for each query as a weighted sum over indexer heads of relu(q·k)."""

    def __init__(self, d_model: int, heads: int, dim: int, g: torch.Generator):
        super().__init__()
        self.heads, self.dim = heads, dim
        self.wq = torch.nn.Parameter(torch.randn(d_model, heads * dim, generator=g) * d_model**-0.5)
        self.wk = torch.nn.Parameter(torch.randn(d_model, dim, generator=g) * d_model**-0.5)
        self.head_weight = torch.nn.Parameter(torch.ones(heads) / heads)

    def forward(self, x_q, x_k, indices):
        B, S, _ = x_q.shape
        q = (x_q @ self.wq).reshape(B, S, self.heads, self.dim)
        k = x_k @ self.wk  # [B, L, dim]
        gathered = torch.gather(
            k, 1, indices.clamp(min=0).reshape(B, -1, 1).expand(-1, -1, self.dim)
        )
        gathered = gathered.reshape(B, S, -1, self.dim)  # [B, S, topk, dim]
        logits = torch.einsum("bshd,bskd->bshk", q, gathered).relu()
        return torch.einsum("bshk,h->bsk", logits, self.head_weight)


def test_training_the_indexer_lowers_the_loss(device):
    g = generator(11)
    B, H, S, L, D, topk, d_model = 1, 4, 16, 32, 32, 12, 24
    x = torch.randn(B, L, d_model, generator=g).to(device)
    query = randn((B, H, S, D), seed=5, device=device, scale=2.0)
    key = randn((B, L, D), seed=6, device=device)
    chunk_offset = L - S
    rows = torch.arange(S)[:, None] + chunk_offset
    indices = (torch.rand(B, S, topk, generator=g) * (rows + 1)).long()  # causal keys
    indices[:, :, -2:] = -1  # padding takes no part
    indices = indices.to(device)

    indexer = TinyIndexer(d_model, heads=2, dim=8, g=g).to(device)
    opt = torch.optim.Adam(indexer.parameters(), lr=3e-2)
    losses = []
    for _ in range(8):
        score = indexer(x[:, chunk_offset:], x, indices)
        loss = compute_index_loss_sparse(
            query, key, score, indices, D**-0.5, chunk_offset, reduction="mean"
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < 0.7 * losses[0], losses
