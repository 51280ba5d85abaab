"""Chunked prefill: ``chunk_gated_delta_rule`` and ``fused_sigmoid_gating_delta_rule_prefill``
against the recurrent references and the decode operator."""

import pytest
import torch
import torch.nn.functional as F

from gated_delta import chunk as chunk_mod
from gated_delta.chunk import chunk_gated_delta_rule, fused_sigmoid_gating_delta_rule_prefill
from gated_delta.fused_sigmoid_gating_recurrent import fused_sigmoid_gating_delta_rule_update
from gated_delta.reference import (
    chunk_gated_delta_rule_native,
    fused_sigmoid_gating_delta_rule_update_native_optimized,
    recurrent_gated_delta_rule_native,
)
from tri_shared.testing import assert_close, rand, randn, randperm

TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}


def _tol(dtype, on_gpu):
    # fp32 operands go through tf32 tensor cores on the GPU
    return 1e-3 if dtype == torch.float32 and on_gpu else TOL[dtype]


def _qkv(B, T, H, HV, K, V, dtype, device, seed, l2norm=True):
    q = randn((B, T, H, K), seed=seed, dtype=dtype, device=device)
    # without l2norm, keys of norm about 1 keep the delta rule stable (beta * |k|^2 < 2)
    k = randn(
        (B, T, H, K), seed=seed + 1, dtype=dtype, device=device, scale=1.0 if l2norm else K**-0.5
    )
    v = randn((B, T, HV, V), seed=seed + 2, dtype=dtype, device=device)
    return q, k, v


def _gates(shape, device, seed):
    g = F.logsigmoid(randn(shape, seed=seed, device=device, scale=2.0, shift=3.0))
    beta = rand(shape, seed=seed + 1, device=device)
    return g, beta


def _decode_args(num_tokens, HV, device, seed):
    A_log = randn((HV,), seed=seed, device=device, scale=0.5)
    dt_bias = randn((HV,), seed=seed + 1, device=device)
    a = randn((num_tokens, HV), seed=seed + 2, device=device)
    b = randn((num_tokens, HV), seed=seed + 3, device=device)
    return A_log, a, dt_bias, b


def _f64(*xs):
    return [None if x is None else x.double() for x in xs]


# --- the chunked reference is the recurrence ---------------------------------------------


@pytest.mark.parametrize("lengths", [[1], [63], [64], [65], [200], [0, 5, 64, 0, 130, 1]])
def test_chunk_native_matches_recurrent_native(lengths):
    H, HV, K, V = 2, 4, 32, 24
    T = sum(lengths)
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()])
    q, k, v = _qkv(1, T, H, HV, K, V, torch.float64, "cpu", seed=T)
    g, beta = _f64(*_gates((1, T, HV), "cpu", seed=T + 7))
    h0 = randn((len(lengths), HV, K, V), seed=3, dtype=torch.float64)
    args = (q, k, v, g, beta)
    kw = {
        "initial_state": h0,
        "output_final_state": True,
        "cu_seqlens": cu,
        "use_qk_l2norm_in_kernel": True,
    }
    o_ref, s_ref = recurrent_gated_delta_rule_native(*args, **kw)
    o, s = chunk_gated_delta_rule_native(*args, **kw)
    assert_close(o, o_ref, max_rel_err=1e-12, name="o")
    assert_close(s, s_ref, max_rel_err=1e-6, name="final_state")  # fp32 result


# --- chunk_gated_delta_rule ----------------------------------------------------------------


def _run_chunk(
    device, on_gpu, *, B, T, H, HV, K, V, dtype, l2norm, with_h0, seed, cu=None, lengths=None
):
    q, k, v = _qkv(B, T, H, HV, K, V, dtype, device, seed, l2norm)
    g, beta = _gates((B, T, HV), device, seed + 5)
    N = B if cu is None else cu.numel() - 1
    h0 = randn((N, HV, K, V), seed=seed + 9, device=device) if with_h0 else None
    o, s = chunk_gated_delta_rule(
        q,
        k,
        v,
        g,
        beta,
        initial_state=h0,
        output_final_state=True,
        cu_seqlens=cu,
        use_qk_l2norm_in_kernel=l2norm,
    )
    o_ref, s_ref = recurrent_gated_delta_rule_native(
        *_f64(q, k, v, g, beta),
        initial_state=None if h0 is None else h0.double(),
        output_final_state=True,
        cu_seqlens=cu,
        use_qk_l2norm_in_kernel=l2norm,
    )
    tol = _tol(dtype, on_gpu)
    assert o.dtype == dtype and s.dtype == torch.float32
    assert_close(o, o_ref, max_rel_err=tol, name="o")
    assert_close(s, s_ref, max_rel_err=tol, name="final_state")


