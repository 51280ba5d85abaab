"""The custom ops: schema and fake implementations pass torch.library.opcheck, and
torch.compile(fullgraph=True) traces forward and backward without graph breaks."""

import pytest
import torch

from flash_attn_tri import flash_attn_func, flash_attn_varlen_func
from flash_attn_tri.attention import _bwd_op, _fwd_op
from tri_shared.testing import assert_close, randn


def _inputs(device, dtype=torch.float32):
    q = randn((1, 20, 2, 16), seed=1, dtype=dtype, device=device).requires_grad_()
    k = randn((1, 24, 1, 16), seed=2, dtype=dtype, device=device).requires_grad_()
    v = randn((1, 24, 1, 16), seed=3, dtype=dtype, device=device).requires_grad_()
    return q, k, v


def test_opcheck(device):
    q, k, v = _inputs(device)
    args = (q, k, v, None, None, 20, 24, 0.25, -1, 0, 0.0, None, 0.0, None, False)
    torch.library.opcheck(
        _fwd_op, args, test_utils=("test_schema", "test_faketensor", "test_autograd_registration")
    )
    with torch.no_grad():
        out, lse = _fwd_op(*args)
    dout = torch.randn_like(out)
    bargs = (
        dout,
        q.detach(),
        k.detach(),
        v.detach(),
        out,
        lse,
        None,
        None,
        20,
        24,
        0.25,
        -1,
        0,
        0.0,
        None,
        0.0,
        None,
        False,
    )
    torch.library.opcheck(_bwd_op, bargs, test_utils=("test_schema", "test_faketensor"))


def test_opcheck_varlen(device):
    q = randn((30, 2, 16), seed=4, device=device)
    cu = torch.tensor([0, 10, 30], dtype=torch.int32, device=device)
    slopes = torch.tensor([0.1, 0.2], device=device)
    args = (q, q, q, cu, cu, 20, 20, 0.25, 4, 2, 3.0, slopes, 0.0, None, True)
    torch.library.opcheck(_fwd_op, args, test_utils=("test_schema", "test_faketensor"))


def test_compile_fullgraph(device, on_gpu):
    # CPU: aot_eager traces the same graph (inductor would need a C++ toolchain for the rest)
    backend = "inductor" if on_gpu else "aot_eager"
    q, k, v = _inputs(device)

    def f(q, k, v):
        return flash_attn_func(q, k, v, causal=True, softcap=2.0).sum() * 2

    torch._dynamo.reset()
    compiled = torch.compile(f, fullgraph=True, backend=backend)
    loss = compiled(q, k, v)
    grads = torch.autograd.grad(loss, (q, k, v))
    want_loss = f(q, k, v)
    want = torch.autograd.grad(want_loss, (q, k, v))
    assert_close(loss, want_loss, max_rel_err=1e-5, name="loss")
    for name, g, w in zip(("dq", "dk", "dv"), grads, want, strict=True):
        assert_close(g, w, max_rel_err=1e-5, name=name)


def test_compile_varlen_dropout(device, on_gpu):
    backend = "inductor" if on_gpu else "aot_eager"
    q = randn((30, 2, 16), seed=5, device=device).requires_grad_()
    cu = torch.tensor([0, 10, 30], dtype=torch.int32, device=device)

    def f(q):
        return flash_attn_varlen_func(q, q, q, cu, cu, 20, 20, dropout_p=0.2, causal=True)

    torch._dynamo.reset()
    compiled = torch.compile(f, fullgraph=True, backend=backend)
    out = compiled(q)
    (g,) = torch.autograd.grad(out.sum(), (q,))
    assert out.shape == q.shape and torch.isfinite(out).all() and torch.isfinite(g).all()


@pytest.mark.gpu
def test_cuda_graph_capture(device):
    q, k, v = _inputs(device, torch.bfloat16)
    q, k, v = (t.detach().requires_grad_() for t in (q, k, v))
    dout = torch.randn(1, 20, 2, 16, device=device, dtype=torch.bfloat16)

    def step():
        out = flash_attn_func(q, k, v, causal=True, dropout_p=0.1)
        return (out, *torch.autograd.grad(out, (q, k, v), dout))

    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(2):
            step()  # warm up: compile kernels outside the capture
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static = step()
    graph.replay()
    torch.cuda.synchronize()
    first = [t.clone() for t in static]
    graph.replay()
    torch.cuda.synchronize()
    assert all(torch.isfinite(t).all() for t in static)
    # dropout draws a fresh mask on every replay (the seed lives in a device tensor)
    assert not torch.equal(first[0], static[0])
