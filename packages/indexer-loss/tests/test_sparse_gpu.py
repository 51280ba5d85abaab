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


def _both_kernels(monkeypatch, query, key, index_score, idx, scaling, off):
    """(loss, grad, target) from the Gluon (Hopper) forward and from the Triton forward."""
    outs = []
    for gluon in ("1", "0"):
        monkeypatch.setenv("INDEXER_LOSS_GLUON", gluon)
        x = index_score.clone().requires_grad_(True)
        loss = compute_index_loss_sparse(query, key, x, idx, scaling, off)
        loss.sum().backward()
        outs.append((loss, x.grad, sparse_attention_target(query, key, idx, scaling, off)))
    return outs


def _gluon_against_triton(monkeypatch, query, key, index_score, idx, scaling, off):
    """(loss, grad, target) of the Gluon forward, checked against the Triton forward's."""
    (loss, grad, p), (loss_t, grad_t, p_t) = _both_kernels(
        monkeypatch, query, key, index_score, idx, scaling, off
    )
    assert_close(loss, loss_t, max_rel_err=1e-4, name="loss, Gluon against Triton")
    assert_close(grad, grad_t, max_rel_err=1e-2, name="grad, Gluon against Triton")
    assert_close(p, p_t, max_rel_err=1e-4, name="target, Gluon against Triton")
    return loss, grad, p


@pytest.mark.parametrize(
    ("H", "S", "L", "topk", "D", "chunk_offset", "dtype"),
    [
        (64, 256, 8192, 2048, 128, None, torch.bfloat16),
        (48, 133, 700, 300, 64, 0, torch.float16),  # topk not a multiple of the key block
        (64, 70, 300, 100, 128, None, torch.bfloat16),  # a single key block
        (40, 129, 1000, 4096, 128, None, torch.bfloat16),
        (64, 64, 64, 257, 64, 0, torch.float16),
    ],
)
def test_hopper_kernel_matches_triton_kernel(monkeypatch, H, S, L, topk, D, chunk_offset, dtype):
    """The Gluon forward (Hopper, 33-64 heads, D 64/128) against the Triton kernel and the
    reference, with -1 padding, out-of-range and future indices."""
    from indexer_loss.sparse import _hopper_eligible

    query, key, index_score, idx, off = dsa_inputs(
        H, S, L, topk, D, seed=S, chunk_offset=chunk_offset
    )
    query, key, index_score = query.to(dtype), key.to(dtype), index_score.to(dtype)
    out_of_range = randint(0, 32, idx.shape, seed=S + 9, device="cuda") == 0
    idx = torch.where(out_of_range, L + 3, idx)
    if not _hopper_eligible(query, key):
        pytest.skip("the Gluon forward needs a Hopper GPU and a Triton with Gluon")
    scaling = D**-0.5
    loss, grad, p = _gluon_against_triton(monkeypatch, query, key, index_score, idx, scaling, off)
    rows = (0, min(S, 48))
    check_rows(query, key, index_score, idx, off, loss, grad, p, rows, scaling)


def test_hopper_kernel_64_bit_key_offsets(monkeypatch):
    """Keys spanning 2^31 elements take 64-bit row offsets in the Gluon forward too (forced
    here by lowering the limit): the same results as the Triton kernel and the reference."""
    import indexer_loss.sparse as sparse_mod
    from indexer_loss.sparse import _hopper_eligible

    H, S, L, topk, D = 48, 40, 500, 200, 128
    query, key, index_score, idx, off = dsa_inputs(H, S, L, topk, D, seed=41)
    if not _hopper_eligible(query, key):
        pytest.skip("the Gluon forward needs a Hopper GPU and a Triton with Gluon")
    monkeypatch.setattr(sparse_mod, "_OFFSET_LIMIT", 0)
    scaling = D**-0.5
    loss, grad, p = _gluon_against_triton(monkeypatch, query, key, index_score, idx, scaling, off)
    check_rows(query, key, index_score, idx, off, loss, grad, p, (0, S), scaling)


def test_unaligned_keys_take_the_triton_kernel(monkeypatch):
    # key rows 8 elements apart from a 16-element boundary: cp.async cannot copy 16 bytes
    # at a time, so the Gluon forward declines and the Triton kernel gives the same result
    from indexer_loss.sparse import _hopper_eligible

    H, S, L, topk, D = 64, 96, 512, 256, 128
    query, key, index_score, idx, off = dsa_inputs(H, S, L, topk, D, seed=11)
    wide = torch.zeros((1, L, D + 8), dtype=key.dtype, device="cuda")
    wide[..., :D] = key
    sliced = wide[..., :D]
    assert not _hopper_eligible(query, sliced)
    x = index_score.clone().requires_grad_(True)
    loss = compute_index_loss_sparse(query, sliced, x, idx, D**-0.5, off)
    loss.sum().backward()
    p = sparse_attention_target(query, sliced, idx, D**-0.5, off)
    check_rows(query, key, index_score, idx, off, loss, x.grad, p, (0, 32), D**-0.5)