@pytest.mark.parametrize("T", [1, 2, 63, 64, 65, 200])
def test_chunk_lengths_fp32(device, on_gpu, T):
    _run_chunk(
        device,
        on_gpu,
        B=2,
        T=T,
        H=2,
        HV=4,
        K=32,
        V=48,
        dtype=torch.float32,
        l2norm=True,
        with_h0=True,
        seed=T,
    )


@pytest.mark.parametrize(
    ("dtype", "l2norm", "with_h0", "H", "HV", "K", "V"),
    [
        (torch.float16, True, True, 1, 2, 64, 64),
        (torch.float16, False, False, 2, 2, 40, 96),
        (torch.float32, False, True, 1, 3, 96, 40),
        (torch.float32, True, False, 2, 6, 16, 16),
    ],
)
def test_chunk_dtypes_heads_dims(device, on_gpu, dtype, l2norm, with_h0, H, HV, K, V):
    _run_chunk(
        device,
        on_gpu,
        B=1,
        T=130,
        H=H,
        HV=HV,
        K=K,
        V=V,
        dtype=dtype,
        l2norm=l2norm,
        with_h0=with_h0,
        seed=11,
    )


@pytest.mark.parametrize("state_bv", [16, 32])
def test_chunk_split_v_blocks(device, on_gpu, state_bv, monkeypatch):
    # V split into blocks in the sequential kernel (V = 48: a partial last block)
    monkeypatch.setitem(chunk_mod.TUNING, "state", (state_bv, 4, 2))
    lengths = [70, 0, 129]
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], device=device)
    _run_chunk(
        device,
        on_gpu,
        B=1,
        T=sum(lengths),
        H=1,
        HV=2,
        K=64,
        V=48,
        dtype=torch.float16,
        l2norm=True,
        with_h0=True,
        seed=17,
        cu=cu,
    )


@pytest.mark.parametrize("with_h0", [True, False])
def test_chunk_varlen_with_empty_sequences(device, on_gpu, with_h0):
    lengths = [0, 3, 64, 0, 1, 129, 0]
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], device=device)
    _run_chunk(
        device,
        on_gpu,
        B=1,
        T=sum(lengths),
        H=2,
        HV=4,
        K=32,
        V=32,
        dtype=torch.float32,
        l2norm=True,
        with_h0=with_h0,
        seed=5,
        cu=cu,
    )


def test_chunk_writes_every_output_and_no_final_state_by_default(device):
    B, T, H, HV, K, V = 1, 70, 1, 2, 16, 16
    q, k, v = _qkv(B, T, H, HV, K, V, torch.float32, device, seed=21)
    g, beta = _gates((B, T, HV), device, seed=22)
    o, s = chunk_gated_delta_rule(q, k, v, g, beta, use_qk_l2norm_in_kernel=True)
    assert s is None
    assert torch.isfinite(o).all()
    o_ref, _ = recurrent_gated_delta_rule_native(
        *_f64(q, k, v, g, beta), use_qk_l2norm_in_kernel=True
    )
    assert_close(o, o_ref, max_rel_err=1e-3, name="o")


# --- fused_sigmoid_gating_delta_rule_prefill: the decode op's contract -------------------


def _prefill_case(device, *, lengths, H, HV, K, V, dtype, layout, pool_dtype, seed, varlen=True):
    if varlen:
        B, T = 1, sum(lengths)
        cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], device=device)
        N = len(lengths)
    else:
        B, T, cu, N = len(lengths), lengths[0], None, len(lengths)
    q, k, v = _qkv(B, T, H, HV, K, V, dtype, device, seed)
    A_log, a, dt_bias, b = _decode_args(B * T, HV, device, seed + 4)
    slots = N + 3
    shape = (slots, HV, K, V) if layout == "kv" else (slots, HV, V, K)
    pool = randn(shape, seed=seed + 9, device=device, dtype=pool_dtype)
    # random distinct slots, every third sequence without one (-1)
    idx = randperm(slots, seed=seed + 10, device=device)[:N]
    idx[::3] = -1
    return (A_log, a, dt_bias, 1.0, 20.0, q, k, v, b, pool, idx), cu


