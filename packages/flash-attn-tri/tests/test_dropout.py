"""Dropout: the kernel's keep mask (regenerated from the same counter-based stream) applied in
the reference reproduces the forward and all three gradients, i.e. forward and backward use
one mask; the mask depends on the seed and keeps about 1 - p of the entries."""

import pytest
import torch

from flash_attn_tri import flash_attn_func, flash_attn_varlen_func
from flash_attn_tri.attention import _draw_rng_state, _dropout_mask
from flash_attn_tri.reference import attention_varlen_ref
from tri_shared.testing import randn

_seed = iter(range(30_000, 1_000_000))


def _mask_for_next_call(seed, device, batch, heads, sq, sk, p):
    """The mask the next kernel call will use when torch's generator is seeded with ``seed``."""
    torch.manual_seed(seed)
    mask = _dropout_mask(_draw_rng_state(device), batch, heads, sq, sk, p)
    torch.manual_seed(seed)
    return mask


@pytest.mark.parametrize(("causal", "dtype"), [(False, torch.float32), (True, torch.float16)])
def test_dropout_matches_reference_with_kernel_mask(check_against_reference, device, causal, dtype):
    batch, sq, sk, heads, heads_k, d, p = 2, 45, 70, 4, 2, 40, 0.17
    q = randn((batch, sq, heads, d), seed=next(_seed), dtype=dtype, device=device).requires_grad_()
    k = randn(
        (batch, sk, heads_k, d), seed=next(_seed), dtype=dtype, device=device
    ).requires_grad_()
    v = randn(
        (batch, sk, heads_k, d), seed=next(_seed), dtype=dtype, device=device
    ).requires_grad_()
    mask = _mask_for_next_call(7, device, batch, heads, sq, sk, p)
    out = flash_attn_func(q, k, v, dropout_p=p, causal=causal)
    opts = {"causal": causal, "dropout_p": p, "dropout_mask": mask}
    grad_out = randn(out.shape, seed=next(_seed), dtype=dtype, device=device)
    check_against_reference(out, q, k, v, grad_out, **opts)


def test_dropout_varlen(check_grads, device):
    lens_q, lens_k, heads, d, p = [20, 37], [37, 9], 2, 32, 0.3
    cq = torch.tensor([0, 20, 57], dtype=torch.int32, device=device)
    ck = torch.tensor([0, 37, 46], dtype=torch.int32, device=device)
    q = randn((57, heads, d), seed=next(_seed), device=device).requires_grad_()
    k = randn((46, heads, d), seed=next(_seed), device=device).requires_grad_()
    v = randn((46, heads, d), seed=next(_seed), device=device).requires_grad_()
    mask = _mask_for_next_call(11, device, 2, heads, max(lens_q), max(lens_k), p)
    out = flash_attn_varlen_func(q, k, v, cq, ck, max(lens_q), max(lens_k), dropout_p=p)
    opts = {"dropout_p": p, "dropout_mask": mask}
    ref64, _ = attention_varlen_ref(
        q.double(), k.double(), v.double(), cq, ck, compute_dtype=torch.float64, **opts
    )
    ref32, _ = attention_varlen_ref(q, k, v, cq, ck, **opts)
    grad_out = randn(out.shape, seed=next(_seed), device=device)
    check_grads(out, ref64, ref32, (q, k, v), grad_out)


def test_mask_statistics_and_seed(device):
    p = 0.25
    rng = torch.tensor([123, 4], dtype=torch.int64, device=device)
    mask = _dropout_mask(rng, 2, 2, 64, 200, p)
    kept = mask.float().mean().item()
    # 51200 Bernoulli draws: the standard deviation of the kept fraction is about 0.002
    assert abs(kept - (1 - p)) < 0.01
    assert torch.equal(mask, _dropout_mask(rng, 2, 2, 64, 200, p))
    other = _dropout_mask(
        torch.tensor([124, 4], dtype=torch.int64, device=device), 2, 2, 64, 200, p
    )
    assert not torch.equal(mask, other)
    # heads and batches draw different streams
    assert not torch.equal(mask[0, 0], mask[0, 1]) and not torch.equal(mask[0, 0], mask[1, 0])


def test_dropout_is_random_between_calls(device):
    q = randn((1, 33, 2, 32), seed=next(_seed), device=device)
    a = flash_attn_func(q, q, q, dropout_p=0.5)
    b = flash_attn_func(q, q, q, dropout_p=0.5)
    assert not torch.equal(a, b)
