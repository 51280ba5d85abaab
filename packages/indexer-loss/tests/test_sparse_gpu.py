"""The sparse indexer loss on a GPU in bf16 at realistic sizes: finite everywhere, close to
the fp32 reference on slices of query rows (the full reference would not fit), every output
element written."""

import pytest
import torch

from indexer_loss import compute_index_loss_sparse, sparse_attention_target
from indexer_loss.reference import index_loss_sparse_ref, sparse_attention_target_ref
from tri_shared.testing import assert_close, randint, randn

pytestmark = pytest.mark.gpu


def dsa_inputs(H, S, L, topk, D, *, seed, score_scale=1.0, chunk_offset=None):
    """bf16 inputs of one chunk at the end of a sequence of L keys (chunk_offset = L − S),
    indices: distinct-ish causal positions with some −1 padding."""
    dev = "cuda"
    off = L - S if chunk_offset is None else chunk_offset
    query = randn((1, H, S, D), seed=seed, dtype=torch.bfloat16, device=dev, scale=score_scale)
    key = randn((1, L, D), seed=seed + 1, dtype=torch.bfloat16, device=dev, scale=score_scale)
    index_score = randn((1, S, topk), seed=seed + 2, dtype=torch.bfloat16, device=dev)
    last = off + torch.arange(S, device=dev)
    u = randn((1, S, topk), seed=seed + 3, device=dev).abs().remainder(1.0)
    idx = (u * (last[None, :, None] + 1).float()).long()
    pad = randint(0, 16, (1, S, topk), seed=seed + 4, device=dev) == 0
    idx = torch.where(pad, -1, idx).to(torch.int32)
    return query, key, index_score, idx, off


def poison_allocator(nbytes):
    """Leave NaN in the caching allocator's free blocks so that an output element the kernel
    fails to write reads NaN."""
    junk = torch.full((nbytes // 4,), float("nan"), device="cuda")
    del junk


def check_rows(query, key, index_score, idx, off, loss, grad, p, rows, scaling):
    """Compare rows ``rows`` (a slice) with the fp32 reference on that slice alone."""
    a, b = rows
    q = query[:, :, a:b]
    x = index_score[:, a:b].detach().float().requires_grad_(True)
    ref = index_loss_sparse_ref(q, key, x, idx[:, a:b], scaling, off + a)
    ref.sum().backward()
    assert_close(loss[:, a:b], ref, max_rel_err=1e-2, name=f"loss rows {a}:{b}")
    assert_close(grad[:, a:b], x.grad, max_rel_err=3e-2, name=f"grad rows {a}:{b}")
    p_ref = sparse_attention_target_ref(q, key, idx[:, a:b], scaling, off + a)
    assert_close(p[:, a:b], p_ref, max_rel_err=1e-2, name=f"target rows {a}:{b}")


@pytest.mark.parametrize(
    ("H", "S", "L", "topk", "D"),
    [(64, 4096, 8192, 2048, 128), (128, 4096, 8192, 2048, 576)],
)
def test_dsa_sizes_bf16(H, S, L, topk, D):
    query, key, index_score, idx, off = dsa_inputs(H, S, L, topk, D, seed=H + D)
    scaling = D**-0.5
    poison_allocator(4 * S * topk * 3)
    x = index_score.clone().requires_grad_(True)
    loss = compute_index_loss_sparse(query, key, x, idx, scaling, off)
    loss.sum().backward()
    poison_allocator(4 * S * topk * 2)
    p = sparse_attention_target(query, key, idx, scaling, off)
    assert torch.isfinite(loss).all()
    assert torch.isfinite(x.grad).all()
    assert torch.isfinite(p).all()
    assert x.grad.dtype == torch.bfloat16
    for rows in [(0, 64), (S // 2, S // 2 + 64), (S - 64, S)]:
        check_rows(query, key, index_score, idx, off, loss, x.grad, p, rows, scaling)


@pytest.mark.parametrize("D", [128, 576])
def test_large_scores_stay_finite_bf16(D):
    # Attention scores and index scores of magnitude ~1e4.
    H, S, L, topk = 16, 512, 1024, 256
    query, key, index_score, idx, off = dsa_inputs(H, S, L, topk, D, seed=7, score_scale=10.0)
    x = (index_score.float() * 1e4).to(torch.bfloat16).requires_grad_(True)
    for reduction in ("none", "sum", "mean"):
        loss = compute_index_loss_sparse(query, key, x, idx, 1.0, off, reduction=reduction)
        loss.sum().backward()
        assert torch.isfinite(loss).all(), reduction
        assert torch.isfinite(x.grad).all(), reduction
        x.grad = None
    p = sparse_attention_target(query, key, idx, 1.0, off)
    assert torch.isfinite(p).all()
    ref = sparse_attention_target_ref(query[:, :, :64], key, idx[:, :64], 1.0, off)
    assert_close(p[:, :64], ref, max_rel_err=1e-2, name="target at large scores")


def test_fp16_and_fp32_inputs_mid_size():
    # fp32 goes through exact fp32 dot products; fp16 through the tensor cores.
    H, S, L, topk, D = 20, 300, 700, 200, 192
    for dtype, tol in ((torch.float32, 1e-5), (torch.float16, 2e-3)):
        q, k, x, idx, off = dsa_inputs(H, S, L, topk, D, seed=3)
        q, k, x = q.to(dtype), k.to(dtype), x.to(dtype).requires_grad_(True)
        loss = compute_index_loss_sparse(q, k, x, idx, D**-0.5, off)
        loss.sum().backward()
        xr = x.detach().double().requires_grad_(True)
        ref = index_loss_sparse_ref(q.double(), k.double(), xr, idx, D**-0.5, off)
        ref.sum().backward()
        assert_close(loss, ref, max_rel_err=tol, name=f"loss {dtype}")
        assert_close(x.grad, xr.grad, max_rel_err=3 * tol, name=f"grad {dtype}")