@pytest.mark.parametrize(
    ("lengths", "dtype", "layout", "pool_dtype", "H", "HV"),
    [
        ([1, 200, 0, 65, 1, 64], torch.float32, "kv", torch.float32, 2, 4),
        ([63, 1, 2, 0, 130], torch.float16, "vk", torch.float32, 1, 2),
        ([0, 70, 1], torch.float32, "vk", torch.float16, 2, 2),
    ],
)
def test_prefill_matches_decode_reference(
    device, on_gpu, lengths, dtype, layout, pool_dtype, H, HV
):
    K, V = 32, 32
    args, cu = _prefill_case(
        device,
        lengths=lengths,
        H=H,
        HV=HV,
        K=K,
        V=V,
        dtype=dtype,
        layout=layout,
        pool_dtype=pool_dtype,
        seed=len(lengths),
    )
    pool = args[9]
    before = pool.clone()
    pool_ref = pool.clone()
    ref_args = (*args[:9], pool_ref, args[10])
    o = fused_sigmoid_gating_delta_rule_prefill(
        *args, use_qk_l2norm_in_kernel=True, cu_seqlens=cu, state_layout=layout
    )
    o_ref = fused_sigmoid_gating_delta_rule_update_native_optimized(
        *ref_args, use_qk_l2norm_in_kernel=True, cu_seqlens=cu, state_layout=layout
    )
    tol = max(_tol(dtype, on_gpu), TOL.get(pool_dtype) if pool_dtype != torch.float32 else 0)
    assert o.shape == (1, sum(lengths), HV, V) and o.dtype == dtype
    assert_close(o, o_ref, max_rel_err=tol, name="o")
    assert_close(pool, pool_ref, max_rel_err=tol, name="pool")
    # slots no non-empty sequence writes are bit-identical
    idx = args[10].tolist()
    written = {s for s, n in zip(idx, lengths, strict=True) if s >= 0 and n > 0}
    for s in range(pool.shape[0]):
        if s not in written:
            assert torch.equal(pool[s], before[s]), f"slot {s} changed"


def test_prefill_fixed_length_disable_state_update(device, on_gpu):
    args, _ = _prefill_case(
        device,
        lengths=[65, 65],
        H=1,
        HV=2,
        K=16,
        V=32,
        dtype=torch.float32,
        layout="kv",
        pool_dtype=torch.float32,
        seed=31,
        varlen=False,
    )
    pool = args[9]
    before = pool.clone()
    o = fused_sigmoid_gating_delta_rule_prefill(
        *args, scale=0.3, use_qk_l2norm_in_kernel=True, disable_state_update=True
    )
    assert torch.equal(pool, before)
    o_ref = fused_sigmoid_gating_delta_rule_update_native_optimized(
        *args[:9], before.clone(), args[10], scale=0.3, use_qk_l2norm_in_kernel=True
    )
    assert_close(o, o_ref, max_rel_err=_tol(torch.float32, on_gpu), name="o")


def test_prefill_equals_decode_op_then_decode_continues(device, on_gpu):
    """Prefill of mixed lengths equals the decode op on the same inputs; the decode op then
    continuing from the pool the prefill left equals one recurrent run over everything."""
    lengths = [1, 96, 0, 2]
    H, HV, K, V = 1, 2, 32, 32
    args, cu = _prefill_case(
        device,
        lengths=lengths,
        H=H,
        HV=HV,
        K=K,
        V=V,
        dtype=torch.float32,
        layout="kv",
        pool_dtype=torch.float32,
        seed=41,
    )
    pool_p, pool_d = args[9].clone(), args[9].clone()
    idx = args[10]
    o_p = fused_sigmoid_gating_delta_rule_prefill(
        *args[:9], pool_p, idx, use_qk_l2norm_in_kernel=True, cu_seqlens=cu
    )
    o_d = fused_sigmoid_gating_delta_rule_update(
        *args[:9], pool_d, idx, use_qk_l2norm_in_kernel=True, cu_seqlens=cu
    )
    tol = _tol(torch.float32, on_gpu)
    assert_close(o_p, o_d, max_rel_err=tol, name="o vs decode op")
    assert_close(pool_p, pool_d, max_rel_err=tol, name="pool vs decode op")

    # one sequence: prefill 70 tokens, decode 3 more one at a time == decode op over 73
    T1, T2 = 70, 3
    q, k, v = _qkv(1, T1 + T2, H, HV, K, V, torch.float32, device, seed=43)
    A_log, a, dt_bias, b = _decode_args(T1 + T2, HV, device, seed=44)
    pool = randn((2, HV, K, V), seed=45, device=device)
    full = pool.clone()
    slot = torch.tensor([1], device=device)
    common = (A_log, None, dt_bias, 1.0, 20.0)
    fused_sigmoid_gating_delta_rule_prefill(
        A_log,
        a[:T1],
        dt_bias,
        1.0,
        20.0,
        q[:, :T1],
        k[:, :T1],
        v[:, :T1],
        b[:T1],
        pool,
        slot,
        use_qk_l2norm_in_kernel=True,
    )
    outs = []
    for t in range(T1, T1 + T2):
        sl = slice(t, t + 1)
        outs.append(
            fused_sigmoid_gating_delta_rule_update(
                common[0],
                a[sl],
                *common[2:],
                q[:, sl],
                k[:, sl],
                v[:, sl],
                b[sl],
                pool,
                slot,
                use_qk_l2norm_in_kernel=True,
            )
        )
    o_full = fused_sigmoid_gating_delta_rule_update(
        A_log, a, dt_bias, 1.0, 20.0, q, k, v, b, full, slot, use_qk_l2norm_in_kernel=True
    )
    assert_close(torch.cat(outs, 1), o_full[:, T1:], max_rel_err=tol, name="decoded o")
    assert_close(pool, full, max_rel_err=tol, name="pool after decode")
    assert torch.equal(pool[0], full[0])


