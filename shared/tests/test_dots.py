"""tri_shared.dots: the fp32 rule for matrix products inside kernels."""

import pytest
import torch
import triton
import triton.language as tl

from tri_shared.dots import dot, ieee_dots


@triton.jit
def _matmul_kernel(
    a, b, c, out, M: tl.constexpr, N: tl.constexpr, K: tl.constexpr, IEEE: tl.constexpr
):
    rm = tl.arange(0, M)
    rn = tl.arange(0, N)
    rk = tl.arange(0, K)
    x = tl.load(a + rm[:, None] * K + rk[None, :])
    y = tl.load(b + rk[:, None] * N + rn[None, :])
    acc = tl.load(c + rm[:, None] * N + rn[None, :])
    tl.store(out + rm[:, None] * N + rn[None, :], dot(x, y, IEEE, acc))


def test_ieee_dots_rule():
    assert ieee_dots(torch.float32)
    assert not ieee_dots(torch.float16) and not ieee_dots(torch.bfloat16)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_dot_adds_the_accumulator(device, dtype):
    M, N, K = 16, 32, 64
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(M, K, generator=gen).to(device, dtype)
    b = torch.randn(K, N, generator=gen).to(device, dtype)
    c = torch.randn(M, N, generator=gen).to(device)
    out = torch.empty(M, N, device=device)
    _matmul_kernel[(1,)](a, b, c, out, M=M, N=N, K=K, IEEE=ieee_dots(dtype))
    want = a.double() @ b.double() + c.double()
    # exact fp32 products for fp32 inputs; fp16 inputs are exact in fp32 products as well
    torch.testing.assert_close(out.double(), want, rtol=1e-5, atol=1e-4)
