"""The dense (warm-up) indexer loss against its PyTorch reference: loss, reductions and the
gradient to index_score (against autograd through the reference), causal edges, odd shapes."""

import math

import pytest
import torch

from indexer_loss import compute_index_loss_dense
from indexer_loss.reference import index_loss_dense_ref
from tri_shared.testing import assert_close, randn

# (B, H, S, L, D, chunk_offset): causal edges (offset 0 and L − S), L not a multiple of the
# key blocks (64 / 128), rows past the last key (chunk_offset + t >= L: they see every key),
# H odd, D not a power of two and D above the 256 block (chunked head dim), S = 1.
CASES = [
    (1, 3, 33, 33, 32, 0),
    (2, 2, 17, 113, 40, 113 - 17),
    (1, 5, 40, 70, 64, 50),
    (1, 2, 1, 1, 16, 0),
    (1, 1, 9, 200, 96, 7),
    (1, 2, 20, 30, 576, 3),
    (1, 2, 24, 50, 192, 26),
    (1, 2, 150, 333, 32, 110),
]
LIMITS = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}


def _inputs(shape, dtype, device, seed, score_scale=2.0):
    B, H, S, L, D, _ = shape
    query = randn((B, H, S, D), seed=seed, dtype=dtype, device=device)
    key = randn((B, L, D), seed=seed + 1, dtype=dtype, device=device)
    index_score = randn((B, S, L), seed=seed + 2, dtype=dtype, device=device, scale=score_scale)
    return query, key, index_score


def _ref_loss_and_grad(query, key, index_score, off, g, **kw):
    x = index_score.detach().double().requires_grad_()
    scaling = query.shape[-1] ** -0.5
    ref = index_loss_dense_ref(query.double(), key.double(), x, scaling, off, **kw)
    ref.backward(g.double())
    return ref.detach(), x.grad


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("shape", CASES, ids=lambda s: "B{}H{}S{}L{}D{}off{}".format(*s))
def test_loss_and_grad_match_reference(shape, dtype, device):
    query, key, index_score = _inputs(shape, dtype, device, seed=sum(shape))
    off = shape[-1]
    x = index_score.clone().requires_grad_()
    loss = compute_index_loss_dense(query, key, x, shape[4] ** -0.5, off)
    assert loss.shape == (shape[0], shape[2]) and loss.dtype == torch.float32
    g = randn(loss.shape, seed=7, device=device)
    loss.backward(g)
    ref, ref_grad = _ref_loss_and_grad(query, key, index_score, off, g)
    assert_close(loss, ref, max_rel_err=LIMITS[dtype], name="loss")
    assert x.grad.dtype == dtype
    assert_close(x.grad, ref_grad, max_rel_err=LIMITS[dtype], name="grad")


def test_autotuned_launch_path(device, monkeypatch):
    """Large problems go through the autotuned kernels (other block sizes): same results."""
    import indexer_loss.dense as dense_mod

    monkeypatch.setattr(dense_mod, "_AUTOTUNE_MIN_WORK", 0)
    shape = (1, 3, 140, 300, 40, 200)
    query, key, index_score = _inputs(shape, torch.float16, device, seed=5)
    x = index_score.clone().requires_grad_()
    loss = compute_index_loss_dense(query, key, x, 40**-0.5, 200)
    g = randn(loss.shape, seed=6, device=device)
    loss.backward(g)
    ref, ref_grad = _ref_loss_and_grad(query, key, index_score, 200, g)
    assert_close(loss, ref, max_rel_err=2e-3, name="loss")
    assert_close(x.grad, ref_grad, max_rel_err=2e-3, name="grad")


def test_grad_is_q_minus_p_and_zero_on_future_keys(device):
    """The explicit rule: grad = g · (softmax(index_score) − p) on causal keys, exactly 0 on
    future keys, each row summing to 0."""
    B, H, S, L, D, off = 2, 3, 24, 40, 32, 5
    query, key, index_score = _inputs((B, H, S, L, D, off), torch.float32, device, seed=11)
    x = index_score.clone().requires_grad_()
    g = randn((B, S), seed=12, device=device)
    compute_index_loss_dense(query, key, x, 0.3, off).backward(g)
    pos = off + torch.arange(S, device=device)
    valid = torch.arange(L, device=device)[None, :] <= pos[:, None]
    s = torch.einsum("bhsd,bld->bhsl", query.double(), key.double()) * 0.3
    p = torch.softmax(s.masked_fill(~valid, -math.inf), -1).mean(1)
    q = torch.softmax(index_score.double().masked_fill(~valid, -math.inf), -1)
    expected = g.double()[:, :, None] * (q - p)
    assert_close(x.grad, expected, max_rel_err=1e-5, name="grad")
    assert torch.all(x.grad[:, ~valid] == 0)
    assert x.grad.sum(-1).abs().max().item() < 1e-5


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_reductions(reduction, device):
    shape = (2, 2, 19, 45, 32, 26)
    query, key, index_score = _inputs(shape, torch.float32, device, seed=21)
    x = index_score.clone().requires_grad_()
    loss = compute_index_loss_dense(query, key, x, 0.2, 26, reduction=reduction)
    g = randn(loss.shape, seed=22, device=device)
    loss.backward(g)
    xr = index_score.double().requires_grad_()
    ref = index_loss_dense_ref(query.double(), key.double(), xr, 0.2, 26, reduction=reduction)
    ref.backward(g.double())
    assert loss.shape == ref.shape
    assert_close(loss, ref, max_rel_err=1e-5, name="loss")
    assert_close(x.grad, xr.grad, max_rel_err=1e-5, name="grad")