def test_prefill_empty_batch_and_no_pool(device, on_gpu):
    args, cu = _prefill_case(
        device,
        lengths=[0, 0],
        H=1,
        HV=2,
        K=16,
        V=16,
        dtype=torch.float32,
        layout="kv",
        pool_dtype=torch.float32,
        seed=51,
    )
    pool = args[9]
    before = pool.clone()
    o = fused_sigmoid_gating_delta_rule_prefill(*args, cu_seqlens=cu)
    assert o.shape == (1, 0, 2, 16)
    assert torch.equal(pool, before)
    # no pool at all: zero initial state, nothing written
    args, _ = _prefill_case(
        device,
        lengths=[20],
        H=1,
        HV=2,
        K=16,
        V=16,
        dtype=torch.float32,
        layout="kv",
        pool_dtype=torch.float32,
        seed=52,
        varlen=False,
    )
    o = fused_sigmoid_gating_delta_rule_prefill(*args[:9], None, None)
    o_ref = fused_sigmoid_gating_delta_rule_update_native_optimized(*args[:9], None, None)
    assert_close(o, o_ref, max_rel_err=_tol(torch.float32, on_gpu), name="o")


# --- errors --------------------------------------------------------------------------------


def _small(device):
    q, k, v = _qkv(1, 8, 1, 2, 16, 16, torch.float32, device, seed=61)
    g, beta = _gates((1, 8, 2), device, seed=62)
    return q, k, v, g, beta


def test_chunk_errors(device):
    q, k, v, g, beta = _small(device)
    with pytest.raises(ValueError, match=r"^g"):
        chunk_gated_delta_rule(q, k, v, g[:, :4], beta)
    with pytest.raises(TypeError, match=r"^beta"):
        chunk_gated_delta_rule(q, k, v, g, beta.to(torch.int32))
    with pytest.raises(TypeError, match=r"^g"):
        chunk_gated_delta_rule(q, k, v, None, beta)
    with pytest.raises(ValueError, match=r"^initial_state"):
        chunk_gated_delta_rule(q, k, v, g, beta, initial_state=torch.zeros(1, 2, 16, 8))
    with pytest.raises(TypeError, match=r"^initial_state"):
        chunk_gated_delta_rule(
            q, k, v, g, beta, initial_state=torch.zeros(1, 2, 16, 16, dtype=torch.int64)
        )
    with pytest.raises(ValueError, match=r"^v"):
        chunk_gated_delta_rule(q, k, v[:, :4], g, beta)
    with pytest.raises(ValueError, match=r"^cu_seqlens"):
        chunk_gated_delta_rule(
            q.expand(2, -1, -1, -1),
            k.expand(2, -1, -1, -1),
            v.expand(2, -1, -1, -1),
            g.expand(2, -1, -1),
            beta.expand(2, -1, -1),
            cu_seqlens=torch.tensor([0, 8], device=device),
        )
    with pytest.raises(ValueError, match=r"^scale"):
        chunk_gated_delta_rule(q, k, v, g, beta, scale=-1.0)


