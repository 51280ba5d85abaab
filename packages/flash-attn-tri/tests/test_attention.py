"""Forward and backward of flash_attn_func against the reference: odd lengths, GQA, head
dims, causal (bottom-right), windows, softcap, ALiBi, empty rows, packed wrappers."""

import pytest
import torch

from flash_attn_tri import flash_attn_func, flash_attn_kvpacked_func, flash_attn_qkvpacked_func
from flash_attn_tri.attention import _descriptor
from flash_attn_tri.reference import attention_ref
from tri_shared.testing import assert_close, poison, randn

_seed = iter(range(10_000, 1_000_000))


def make(shape, dtype, device, scale=1.0):
    t = randn(shape, seed=next(_seed), dtype=dtype, device=device, scale=scale)
    return t.requires_grad_()


def run_case(
    check_grads,
    device,
    *,
    batch=1,
    sq=17,
    sk=17,
    heads=2,
    heads_k=2,
    d=40,
    dv=None,
    dtype=torch.float16,
    **opts,
):
    dv = d if dv is None else dv
    q = make((batch, sq, heads, d), dtype, device)
    k = make((batch, sk, heads_k, d), dtype, device)
    v = make((batch, sk, heads_k, dv), dtype, device)
    out, lse, none = flash_attn_func(q, k, v, return_attn_probs=True, **opts)
    assert none is None
    ref_opts = {
        n: opts[n]
        for n in ("softmax_scale", "causal", "window_size", "softcap", "alibi_slopes")
        if n in opts
    }
    ref64, lse64 = attention_ref(
        q.double(), k.double(), v.double(), compute_dtype=torch.float64, **ref_opts
    )
    reflow, _ = attention_ref(q, k, v, compute_dtype=dtype, **ref_opts)
    assert out.shape == (batch, sq, heads, dv) and out.dtype == dtype
    assert lse.shape == (batch, heads, sq) and lse.dtype == torch.float32
    # lse: +inf exactly where the row sees no key, within fp32 rounding elsewhere
    assert torch.equal(torch.isinf(lse), torch.isinf(lse64))
    fin = torch.isfinite(lse64)
    if fin.any():
        assert_close(lse[fin], lse64[fin], max_rel_err=1e-5, name="lse")
    grad_out = randn(out.shape, seed=next(_seed), dtype=dtype, device=device)
    return check_grads(out, ref64, reflow, (q, k, v), grad_out)


@pytest.mark.parametrize(
    ("sq", "sk", "causal", "dtype"),
    [
        (1, 1, False, torch.float32),
        (1, 113, True, torch.float16),
        (17, 17, True, torch.float32),
        (113, 203, False, torch.float16),
        (113, 203, True, torch.float16),
        (203, 113, True, torch.float32),
        (203, 113, False, torch.float16),
        (113, 1, True, torch.float16),
    ],
)
def test_lengths_and_causal(check_grads, device, sq, sk, causal, dtype):
    run_case(check_grads, device, sq=sq, sk=sk, causal=causal, dtype=dtype)


@pytest.mark.parametrize(("d", "dv"), [(8, 8), (40, 40), (64, 64), (96, 96), (192, 128), (64, 40)])
def test_head_dims(check_grads, device, d, dv):
    run_case(check_grads, device, sq=37, sk=45, d=d, dv=dv, causal=d == 96)


@pytest.mark.parametrize(("heads", "heads_k"), [(4, 2), (4, 1)])
def test_gqa_mqa(check_grads, device, heads, heads_k):
    run_case(check_grads, device, batch=2, sq=45, sk=70, heads=heads, heads_k=heads_k, causal=True)


@pytest.mark.parametrize(
    ("window", "causal", "sq", "sk"),
    [
        ((16, 0), False, 113, 113),
        ((-1, 7), False, 70, 113),
        ((10, -1), False, 113, 70),
        ((0, 0), False, 50, 50),
        ((24, 3), True, 113, 203),
        ((5, 9), False, 203, 113),
    ],
)
def test_window(check_grads, device, window, causal, sq, sk):
    run_case(
        check_grads, device, sq=sq, sk=sk, window_size=window, causal=causal, dtype=torch.float32
    )


@pytest.mark.parametrize(("causal", "dtype"), [(False, torch.float32), (True, torch.float16)])
def test_softcap(check_grads, device, causal, dtype):
    # a large scale puts logits well into tanh's curved region
    run_case(
        check_grads,
        device,
        sq=45,
        sk=70,
        softcap=5.0,
        softmax_scale=0.5,
        causal=causal,
        dtype=dtype,
    )


@pytest.mark.parametrize(("per_batch", "causal"), [(False, False), (True, True)])
def test_alibi(check_grads, device, per_batch, causal):
    shape = (2, 4) if per_batch else (4,)
    slopes = torch.rand(shape, device=device) * 0.5 + 0.05
    run_case(check_grads, device, batch=2, heads=4, heads_k=2, sq=45, sk=70, causal=causal,
             alibi_slopes=slopes, dtype=torch.float32)  # fmt: skip


