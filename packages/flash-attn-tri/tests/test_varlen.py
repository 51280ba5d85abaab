"""flash_attn_varlen_func against the per-sequence reference: empty sequences, different query
and key lengths, GQA, causal, windows, ALiBi per sequence."""

import pytest
import torch

from flash_attn_tri import flash_attn_varlen_func
from flash_attn_tri.reference import attention_varlen_ref
from tri_shared.testing import assert_close, randn

_seed = iter(range(20_000, 1_000_000))


def cu(lengths, device):
    return torch.tensor(
        [0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32, device=device
    )


@pytest.mark.parametrize(
    ("lens_q", "lens_k", "opts", "dtype"),
    [
        ([17, 0, 113, 1], [17, 5, 113, 40], {"causal": True}, torch.float16),
        ([30, 64, 0], [70, 1, 0], {}, torch.float32),
        ([45, 20], [20, 45], {"window_size": (8, 2)}, torch.float32),
        ([33, 50], [60, 50], {"causal": True, "softcap": 4.0}, torch.float16),
    ],
)
def test_varlen(check_grads, device, lens_q, lens_k, opts, dtype):
    heads, heads_k, d = 4, 2, 40
    cq, ck = cu(lens_q, device), cu(lens_k, device)
    q = randn(
        (sum(lens_q), heads, d), seed=next(_seed), dtype=dtype, device=device
    ).requires_grad_()
    k = randn(
        (sum(lens_k), heads_k, d), seed=next(_seed), dtype=dtype, device=device
    ).requires_grad_()
    v = randn(
        (sum(lens_k), heads_k, d), seed=next(_seed), dtype=dtype, device=device
    ).requires_grad_()
    out, lse, _ = flash_attn_varlen_func(
        q, k, v, cq, ck, max(lens_q), max(lens_k), return_attn_probs=True, **opts
    )
    assert out.shape == q.shape and lse.shape == (heads, sum(lens_q))
    ref64, lse64 = attention_varlen_ref(q.double(), k.double(), v.double(), cq, ck,
                                        compute_dtype=torch.float64, **opts)  # fmt: skip
    reflow, _ = attention_varlen_ref(q, k, v, cq, ck, compute_dtype=dtype, **opts)
    assert torch.equal(torch.isinf(lse), torch.isinf(lse64))
    fin = torch.isfinite(lse64)
    assert_close(lse[fin], lse64[fin], max_rel_err=1e-5, name="lse")
    grad_out = randn(out.shape, seed=next(_seed), dtype=dtype, device=device)
    _, dk, _ = check_grads(out, ref64, reflow, (q, k, v), grad_out)
    # keys of a sequence with no queries get exactly zero gradient
    if 0 in lens_q:
        b = lens_q.index(0)
        ks, ke = int(ck[b]), int(ck[b + 1])
        assert torch.equal(dk[ks:ke], torch.zeros_like(dk[ks:ke]))


def test_varlen_alibi_per_sequence(check_grads, device):
    lens = [23, 41]
    cq = cu(lens, device)
    heads = 2
    q, k, v = (
        randn((sum(lens), heads, 32), seed=next(_seed), device=device).requires_grad_()
        for _ in range(3)
    )
    slopes = torch.tensor([[0.1, 0.5], [0.25, 0.02]], device=device)
    out = flash_attn_varlen_func(q, k, v, cq, cq, 41, 41, causal=True, alibi_slopes=slopes)
    ref64, _ = attention_varlen_ref(q.double(), k.double(), v.double(), cq, cq, causal=True,
                                    alibi_slopes=slopes, compute_dtype=torch.float64)  # fmt: skip
    ref32, _ = attention_varlen_ref(q, k, v, cq, cq, causal=True, alibi_slopes=slopes)
    grad_out = randn(out.shape, seed=next(_seed), device=device)
    check_grads(out, ref64, ref32, (q, k, v), grad_out)
