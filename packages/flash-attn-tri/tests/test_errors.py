"""Every documented bad input raises the documented exception naming the argument."""

import pytest
import torch

from flash_attn_tri import (
    flash_attn_func,
    flash_attn_kvpacked_func,
    flash_attn_qkvpacked_func,
    flash_attn_varlen_func,
)


def qkv(device, dtype=torch.float16, d=32, dk=None, heads=4, heads_k=2, dv=None):
    q = torch.randn(1, 8, heads, d, dtype=dtype, device=device)
    k = torch.randn(1, 8, heads_k, dk or d, dtype=dtype, device=device)
    v = torch.randn(1, 8, heads_k, dv or d, dtype=dtype, device=device)
    return q, k, v


def test_dtype_mismatch(device):
    q, k, v = qkv(device)
    with pytest.raises(TypeError, match=r"^k: expected dtype float16"):
        flash_attn_func(q, k.float(), v)
    with pytest.raises(TypeError, match=r"^v: expected dtype float16"):
        flash_attn_func(q, k, v.float())


def test_unsupported_dtype(device):
    q, k, v = qkv(device)
    with pytest.raises(TypeError, match=r"^q: expected dtype in"):
        flash_attn_func(q.to(torch.int32), k, v)


def test_head_dim_mismatch(device):
    q, k, v = qkv(device, d=32, dk=40)
    with pytest.raises(ValueError, match=r"k: expected head dim 32"):
        flash_attn_func(q, k, v)


def test_heads_not_multiple(device):
    q, k, v = qkv(device, heads=5, heads_k=2)
    with pytest.raises(ValueError, match=r"q: expected a multiple"):
        flash_attn_func(q, k, v)


def test_v_heads(device):
    q, k, v = qkv(device)
    with pytest.raises(ValueError, match=r"v: expected 2 heads"):
        flash_attn_func(q, k, v[:, :, :1])


@pytest.mark.parametrize(("d", "dv", "name"), [(264, 264, "q"), (64, 320, "v")])
def test_head_dim_too_large(device, d, dv, name):
    q, k, v = qkv(device, d=d, dv=dv)
    with pytest.raises(ValueError, match=rf"{name}: expected a head dim between 1 and 256"):
        flash_attn_func(q, k, v)


def test_wrong_ndim(device):
    q, k, v = qkv(device)
    with pytest.raises(ValueError, match=r"^q: expected 4 dimensions"):
        flash_attn_func(q[0], k, v)


def test_batch_and_seqlen_mismatch(device):
    q, k, v = qkv(device)
    with pytest.raises(ValueError, match=r"k: expected batch"):
        flash_attn_func(q, torch.cat([k, k]), torch.cat([v, v]))
    with pytest.raises(ValueError, match=r"v: expected seqlen"):
        flash_attn_func(q, k, v[:, :5])


@pytest.mark.parametrize("window", [(-2, 0), (3, -5)])
def test_window_below_minus_one(device, window):
    q, k, v = qkv(device)
    with pytest.raises(ValueError, match=r"^window_size"):
        flash_attn_func(q, k, v, window_size=window)


def test_window_not_a_pair(device):
    q, k, v = qkv(device)
    with pytest.raises(ValueError, match=r"^window_size"):
        flash_attn_func(q, k, v, window_size=(1, 2, 3))
    with pytest.raises(TypeError, match=r"^window_size"):
        flash_attn_func(q, k, v, window_size=(1.5, 2))


@pytest.mark.parametrize("p", [-0.1, 1.0, 1.5])
def test_dropout_out_of_range(device, p):
    q, k, v = qkv(device)
    with pytest.raises(ValueError, match=r"^dropout_p"):
        flash_attn_func(q, k, v, dropout_p=p)


def test_softcap_negative(device):
    q, k, v = qkv(device)
    with pytest.raises(ValueError, match=r"^softcap"):
        flash_attn_func(q, k, v, softcap=-1.0)


@pytest.mark.parametrize("shape", [(3,), (2, 4), (1, 4, 1)])
def test_alibi_shape(device, shape):
    q, k, v = qkv(device)
    with pytest.raises(ValueError, match=r"^alibi_slopes"):
        flash_attn_func(q, k, v, alibi_slopes=torch.ones(shape, device=device))


def test_alibi_dtype(device):
    q, k, v = qkv(device)
    with pytest.raises(TypeError, match=r"^alibi_slopes"):
        flash_attn_func(q, k, v, alibi_slopes=torch.ones(4, device=device, dtype=torch.float16))


def varlen_args(device):
    q = torch.randn(10, 4, 32, dtype=torch.float16, device=device)
    k = torch.randn(12, 2, 32, dtype=torch.float16, device=device)
    cq = torch.tensor([0, 4, 10], dtype=torch.int32, device=device)
    ck = torch.tensor([0, 6, 12], dtype=torch.int32, device=device)
    return q, k, k.clone(), cq, ck


def test_cu_seqlens_dtype(device):
    q, k, v, cq, ck = varlen_args(device)
    with pytest.raises(TypeError, match=r"^cu_seqlens_q"):
        flash_attn_varlen_func(q, k, v, cq.long(), ck, 6, 6)
    with pytest.raises(TypeError, match=r"^cu_seqlens_k"):
        flash_attn_varlen_func(q, k, v, cq, ck.float(), 6, 6)


def test_cu_seqlens_length(device):
    q, k, v, cq, ck = varlen_args(device)
    with pytest.raises(ValueError, match=r"^cu_seqlens_k"):
        flash_attn_varlen_func(q, k, v, cq, ck[:2], 6, 6)
    with pytest.raises(ValueError, match=r"^cu_seqlens_q"):
        flash_attn_varlen_func(q, k, v, cq[:0], ck[:0], 6, 6)
    with pytest.raises(ValueError, match=r"^cu_seqlens_q"):
        flash_attn_varlen_func(q, k, v, cq[None], ck, 6, 6)


def test_varlen_max_seqlen(device):
    q, k, v, cq, ck = varlen_args(device)
    with pytest.raises(ValueError, match=r"^max_seqlen_k"):
        flash_attn_varlen_func(q, k, v, cq, ck, 6, -1)


def test_varlen_alibi_batch(device):
    q, k, v, cq, ck = varlen_args(device)
    with pytest.raises(ValueError, match=r"^alibi_slopes"):
        flash_attn_varlen_func(q, k, v, cq, ck, 6, 6, alibi_slopes=torch.ones(3, 4, device=device))


def test_packed_shapes(device):
    with pytest.raises(ValueError, match=r"^qkv"):
        flash_attn_qkvpacked_func(torch.randn(1, 8, 2, 2, 32, device=device))
    q = torch.randn(1, 8, 2, 32, device=device)
    with pytest.raises(ValueError, match=r"^kv"):
        flash_attn_kvpacked_func(q, torch.randn(1, 8, 3, 2, 32, device=device))