def test_softmax_scale_and_everything_at_once(check_grads, device):
    slopes = torch.rand(4, device=device) * 0.3
    run_case(check_grads, device, heads=4, heads_k=1, sq=70, sk=45, d=40, dv=64, causal=True,
             window_size=(20, -1), softcap=3.0, softmax_scale=0.3, alibi_slopes=slopes)  # fmt: skip


@pytest.mark.parametrize("scale", [0.7, 0.0, -0.4])
def test_softmax_scale_sign(check_grads, device, scale):
    # a positive scale takes the forward's folded-scale update (the row maximum of the raw
    # scores, scaled), zero and negative scales the general one
    run_case(check_grads, device, sq=45, sk=70, causal=True, softmax_scale=scale,
             dtype=torch.float32)  # fmt: skip


def test_rows_without_keys(check_grads, device):
    # causal with seqlen_q > seqlen_k: the first rows see no key -> out 0, lse +inf, grad 0
    dq, _, _ = run_case(check_grads, device, sq=50, sk=20, causal=True, dtype=torch.float32)
    assert torch.equal(dq[:, :30], torch.zeros_like(dq[:, :30]))


@pytest.mark.parametrize("empty", ["keys", "queries"])
def test_empty_sequences(device, empty):
    # no keys: out 0, lse +inf, every gradient 0; no queries: empty out, zero gradients
    sq, sk = (7, 0) if empty == "keys" else (0, 7)
    q = make((2, sq, 2, 16), torch.float32, device).requires_grad_()
    k = make((2, sk, 2, 16), torch.float32, device).requires_grad_()
    v = make((2, sk, 2, 16), torch.float32, device).requires_grad_()
    out, lse, _ = flash_attn_func(q, k, v, return_attn_probs=True)
    assert out.shape == (2, sq, 2, 16) and lse.shape == (2, 2, sq)
    assert torch.equal(out, torch.zeros_like(out))
    assert bool((lse == float("inf")).all())
    grads = torch.autograd.grad(out, (q, k, v), torch.ones_like(out))
    for g, x in zip(grads, (q, k, v), strict=True):
        assert g.shape == x.shape and torch.equal(g, torch.zeros_like(g))


def test_output_written_everywhere(device):
    # poisoned preallocated buffers are not part of the API; instead check no NaN leaks from
    # uninitialised memory: fill the caching allocator with NaN first, then run.
    junk = poison(torch.empty(1 << 16, device=device))
    del junk
    q = make((2, 33, 2, 40), torch.float16, device)
    out = flash_attn_func(q, q, q)
    assert torch.isfinite(out).all()


def test_qkvpacked(check_against_reference, device):
    qkv = make((2, 45, 3, 2, 40), torch.float16, device)
    out = flash_attn_qkvpacked_func(qkv, causal=True)
    q, k, v = qkv.unbind(2)
    grad_out = randn(out.shape, seed=next(_seed), dtype=torch.float16, device=device)
    check_against_reference(out, q, k, v, grad_out, inputs=(qkv,), names=("dqkv",), causal=True)


def test_kvpacked(check_against_reference, device):
    q = make((1, 33, 4, 64), torch.float16, device)
    kv = make((1, 70, 2, 2, 64), torch.float16, device)
    out = flash_attn_kvpacked_func(q, kv, window_size=(30, 10))
    k, v = kv.unbind(2)
    opts = {"window_size": (30, 10)}
    grad_out = randn(out.shape, seed=next(_seed), dtype=torch.float16, device=device)
    check_against_reference(out, q, k, v, grad_out, inputs=(q, kv), names=("dq", "dkv"), **opts)


def test_strided_inputs(check_against_reference, device):
    # q, k, v as non-contiguous views (heads and seq swapped in memory)
    base = make((1, 2, 45, 3, 40), torch.float32, device)
    q, k, v = (base[:, :, :, i].transpose(1, 2) for i in range(3))
    out = flash_attn_func(q, k, v, causal=True)
    grad_out = randn(out.shape, seed=next(_seed), device=device)
    check_against_reference(out, q, k, v, grad_out, inputs=(base,), names=("dbase",), causal=True)


def test_unaligned_inputs_use_pointer_path(check_against_reference, device):
    # rows of 41 fp16 values (82 bytes): no tensor descriptor can address them, so the
    # forward falls back to pointer loads; results must be the same
    base = make((2, 37, 3, 3, 41), torch.float16, device)
    q, k, v = (base[:, :, :, i, :40] for i in range(3))
    assert _descriptor(q) is None
    out = flash_attn_func(q, k, v, causal=True)
    grad_out = randn(out.shape, seed=next(_seed), dtype=torch.float16, device=device)
    check_against_reference(out, q, k, v, grad_out, inputs=(base,), names=("dbase",), causal=True)