def test_strided_inputs(device):
    """Views with any strides are read in place (query [B, S, H, D] transposed, a slice of a
    wider index_score, key with a padded row stride)."""
    B, H, S, L, D, off = 1, 3, 21, 37, 48, 16
    query = randn((B, S, H, D), seed=31, device=device).transpose(1, 2)
    key = randn((B, L, D + 8), seed=32, device=device)[..., :D]
    index_score = randn((B, S, L + 5), seed=33, device=device)[..., 2 : L + 2]
    x = index_score.detach().requires_grad_()
    loss = compute_index_loss_dense(query, key, x, D**-0.5, off)
    g = randn(loss.shape, seed=34, device=device)
    loss.backward(g)
    ref, ref_grad = _ref_loss_and_grad(query, key, index_score, off, g)
    assert_close(loss, ref, max_rel_err=1e-5, name="loss")
    assert_close(x.grad, ref_grad, max_rel_err=1e-5, name="grad")


def test_query_and_key_get_no_gradient(device):
    shape = (1, 2, 8, 12, 16, 4)
    query, key, index_score = _inputs(shape, torch.float32, device, seed=41)
    query.requires_grad_()
    key.requires_grad_()
    x = index_score.clone().requires_grad_()
    compute_index_loss_dense(query, key, x, 0.25, 4, reduction="sum").backward()
    assert query.grad is None and key.grad is None
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_no_keys_gives_zero_loss_and_grad(device):
    """L = 0: no row has a valid key, so loss 0, gradient 0, mean 0 (no division by 0)."""
    query = randn((2, 2, 5, 16), seed=51, device=device)
    key = randn((2, 0, 16), seed=52, device=device)
    x = torch.empty((2, 5, 0), device=device, requires_grad=True)
    loss = compute_index_loss_dense(query, key, x, 0.25)
    assert torch.equal(loss, torch.zeros(2, 5, device=device))
    mean = compute_index_loss_dense(query, key, x, 0.25, reduction="mean")
    assert mean.item() == 0.0
    mean.backward()
    assert x.grad.shape == (2, 5, 0)


def test_identical_distributions_give_zero_loss(device):
    """One head and index_score = the scaled scores: p = q, so the loss is 0 and so is the
    gradient."""
    B, H, S, L, D, off = 1, 1, 16, 16, 32, 0
    query, key, _ = _inputs((B, H, S, L, D, off), torch.float32, device, seed=61)
    x = (torch.einsum("bsd,bld->bsl", query[:, 0], key) * 0.2).requires_grad_()
    loss = compute_index_loss_dense(query, key, x, 0.2, off)
    loss.sum().backward()
    assert loss.abs().max().item() < 1e-5
    assert x.grad.abs().max().item() < 1e-5


def test_consistent_with_sparse_when_indices_enumerate_every_key(device):
    """With indices = 0..L-1 in every row (topk = L), the sparse loss is the dense loss."""
    from indexer_loss import compute_index_loss_sparse

    B, H, S, L, D, off = 2, 3, 13, 29, 32, 16
    query, key, index_score = _inputs((B, H, S, L, D, off), torch.float32, device, seed=71)
    indices = torch.arange(L, device=device, dtype=torch.int32).expand(B, S, L).contiguous()
    xd = index_score.clone().requires_grad_()
    xs = index_score.clone().requires_grad_()
    g = randn((B, S), seed=72, device=device)
    dense = compute_index_loss_dense(query, key, xd, 0.2, off)
    sparse = compute_index_loss_sparse(query, key, xs, indices, 0.2, off)
    dense.backward(g)
    sparse.backward(g)
    assert_close(dense, sparse, max_rel_err=1e-5, name="loss")
    assert_close(xd.grad, xs.grad, max_rel_err=1e-5, name="grad")


@pytest.mark.gpu
@pytest.mark.parametrize(("S", "L", "off"), [(2048, 2048, 0), (1000, 3000, 2000)])
def test_bf16_realistic(S, L, off, device):
    """bf16 at a realistic head count, against the fp32 reference."""
    shape = (1, 64, S, L, 128, off)
    query, key, index_score = _inputs(shape, torch.bfloat16, device, seed=81)
    x = index_score.clone().requires_grad_()
    loss = compute_index_loss_dense(query, key, x, 128**-0.5, off)
    g = randn(loss.shape, seed=82, device=device)
    loss.backward(g)
    ref, ref_grad = _ref_loss_and_grad(query.float(), key.float(), index_score, off, g)
    assert_close(loss, ref.float(), max_rel_err=1e-2, name="loss")
    assert_close(x.grad, ref_grad.float(), max_rel_err=1e-2, name="grad")


@pytest.mark.gpu
def test_bf16_large_scores_stay_finite(device):
    """Scores of magnitude ~1e4 (large scaling and index scores): no NaN or Inf."""
    shape = (1, 16, 512, 1024, 128, 512)
    query, key, index_score = _inputs(shape, torch.bfloat16, device, seed=91, score_scale=1e4)
    x = index_score.clone().requires_grad_()
    loss = compute_index_loss_dense(query, key, x, 100.0, 512)
    loss.sum().backward()
    assert torch.isfinite(loss).all()
    assert torch.isfinite(x.grad).all()
