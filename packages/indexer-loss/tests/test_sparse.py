"""The fused sparse indexer loss against its reference: loss, target and gradient, on small
odd shapes (interpreter on CPU, the same cases on a GPU)."""

import pytest
import torch

from indexer_loss import compute_index_loss_sparse, sparse_attention_target
from indexer_loss.reference import index_loss_sparse_ref, sparse_attention_target_ref
from tri_shared.testing import assert_close, randint, randn

TOL = {torch.float32: 1e-5, torch.float16: 2e-3}


def make_inputs(B, H, S, D, L, topk, *, dtype, device, seed, chunk_offset=0, empty_rows=()):
    """Random inputs with every kind of entry: valid keys, −1 padding, out-of-range and
    future positions, duplicates; ``empty_rows`` (b, t) pairs get no valid entry at all."""
    query = randn((B, H, S, D), seed=seed, dtype=dtype, device=device)
    key = randn((B, L, D), seed=seed + 1, dtype=dtype, device=device)
    index_score = randn((B, S, topk), seed=seed + 2, dtype=dtype, device=device, scale=2.0)
    # Mostly causal-valid positions, drawn per row below its own limit.
    last = (chunk_offset + torch.arange(S, device=device)).clamp(max=L - 1)
    u = randn((B, S, topk), seed=seed + 3, device=device).abs().remainder(1.0)
    idx = (u * (last[None, :, None] + 1).float()).long()
    kind = randint(0, 20, (B, S, topk), seed=seed + 4, device=device)
    idx = torch.where(kind == 0, torch.full_like(idx, -1), idx)  # padding
    idx = torch.where(kind == 1, idx + L, idx)  # out of range
    idx = torch.where(kind == 2, -5 - idx, idx)  # negative, not -1
    idx = torch.where(kind == 3, last[None, :, None] + 1 + idx, idx)  # future (or past L)
    if topk >= 4:
        idx[..., 1] = idx[..., 0]  # duplicates count twice
        idx[..., topk // 2] = idx[..., 0]
    for b, t in empty_rows:
        idx[b, t] = -1
    return query, key, index_score, idx


def grad_through_reference(query, key, index_score, indices, scaling, chunk_offset, reduction):
    x = index_score.detach().double().requires_grad_(True)
    loss = index_loss_sparse_ref(
        query.double(), key.double(), x, indices, scaling, chunk_offset, reduction=reduction
    )
    g = randn(loss.shape, seed=99, dtype=torch.float64, device=loss.device) + 2.0
    (loss * g).sum().backward()
    return loss, g, x.grad


def check_case(
    B,
    H,
    S,
    D,
    L,
    topk,
    *,
    dtype,
    device,
    seed,
    chunk_offset=0,
    empty_rows=(),
    reductions=("none",),
    index_dtype=torch.int64,
):
    query, key, index_score, idx = make_inputs(
        B,
        H,
        S,
        D,
        L,
        topk,
        dtype=dtype,
        device=device,
        seed=seed,
        chunk_offset=chunk_offset,
        empty_rows=empty_rows,
    )
    idx = idx.to(index_dtype)
    scaling = D**-0.5
    tol = TOL[dtype]

    p = sparse_attention_target(query, key, idx, scaling, chunk_offset)
    p_ref = sparse_attention_target_ref(query.double(), key.double(), idx, scaling, chunk_offset)
    assert p.dtype == torch.float32
    assert_close(p, p_ref, max_rel_err=tol, name="target p")

    for reduction in reductions:
        x = index_score.detach().clone().requires_grad_(True)
        loss = compute_index_loss_sparse(
            query, key, x, idx, scaling, chunk_offset, reduction=reduction
        )
        loss_ref, g, grad_ref = grad_through_reference(
            query, key, index_score, idx, scaling, chunk_offset, reduction
        )
        assert loss.dtype == torch.float32
        assert loss.shape == loss_ref.shape
        assert_close(loss, loss_ref, max_rel_err=tol, name=f"loss ({reduction})")
        (loss * g.to(loss.dtype)).sum().backward()
        assert x.grad.dtype == dtype
        assert_close(x.grad, grad_ref, max_rel_err=3 * tol, name=f"grad ({reduction})")
        # The stated formula g · (q − p) on valid entries: each row sums to 0 (up to the
        # rounding of each entry to the output dtype).
        g64 = x.grad.double()
        slack = (2e-3 if dtype == torch.float16 else 1e-5) * g64.abs().sum(-1) + 1e-12
        assert torch.all(g64.sum(-1).abs() <= slack), "grad rows do not sum to 0"
    return query, key, index_score, idx


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_padding_out_of_range_duplicates(device, dtype):
    # topk 24 is not a power of two; H = 5 is not a multiple of the head block (16).
    check_case(
        2, 5, 17, 40, 40, 24, dtype=dtype, device=device, seed=1, reductions=("none", "sum", "mean")
    )


def test_chunk_offset_last_chunk(device):
    # The second half of a sequence: chunk_offset = L − S; int32 indices.
    check_case(
        1,
        3,
        16,
        32,
        48,
        20,
        dtype=torch.float32,
        device=device,
        seed=2,
        chunk_offset=32,
        index_dtype=torch.int32,
    )


def test_rows_with_no_valid_entry(device):
    _, _, _, _ = check_case(
        2,
        4,
        9,
        32,
        20,
        12,
        dtype=torch.float32,
        device=device,
        seed=3,
        empty_rows=[(0, 0), (1, 4), (1, 8)],
        reductions=("none", "mean"),
    )


def test_empty_rows_have_zero_loss_and_grad(device):
    query, key, index_score, idx = make_inputs(
        1, 2, 6, 16, 10, 8, dtype=torch.float32, device=device, seed=4, empty_rows=[(0, 2)]
    )
    x = index_score.clone().requires_grad_(True)
    loss = compute_index_loss_sparse(query, key, x, idx, 0.25)
    loss.sum().backward()
    assert loss[0, 2].item() == 0.0
    assert torch.all(x.grad[0, 2] == 0)
    # Everything masked: mean is 0 with a zero gradient, no NaN.
    x2 = index_score.clone().requires_grad_(True)
    mean = compute_index_loss_sparse(
        query, key, x2, torch.full_like(idx, -1), 0.25, reduction="mean"
    )
    mean.backward()
    assert mean.item() == 0.0
    assert torch.all(x2.grad == 0)


def test_more_heads_than_one_head_block(device):
    # 72 heads: one full block of 64 and a partial one.
    check_case(1, 72, 5, 32, 24, 20, dtype=torch.float32, device=device, seed=5)


@pytest.mark.parametrize("D", [160, 192])
def test_head_dim_above_the_d_block(device, D):
    # D > 128 is looped in chunks (32 for 160, 64 for 192).
    check_case(1, 3, 7, D, 16, 12, dtype=torch.float32, device=device, seed=6 + D)


def test_single_row_single_entry(device):
    check_case(
        1, 1, 1, 16, 1, 1, dtype=torch.float32, device=device, seed=7, reductions=("none", "sum")
    )


def test_invalid_entries_of_target_are_zero_and_rows_sum_to_one(device):
    query, key, _, idx = make_inputs(
        2, 3, 11, 24, 30, 16, dtype=torch.float32, device=device, seed=8, empty_rows=[(1, 1)]
    )
    p = sparse_attention_target(query, key, idx, 0.2)
    pos = torch.arange(11, device=device)[None, :, None]
    valid = (idx >= 0) & (idx < 30) & (idx <= pos)
    assert torch.all(p[~valid] == 0)
    sums = p.sum(-1)
    has = valid.any(-1)
    assert_close(sums[has], torch.ones_like(sums[has]), max_rel_err=1e-5, name="row sums")
    assert torch.all(sums[~has] == 0)


def test_query_and_key_get_no_gradient(device):
    query, key, index_score, idx = make_inputs(
        1, 2, 5, 16, 8, 8, dtype=torch.float32, device=device, seed=9
    )
    query.requires_grad_(True)
    key.requires_grad_(True)
    x = index_score.clone().requires_grad_(True)
    compute_index_loss_sparse(query, key, x, idx, 0.25, reduction="sum").backward()
    assert query.grad is None
    assert key.grad is None
    assert x.grad is not None
    assert torch.isfinite(x.grad).all()


def test_no_grad_path_matches(device):
    # Without a gradient the kernel does not store p; the loss must be the same.
    query, key, index_score, idx = make_inputs(
        1, 4, 8, 32, 16, 12, dtype=torch.float32, device=device, seed=10
    )
    ref = index_loss_sparse_ref(query.double(), key.double(), index_score.double(), idx, 0.3)
    with torch.no_grad():
        loss = compute_index_loss_sparse(query, key, index_score, idx, 0.3)
    assert_close(loss, ref, max_rel_err=1e-5, name="loss without grad")


def test_large_scores_stay_finite(device):
    # Scores of magnitude ~1e4: the softmaxes saturate but nothing overflows.
    query, key, index_score, idx = make_inputs(
        1, 4, 8, 32, 16, 12, dtype=torch.float32, device=device, seed=11
    )
    x = (index_score * 5e3).requires_grad_(True)
    loss = compute_index_loss_sparse(query * 30, key * 30, x, idx, 1.0)
    loss.sum().backward()
    ref = index_loss_sparse_ref(
        query.double() * 30, key.double() * 30, x.detach().double(), idx, 1.0
    )
    assert torch.isfinite(loss).all()
    assert torch.isfinite(x.grad).all()
    # index_score entries of ~1e4 (~1.4e4 in base 2) are spaced ~1e-3 apart in fp32, so each
    # log q carries ~1e-3 of rounding: against a loss of ~20 that is ~1e-4 relative, more
    # after a few roundings; 5e-4 still catches any real error (a lost entry, a wrong max).
    assert_close(loss, ref, max_rel_err=5e-4, name="loss at large scores")


@pytest.mark.parametrize(
    "config",
    [
        {"BLOCK_K": 16, "KT1": False, "KT2": False, "num_warps": 4, "num_stages": 2},
        {"BLOCK_K": 32, "KT1": True, "KT2": True, "num_warps": 4, "num_stages": 2},
        {"BLOCK_K": 32, "KT1": True, "KT2": False, "num_warps": 4, "num_stages": 2},
        {"BLOCK_K": 64, "KT1": False, "KT2": True, "num_warps": 8, "num_stages": 3},
    ],
)
def test_every_launch_configuration(device, monkeypatch, config):
    # The bench sweeps these layouts; each must give the reference result (several head
    # blocks, D in chunks, top-k over several blocks).
    import indexer_loss.sparse as sparse_mod

    monkeypatch.setattr(sparse_mod, "_launch_config", lambda *_: dict(config))
    check_case(1, 70, 4, 160, 30, 40, dtype=torch.float32, device=device, seed=12)
    check_case(2, 6, 5, 64, 30, 40, dtype=torch.float16, device=device, seed=13)


def test_64_bit_key_offsets(device, monkeypatch):
    # Key-row offsets are 32-bit unless one batch's keys span 2^31 elements; the 64-bit path
    # (forced here by lowering the limit) gives the same results, one and several head
    # blocks, D in one chunk and in several.
    import indexer_loss.sparse as sparse_mod

    monkeypatch.setattr(sparse_mod, "_OFFSET_LIMIT", 0)
    check_case(2, 3, 7, 40, 23, 19, dtype=torch.float32, device=device, seed=21)
    check_case(1, 70, 4, 160, 30, 40, dtype=torch.float16, device=device, seed=22)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize(("topk", "max_block"), [(1, None), (37, None), (300, None), (300, 64)])
def test_row_loss_kernel_from_marked_target(monkeypatch, device, dtype, topk, max_block):
    """The loss kernel that runs after the Hopper target kernel, fed the exact target with
    -1 on invalid entries: loss, log-sum-exp and count of the valid index scores, and
    q − p into its own buffer, as the reference gives them; the target is left as it was.
    ``max_block`` below topk makes the kernel take two passes over each row in blocks."""
    import indexer_loss.sparse as sparse_mod
    from indexer_loss.sparse import _diff_dtype, _row_loss

    if max_block is not None:
        monkeypatch.setattr(sparse_mod, "_ROW_LOSS_MAX_BLOCK", max_block)

    B, H, S, D, L, off = 2, 3, 19, 16, 40, 5
    query, key, index_score, idx = make_inputs(
        B, H, S, D, L, topk, dtype=dtype, device=device, seed=topk, chunk_offset=off,
        empty_rows=((1, 3),),
    )  # fmt: skip
    scaling = D**-0.5
    last = off + torch.arange(S, device=device)
    valid = (idx >= 0) & (idx < L) & (idx <= last[None, :, None])
    p_ref = sparse_attention_target_ref(query.double(), key.double(), idx, scaling, off)
    target = torch.where(valid, p_ref.float(), -1.0).contiguous()
    loss = torch.empty((B, S), dtype=torch.float32, device=device)
    lse = torch.empty_like(loss)
    n_valid = torch.empty((B, S), dtype=torch.int32, device=device)
    diff = torch.full(target.shape, float("nan"), dtype=_diff_dtype(index_score), device=device)
    target_before = target.clone()
    _row_loss(index_score, target, diff, loss, lse, n_valid, 1e-10)
    assert torch.equal(target, target_before)
    # without a gradient to come, the same loss and nothing else written
    loss_only = torch.empty_like(loss)
    _row_loss(index_score, target, None, loss_only, torch.empty_like(lse), n_valid, 1e-10)
    assert torch.equal(loss_only, loss)
    assert torch.equal(target, target_before)

    x = index_score.detach().double().requires_grad_(True)
    loss_ref = index_loss_sparse_ref(query.double(), key.double(), x, idx, scaling, off)
    loss_ref.sum().backward()
    tol = TOL[dtype]
    assert_close(loss, loss_ref, max_rel_err=tol, name="loss")
    assert_close(diff, x.grad, max_rel_err=3 * tol, name="q - p")
    assert torch.equal(n_valid, valid.sum(-1).to(torch.int32))
    lse_ref = torch.where(valid, index_score.double(), float("-inf")).logsumexp(-1)
    rows = valid.any(-1)
    assert not rows.all()  # the empty row is there
    assert_close(lse[rows], lse_ref[rows], max_rel_err=tol, name="lse")