def test_prefill_errors(device):
    args, _ = _prefill_case(
        device,
        lengths=[8],
        H=1,
        HV=2,
        K=16,
        V=16,
        dtype=torch.float32,
        layout="kv",
        pool_dtype=torch.float32,
        seed=71,
        varlen=False,
    )
    with pytest.raises(ValueError, match=r"^chunk_size"):
        fused_sigmoid_gating_delta_rule_prefill(*args, chunk_size=32)
    with pytest.raises(ValueError, match=r"^state_layout"):
        fused_sigmoid_gating_delta_rule_prefill(*args, state_layout="kvv")
    pool = args[9]
    strided = torch.zeros(pool.shape[0], 2, 16, 32, device=device)[..., ::2]
    with pytest.raises(ValueError, match=r"^initial_state_source"):
        fused_sigmoid_gating_delta_rule_prefill(*args[:9], strided, args[10])
    with pytest.raises(ValueError, match=r"^initial_state_source"):  # "vk" shape for a kv call
        fused_sigmoid_gating_delta_rule_prefill(*args[:9], pool[:, :, :8], args[10])
    with pytest.raises(ValueError, match=r"^initial_state_indices"):
        fused_sigmoid_gating_delta_rule_prefill(*args[:9], pool, None)
    with pytest.raises(ValueError, match=r"^softplus_beta"):
        fused_sigmoid_gating_delta_rule_prefill(*args[:3], 0.0, *args[4:])
    with pytest.raises(TypeError, match=r"^b"):
        fused_sigmoid_gating_delta_rule_prefill(*args[:8], None, *args[9:])
    with pytest.raises(ValueError, match=r"^A_log"):
        fused_sigmoid_gating_delta_rule_prefill(args[0][:1], *args[1:])
    with pytest.raises(ValueError, match=r"^a"):
        fused_sigmoid_gating_delta_rule_prefill(args[0], args[1][:3], *args[2:])
    with pytest.raises(ValueError, match=r"^initial_state_indices"):  # out of range (debug)
        fused_sigmoid_gating_delta_rule_prefill(
            *args[:10], torch.tensor([pool.shape[0]], device=device), debug=True
        )


# --- GPU: bf16 at the benchmark sizes ---------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.parametrize(("N", "T"), [(4, 8192), (1, 32768)])
def test_gpu_bf16_anchor_sizes(device, N, T):
    H, HV, K, V = 16, 32, 128, 128
    total = N * T
    cu = torch.arange(N + 1, device=device, dtype=torch.int32) * T
    q, k, v = _qkv(1, total, H, HV, K, V, torch.bfloat16, device, seed=N)
    A_log, a, dt_bias, b = _decode_args(total, HV, device, seed=N + 4)
    a, b = a.to(torch.bfloat16), b.to(torch.bfloat16)
    pool = randn((N + 2, HV, K, V), seed=N + 9, device=device, scale=0.1)
    idx = torch.arange(N, device=device, dtype=torch.int32) + 1
    pool_ref, pool0 = pool.clone(), pool.clone()
    o = fused_sigmoid_gating_delta_rule_prefill(
        A_log,
        a,
        dt_bias,
        1.0,
        20.0,
        q,
        k,
        v,
        b,
        pool,
        idx,
        use_qk_l2norm_in_kernel=True,
        cu_seqlens=cu,
    )
    assert torch.isfinite(o).all() and torch.isfinite(pool).all()
    # the decode kernel keeps the state in fp32 all along: an independent recurrent result
    o_rec = fused_sigmoid_gating_delta_rule_update(
        A_log,
        a,
        dt_bias,
        1.0,
        20.0,
        q,
        k,
        v,
        b,
        pool_ref,
        idx,
        use_qk_l2norm_in_kernel=True,
        cu_seqlens=cu,
    )
    assert_close(o, o_rec, max_rel_err=1e-2, name="o vs recurrent")
    assert_close(pool, pool_ref, max_rel_err=1e-2, name="pool vs recurrent")
    # and against the fp32 chunked reference with gates precomputed, on the first sequence
    from gated_delta.reference import _decode_gates

    g, beta = _decode_gates(A_log, a, dt_bias, b, 1.0, 20.0)
    n1 = min(T, 4096)
    o_ref, _ = chunk_gated_delta_rule_native(
        q[:, :n1].float(),
        k[:, :n1].float(),
        v[:, :n1].float(),
        g[None, :n1],
        beta[None, :n1],
        initial_state=pool0[1:2],
        use_qk_l2norm_in_kernel=True,
    )
    assert_close(o[:, :n1], o_ref, max_rel_err=1e-2, name="o vs chunk reference")


@pytest.mark.gpu
def test_gpu_chunk_bf16(device):
    _run_chunk(
        device,
        True,
        B=2,
        T=300,
        H=4,
        HV=8,
        K=128,
        V=128,
        dtype=torch.bfloat16,
        l2norm=True,
        with_h0=True,
        seed=81,
    )