@pytest.mark.parametrize(
    "case", ["block_0_invalid", "later_scores_overflow", "all_scores_far_below_0"]
)
def test_hopper_kernel_rows_that_need_the_exact_sweep(monkeypatch, case):
    """Sweep 1 of the Gluon kernel sums exp2(score − block 0's maximum − 64); rows where
    that overflows or block 0 has no valid key redo the sweep with an online maximum. Each
    case makes such rows (without the redo, these rows come out NaN or wrong)."""
    from indexer_loss.sparse import _hopper_eligible

    H, S, L, topk, D = 64, 40, 600, 300, 128
    query, key, index_score, idx, off = dsa_inputs(H, S, L, topk, D, seed=23)
    if case == "block_0_invalid":  # the first key block: padding (rows 0-19), future (20-29)
        idx[:, :20, :64] = -1
        idx[:, 20:30, :64] = L - 1
    else:
        # scores of about ±375 (base 2): block 0 picks small keys, later blocks large ones
        sign = 1.0 if case == "later_scores_overflow" else -1.0
        query = (query.float().abs() * 6).to(torch.bfloat16)
        key = (sign * key.float().abs() * 6).to(torch.bfloat16)
        if case == "later_scores_overflow":
            key[:, : off // 2] *= 0.01
            idx[:, :, :64] = randint(0, off // 2, (1, S, 64), seed=5, device="cuda")
    if not _hopper_eligible(query, key):
        pytest.skip("the Gluon forward needs a Hopper GPU and a Triton with Gluon")
    scaling = D**-0.5
    loss, grad, p = _gluon_against_triton(monkeypatch, query, key, index_score, idx, scaling, off)
    for out in (loss, grad, p):
        assert torch.isfinite(out).all()
    check_rows(query, key, index_score, idx, off, loss, grad, p, (0, S), scaling)


def test_hopper_kernel_nan_query_reaches_the_gradient(monkeypatch):
    """A NaN in one query row makes that row's target and gradient NaN in both forwards (the
    Gluon kernel's -1 mark for invalid entries does not swallow it); other rows stay finite."""
    from indexer_loss.sparse import _hopper_eligible

    H, S, L, topk, D = 64, 24, 300, 130, 128
    query, key, index_score, idx, off = dsa_inputs(H, S, L, topk, D, seed=31)
    query[0, 5, 7, 3] = float("nan")
    if not _hopper_eligible(query, key):
        pytest.skip("the Gluon forward needs a Hopper GPU and a Triton with Gluon")
    for loss, grad, p in _both_kernels(monkeypatch, query, key, index_score, idx, D**-0.5, off):
        has_valid = idx[0, 7].ge(0).any()
        assert has_valid
        assert grad[0, 7].isnan().any() and p[0, 7].isnan().any()
        others = torch.arange(S, device="cuda") != 7
        assert torch.isfinite(grad[0, others]).all() and torch.isfinite(p[0, others]).all()
        assert torch.isfinite(loss[0, others]).all()


def test_bf16_gradient_within_one_ulp_of_the_fp32_product():
    """For a bf16 index_score the forward keeps q − p in bf16, so the gradient is rounded
    twice; against the fp32 gradient rounded once it differs by at most one unit in the last
    place, with an upstream gradient of arbitrary row weights."""
    H, S, L, topk, D = 64, 256, 1024, 512, 128
    query, key, index_score, idx, off = dsa_inputs(H, S, L, topk, D, seed=31)
    weights = randn((1, S), seed=32, device="cuda")
    grads = []
    for x in (index_score.clone(), index_score.float()):
        x.requires_grad_(True)
        (compute_index_loss_sparse(query, key, x, idx, D**-0.5, off) * weights).sum().backward()
        grads.append(x.grad)
    grad, once = grads[0].float(), grads[1].to(torch.bfloat16).float()
    assert grads[0].dtype == torch.bfloat16
    # one unit in the last place of a bf16 value (8 significant bits)
    ulp = torch.where(once == 0, 0.0, torch.exp2(torch.floor(torch.log2(once.abs())) - 7))
    assert ((grad - once).abs() <= ulp).all()
