"""GPU-only: bf16 and fp16 at realistic sizes (FlashAttention error rule), deterministic
gradients, dropout statistics and forward/backward consistency at size."""

import pytest
import torch

from flash_attn_tri import flash_attn_func, flash_attn_varlen_func
from flash_attn_tri.attention import _draw_rng_state, _dropout_mask
from flash_attn_tri.reference import attention_ref
from tri_shared.testing import assert_close, randn, rel_err

pytestmark = pytest.mark.gpu


def _qkv(shape_q, shape_k, dv, dtype, seed):
    q = randn(shape_q, seed=seed, dtype=dtype, device="cuda").requires_grad_()
    k = randn(shape_k, seed=seed + 1, dtype=dtype, device="cuda").requires_grad_()
    v = randn((*shape_k[:-1], dv), seed=seed + 2, dtype=dtype, device="cuda").requires_grad_()
    return q, k, v


@pytest.mark.parametrize(
    ("dtype", "d", "dv", "causal", "sq", "sk", "heads", "heads_k"),
    [
        (torch.bfloat16, 128, 128, True, 1023, 1023, 8, 2),
        (torch.bfloat16, 64, 64, False, 1024, 1500, 8, 8),
        (torch.float16, 96, 96, True, 777, 1023, 4, 4),
        (torch.bfloat16, 192, 128, True, 513, 513, 4, 1),
        (torch.bfloat16, 256, 256, False, 300, 700, 2, 2),
        (torch.float16, 40, 40, False, 2047, 2047, 2, 1),
        (torch.bfloat16, 128, 128, False, 1100, 900, 4, 2),
    ],
)
def test_large(check_against_reference, dtype, d, dv, causal, sq, sk, heads, heads_k):
    q, k, v = _qkv((2, sq, heads, d), (2, sk, heads_k, d), dv, dtype, seed=d + sq)
    out = flash_attn_func(q, k, v, causal=causal)
    grad_out = randn(out.shape, seed=5, dtype=dtype, device="cuda")
    check_against_reference(out, q, k, v, grad_out, causal=causal)


@pytest.mark.parametrize(
    ("causal", "seqlen", "config"),
    [
        (False, 1000, (64, 64, 4, 3)),
        (False, 3000, (128, 128, 4, 3)),
        (False, 9000, (128, 64, 4, 4)),
        (True, 1500, (64, 64, 4, 3)),
        (True, 5000, (128, 64, 4, 4)),
    ],
)
def test_pinned_d64_forward_configs(check_against_reference, causal, seqlen, config):
    """At D = 64 on Hopper the forward takes the config pinned for its length class; each
    distinct one, on lengths that end in a partial block, against the reference."""
    from flash_attn_tri import attention
    from tri_shared.launch import is_hopper

    if not is_hopper():
        pytest.skip("the D = 64 forward configs are pinned on Hopper only")
    q, k, v = _qkv((1, seqlen, 2, 64), (1, seqlen, 2, 64), 64, torch.bfloat16, seed=seqlen)
    out = flash_attn_func(q, k, v, causal=causal)
    kern = attention._kernels[("fwd", 64, attention._length_class(seqlen), config)]
    picked = kern.best_config
    assert (picked.kwargs["BLOCK_M"], picked.kwargs["BLOCK_N"]) == config[:2]
    assert (picked.num_warps, picked.num_stages) == config[2:]
    grad_out = randn(out.shape, seed=7, dtype=torch.bfloat16, device="cuda")
    check_against_reference(out, q, k, v, grad_out, causal=causal)


@pytest.mark.parametrize(
    ("causal", "seqlen"), [(False, 1000), (False, 2000), (True, 1000), (True, 1500)]
)
def test_pinned_d64_backward_configs(check_against_reference, monkeypatch, causal, seqlen):
    """At D = 64 on Hopper below 4096 tokens the Triton backward takes the dQ and dK/dV
    configs pinned for its length class (where the Gluon backward does not take the call,
    e.g. unaligned strides: it is switched off here); each, on lengths that end in a
    partial block, against the reference. A length class without a pin autotunes."""
    from flash_attn_tri import attention
    from tri_shared.launch import is_hopper

    if not is_hopper():
        pytest.skip("the D = 64 backward configs are pinned on Hopper only")
    monkeypatch.setattr(attention, "_kernels", {})
    monkeypatch.setenv("FLASH_ATTN_TRI_GLUON_BWD", "0")
    q, k, v = _qkv((1, seqlen, 4, 64), (1, seqlen, 4, 64), 64, torch.bfloat16, seed=seqlen)
    out = flash_attn_func(q, k, v, causal=causal)
    grad_out = randn(out.shape, seed=8, dtype=torch.bfloat16, device="cuda")
    check_against_reference(out, q, k, v, grad_out, causal=causal)
    length_class = attention._length_class(seqlen)
    for kernel, table in (("dq", attention._HOPPER_DQ_D64), ("dkdv", attention._HOPPER_DKDV_D64)):
        config = table.get((causal, length_class))
        assert (kernel, 64, length_class, config) in attention._kernels
        if config is None:
            continue
        picked = attention._kernels[(kernel, 64, length_class, config)].best_config
        assert (picked.kwargs["BLOCK_M"], picked.kwargs["BLOCK_N"]) == config[:2]
        assert (picked.num_warps, picked.num_stages) == config[2:]


def test_options_bf16(check_against_reference):
    q, k, v = _qkv((2, 700, 8, 64), (2, 900, 2, 64), 64, torch.bfloat16, seed=3)
    slopes = torch.rand(2, 8, device="cuda") * 0.1
    opts = {"causal": True, "window_size": (256, -1), "softcap": 20.0, "alibi_slopes": slopes}
    out = flash_attn_func(q, k, v, **opts)
    grad_out = randn(out.shape, seed=6, dtype=torch.bfloat16, device="cuda")
    check_against_reference(out, q, k, v, grad_out, **opts)


def test_cpu_tensor_rejected():
    q = torch.randn(1, 8, 2, 32, dtype=torch.float16)
    with pytest.raises(ValueError, match=r"^q: expected a CUDA tensor"):
        flash_attn_func(q, q, q)


def test_deterministic_gradients():
    q, k, v = _qkv((2, 1000, 16, 128), (2, 1000, 2, 128), 128, torch.bfloat16, seed=9)
    dout = torch.randn(2, 1000, 16, 128, device="cuda", dtype=torch.bfloat16)
    runs = []
    for _ in range(3):
        out = flash_attn_func(q, k, v, causal=True, deterministic=True)
        runs.append(torch.autograd.grad(out, (q, k, v), dout))
    for other in runs[1:]:
        for a, b in zip(runs[0], other, strict=True):
            assert torch.equal(a, b)


@pytest.mark.parametrize("d", [64, 96, 128])
@pytest.mark.parametrize("kernel", ["dkdv", "dq"])
def test_every_backward_config(check_against_reference, monkeypatch, sweep_configs, kernel, d):
    """Each dK/dV and dQ launch config autotuning may pick, and each extra one
    ``bench/sweep_configs.py`` times (which a pin may take): exact gradients, causal and not,
    that repeat bitwise (the tests otherwise run the first config only). The Triton
    backward is forced: by default D = 128 goes to the Gluon kernels."""
    from flash_attn_tri import attention

    monkeypatch.setenv("FLASH_ATTN_TRI_GLUON_BWD", "0")
    monkeypatch.setattr(attention, "_pinned_config", lambda *_args: None)  # (over candidates)
    block_d = 64 if d <= 64 else 128
    name = f"_{kernel}_candidates"
    configs = list(getattr(attention, name)(block_d))
    configs += [c for c in sweep_configs.EXTRA.get((kernel, block_d), []) if c not in configs]
    for cfg in configs:
        monkeypatch.setattr(attention, name, lambda _bd, cfg=cfg: [cfg])
        monkeypatch.setattr(attention, "_kernels", {})
        for causal in (False, True):
            q, k, v = _qkv((2, 777, 8, d), (2, 1023, 2, d), d, torch.bfloat16, seed=d)
            dout = randn((2, 777, 8, d), seed=7, dtype=torch.bfloat16, device="cuda")
            out = flash_attn_func(q, k, v, causal=causal)
            grads = check_against_reference(out, q, k, v, dout, causal=causal)
            again = torch.autograd.grad(flash_attn_func(q, k, v, causal=causal), (q, k, v), dout)
            for a, b in zip(grads, again, strict=True):
                assert torch.equal(a, b), (
                    f"{kernel} config {cfg}, causal {causal}: not reproducible"
                )


def test_dropout_statistics_and_consistency(check_against_reference):
    p = 0.2
    batch, sq, sk, heads, d = 2, 512, 768, 4, 64
    mask = _dropout_mask(_draw_rng_state(torch.device("cuda")), batch, heads, sq, sk, p)
    kept = mask.float().mean().item()
    assert abs(kept - (1 - p)) < 0.01
    q, k, v = _qkv((batch, sq, heads, d), (batch, sk, heads, d), d, torch.bfloat16, seed=21)
    torch.manual_seed(77)
    mask = _dropout_mask(_draw_rng_state(torch.device("cuda")), batch, heads, sq, sk, p)
    torch.manual_seed(77)
    out = flash_attn_func(q, k, v, dropout_p=p, causal=True)
    opts = {"causal": True, "dropout_p": p, "dropout_mask": mask}
    grad_out = randn(out.shape, seed=8, dtype=torch.bfloat16, device="cuda")
    check_against_reference(out, q, k, v, grad_out, **opts)


def test_varlen_bf16(check_grads):
    lens = [1, 0, 1023, 300, 2048]
    cu = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32, device="cuda")
    total = sum(lens)
    q, k, v = _qkv((total, 8, 128), (total, 2, 128), 128, torch.bfloat16, seed=31)
    out = flash_attn_varlen_func(q, k, v, cu, cu, max(lens), max(lens), causal=True)
    grad_out = randn(out.shape, seed=9, dtype=torch.bfloat16, device="cuda")
    grads = torch.autograd.grad(out, (q, k, v), grad_out)
    # per-sequence comparison with the batched kernel path and the reference
    for b in range(len(lens)):
        s, e = int(cu[b]), int(cu[b + 1])
        if e == s:
            continue
        qs, ks, vs = (t.detach()[None, s:e].requires_grad_() for t in (q, k, v))
        ref64, _ = attention_ref(
            qs.double(), ks.double(), vs.double(), causal=True, compute_dtype=torch.float64
        )
        reflow, _ = attention_ref(qs, ks, vs, causal=True, compute_dtype=torch.bfloat16)
        limit = max(1e-2, 2 * rel_err(reflow, ref64))
        assert_close(out[None, s:e], ref64, max_rel_err=limit, name=f"out[{b}]")
        g64 = torch.autograd.grad(ref64, (qs, ks, vs), grad_out[None, s:e].double())
        glow = torch.autograd.grad(reflow, (qs, ks, vs), grad_out[None, s:e])
        for n, g, r, lo in zip(("dq", "dk", "dv"), grads, g64, glow, strict=True):
            limit = max(1e-2, 3 * rel_err(lo, r))
            assert_close(g[None, s:e], r, max_rel_err=limit, name=f"{n}[{b}]")


def _record_calls(monkeypatch, *names: str) -> list[str]:
    """Wrap each named launch function of ``flash_attn_tri.attention`` so that a call
    appends its name to the returned list (in call order) and then runs it."""
    from flash_attn_tri import attention

    calls: list[str] = []

    def recorded(name: str, launch):
        def run(*args, **kwargs):
            calls.append(name)
            return launch(*args, **kwargs)

        return run

    for name in names:
        monkeypatch.setattr(attention, name, recorded(name, getattr(attention, name)))
    return calls


def _gluon_calls(monkeypatch):
    """Force the Gluon forward for Hopper on (D = 64 too) and count its launches."""
    from flash_attn_tri import attention

    if not attention.is_hopper(torch.device("cuda")):
        pytest.skip("the Gluon forward is for Hopper GPUs")
    monkeypatch.setenv("FLASH_ATTN_TRI_GLUON", "1")
    return _record_calls(monkeypatch, "_gluon_forward")


@pytest.mark.parametrize(
    ("dtype", "d", "causal", "sq", "sk", "heads", "heads_k"),
    [
        (torch.bfloat16, 128, False, 1024, 1024, 8, 8),
        (torch.bfloat16, 128, True, 1023, 1023, 8, 2),
        (torch.bfloat16, 64, False, 777, 1500, 4, 4),
        (torch.float16, 64, True, 1500, 777, 4, 1),  # rows that see no key (sq > sk)
        (torch.float16, 128, True, 300, 2047, 2, 2),
        (torch.bfloat16, 128, False, 1, 17, 2, 1),
        (torch.bfloat16, 64, True, 129, 129, 2, 2),
        (torch.bfloat16, 128, True, 1100, 1100, 3, 1),  # 9 query blocks: a unit of one
    ],
)
@pytest.mark.parametrize("schedule", ["tiles", "pairs", "persistent"])
@pytest.mark.parametrize("o_via_tma", [False, True], ids=["o_stores", "o_tma"])
def test_gluon_forward_matches_the_reference(
    monkeypatch, check_against_reference, o_via_tma, schedule, dtype, d, causal, sq, sk, heads,
    heads_k,
):  # fmt: skip
    """The Gluon forward for Hopper against the fp64 reference (FlashAttention error rule,
    output and, through the Triton backward it feeds, gradients) and the Triton forward's
    log-sum-exp; rows past the diagonal with no key give output 0 and lse +inf. Under
    each schedule, with the GPU taken as 5 multiprocessors: causal tiles go in pairs
    (but under ``tiles``), and persistent programs take many units each, so the rings
    and turns carry over from tile to tile; the output written with plain stores or
    through the copy engine (``O_VIA_TMA``, rows past the sequence left alone)."""
    from flash_attn_tri import attention

    monkeypatch.setattr(attention, "_HOPPER_FWD_O_VIA_TMA", o_via_tma)
    monkeypatch.setenv("FLASH_ATTN_TRI_GLUON_SCHEDULE", schedule)
    monkeypatch.setattr(attention, "num_sms", lambda index=None: 5)
    calls = _gluon_calls(monkeypatch)
    q, k, v = _qkv((2, sq, heads, d), (2, sk, heads_k, d), d, dtype, seed=d + sq + sk)
    out, lse, _ = flash_attn_func(q, k, v, causal=causal, return_attn_probs=True)
    assert calls, "the Gluon forward did not run"
    grad_out = randn(out.shape, seed=9, dtype=dtype, device="cuda")
    check_against_reference(out, q, k, v, grad_out, causal=causal)
    monkeypatch.setenv("FLASH_ATTN_TRI_GLUON", "0")
    out_t, lse_t, _ = flash_attn_func(q, k, v, causal=causal, return_attn_probs=True)
    assert len(calls) == 1
    finite = torch.isfinite(lse_t)
    assert torch.equal(finite, torch.isfinite(lse)) and bool((lse[~finite] == float("inf")).all())
    torch.testing.assert_close(lse[finite], lse_t[finite], rtol=0, atol=1e-4)
    assert rel_err(out.float(), out_t.float()) < 1e-2


@pytest.mark.parametrize(("d", "causal"), [(128, True), (128, False), (64, True)])
def test_gluon_forward_schedules_agree_bitwise(monkeypatch, d, causal):
    """At full size (2048 tiles, more than one an SM: pairs under a causal mask) every
    schedule computes each tile the same way, so the outputs and log-sum-exps agree bit
    for bit; the default (persistent) is among them."""
    calls = _gluon_calls(monkeypatch)
    q, k, v = _qkv((8, 2048, 2048 // d, d), (8, 2048, 2048 // d, d), d, torch.bfloat16, seed=3)
    results = {}
    for schedule in ("tiles", "pairs", "persistent", None):
        if schedule is None:
            monkeypatch.delenv("FLASH_ATTN_TRI_GLUON_SCHEDULE", raising=False)
        else:
            monkeypatch.setenv("FLASH_ATTN_TRI_GLUON_SCHEDULE", schedule)
        out, lse, _ = flash_attn_func(q, k, v, causal=causal, return_attn_probs=True)
        results[schedule] = (out, lse)
    assert len(calls) == 4
    out_t, lse_t = results["tiles"]
    for schedule, (out, lse) in results.items():
        assert torch.equal(out, out_t), schedule
        assert torch.equal(lse, lse_t), schedule


@pytest.mark.parametrize(("d", "causal"), [(128, True), (128, False), (64, True)])
def test_gluon_forward_output_paths_agree_bitwise(monkeypatch, d, causal):
    """The output through the copy engine (``O_VIA_TMA``) holds the same bits as the one
    written with plain stores, at full size (2048 tiles, persistent programs)."""
    from flash_attn_tri import attention

    calls = _gluon_calls(monkeypatch)
    q, k, v = _qkv((8, 2048, 2048 // d, d), (8, 2048, 2048 // d, d), d, torch.bfloat16, seed=4)
    results = []
    for o_via_tma in (False, True):
        monkeypatch.setattr(attention, "_HOPPER_FWD_O_VIA_TMA", o_via_tma)
        results.append(flash_attn_func(q, k, v, causal=causal, return_attn_probs=True)[:2])
    assert len(calls) == 2
    assert torch.equal(results[0][0], results[1][0])
    assert torch.equal(results[0][1], results[1][1])


@pytest.mark.parametrize("kind", ["fused", "split"])
@pytest.mark.parametrize(
    ("dtype", "d", "causal", "sq", "sk", "heads", "heads_k"),
    [
        (torch.bfloat16, 128, False, 1024, 1024, 4, 4),
        (torch.bfloat16, 128, True, 1023, 1023, 8, 2),
        (torch.bfloat16, 64, False, 777, 1500, 4, 4),
        (torch.float16, 64, True, 1500, 777, 4, 1),  # rows that see no key (sq > sk)
        (torch.float16, 128, True, 300, 2047, 2, 2),  # sq < sk: masked blocks come first
        (torch.bfloat16, 128, True, 2047, 300, 2, 1),  # sq > sk: 1747 rows see no key
        (torch.bfloat16, 128, False, 1, 17, 2, 1),
        (torch.bfloat16, 64, True, 129, 129, 2, 2),
    ],
)
def test_gluon_backward_matches_the_reference(
    monkeypatch, check_against_reference, kind, dtype, d, causal, sq, sk, heads, heads_k
):
    """The Gluon backward kernels for Hopper, ``fused`` (dK/dV adding dQ up with the copy
    engine's reductions) and ``split`` (dQ with delta, then dK/dV), against the fp64
    reference (FlashAttention error rule) and against the Triton backward."""
    from flash_attn_tri import attention

    if not attention.is_hopper(torch.device("cuda")):
        pytest.skip("the Gluon kernels are for Hopper GPUs")
    calls = _record_calls(monkeypatch, "_gluon_dq", "_gluon_dkdv", "_gluon_fused_backward")
    monkeypatch.setenv("FLASH_ATTN_TRI_GLUON_BWD", "fused" if kind == "fused" else "1")
    q, k, v = _qkv((2, sq, heads, d), (2, sk, heads_k, d), d, dtype, seed=d + sq + 2 * sk)
    out = flash_attn_func(q, k, v, causal=causal)
    grad_out = randn(out.shape, seed=11, dtype=dtype, device="cuda")
    grads = check_against_reference(out, q, k, v, grad_out, causal=causal)
    expected = {
        "fused": ["_gluon_fused_backward", "_gluon_dkdv"],
        "split": ["_gluon_dq", "_gluon_dkdv"],
    }[kind]
    assert calls == expected, calls
    monkeypatch.setenv("FLASH_ATTN_TRI_GLUON_BWD", "0")
    out_t = flash_attn_func(q, k, v, causal=causal)
    grads_t = torch.autograd.grad(out_t, (q, k, v), grad_out)
    assert len(calls) == 2
    for name, g, g_t in zip(("dq", "dk", "dv"), grads, grads_t, strict=True):
        assert rel_err(g.float(), g_t.float()) < 1e-2, name


@pytest.mark.parametrize(
    ("kernel", "d", "tiles"),
    [
        ("dq", 64, (128, 64, 3)),  # the D = 64 tiles before session 22
        ("dkdv", 64, (64, 128, 3)),
        ("dq", 64, (128, 128, 3)),
        ("fused", 64, (64, 128, 3)),  # the D = 64 fused tiles before session 27
        ("dq", 128, (128, 128, 2)),
    ],
)
@pytest.mark.parametrize(
    ("dtype", "causal", "sq", "sk", "heads", "heads_k"),
    [
        (torch.bfloat16, False, 777, 1500, 4, 4),
        (torch.float16, True, 1500, 777, 4, 1),  # rows that see no key (sq > sk)
        (torch.bfloat16, True, 1000, 1000, 2, 2),
    ],
)
def test_gluon_backward_other_tiles(
    monkeypatch, check_against_reference, kernel, d, tiles, dtype, causal, sq, sk, heads, heads_k
):
    """The Gluon backward kernels with tiles other than the defaults
    (``attention._HOPPER_BWD_TILES``), among them those ``bench/bench_dispatch.py`` times,
    against the fp64 reference."""
    from flash_attn_tri import attention

    if not attention.is_hopper(torch.device("cuda")):
        pytest.skip("the Gluon kernels are for Hopper GPUs")
    monkeypatch.setitem(attention._HOPPER_BWD_TILES, (kernel, d), tiles)
    monkeypatch.setenv("FLASH_ATTN_TRI_GLUON_BWD", "fused" if kernel == "fused" else "1")
    calls = _record_calls(monkeypatch, "_gluon_dq", "_gluon_dkdv")
    q, k, v = _qkv((2, sq, heads, d), (2, sk, heads_k, d), d, dtype, seed=sq + 3 * sk)
    out = flash_attn_func(q, k, v, causal=causal)
    grad_out = randn(out.shape, seed=13, dtype=dtype, device="cuda")
    check_against_reference(out, q, k, v, grad_out, causal=causal)
    assert calls == (["_gluon_dkdv"] if kernel == "fused" else ["_gluon_dq", "_gluon_dkdv"])


@pytest.mark.parametrize(
    "settings",
    [
        {"TWO_DQ_BUFFERS_HEAD_DIMS": (64, 128)},
        {"TWO_DQ_BUFFERS_HEAD_DIMS": ()},
        {"LATE_DK": True},
        {"TWO_DQ_BUFFERS_HEAD_DIMS": (64, 128), "LATE_DK": True},
        {"ROUNDED_P": True},
        {"LATE_STATS_HEAD_DIMS": (64, 128)},
        {"LATE_STATS_HEAD_DIMS": ()},
    ],
    ids=["2dq", "1dq", "late-dk", "2dq-late-dk", "rounded-p", "late-stats", "early-stats"],
)
@pytest.mark.parametrize(
    ("dtype", "d", "causal", "sq", "sk", "heads", "heads_k"),
    [
        (torch.bfloat16, 64, False, 777, 1500, 4, 4),
        (torch.float16, 64, True, 1500, 777, 4, 1),  # rows that see no key (sq > sk)
        (torch.bfloat16, 128, False, 1024, 1024, 4, 2),
        (torch.bfloat16, 128, True, 300, 2047, 2, 2),  # sq < sk: masked blocks come first
    ],
)
def test_gluon_fused_backward_settings(
    monkeypatch, check_against_reference, settings, dtype, d, causal, sq, sk, heads, heads_k
):
    """The fused Gluon backward under the step settings (``attention._HOPPER_BWD_STEP``)
    that ``bench/bench_dispatch.py`` times against the defaults (two dQ staging buffers at
    every head dim or one at every head dim, dK's matmul after dQ's, dSᵀ from the rounded
    Pᵀ, the statistics read after the wait for S at every head dim or at none), against the
    fp64 reference."""
    from flash_attn_tri import attention

    if not attention.is_hopper(torch.device("cuda")):
        pytest.skip("the Gluon kernels are for Hopper GPUs")
    for name, value in settings.items():
        monkeypatch.setitem(attention._HOPPER_BWD_STEP, name, value)
    monkeypatch.setenv("FLASH_ATTN_TRI_GLUON_BWD", "fused")
    calls = _record_calls(monkeypatch, "_gluon_fused_backward")
    q, k, v = _qkv((2, sq, heads, d), (2, sk, heads_k, d), d, dtype, seed=sq + 5 * sk)
    out = flash_attn_func(q, k, v, causal=causal)
    grad_out = randn(out.shape, seed=17, dtype=dtype, device="cuda")
    check_against_reference(out, q, k, v, grad_out, causal=causal)
    assert calls == ["_gluon_fused_backward"], calls


@pytest.mark.parametrize(
    "settings",
    [{"ROUNDED_P": True}, {"LATE_STATS_HEAD_DIMS": (64, 128)}, {"LATE_STATS_HEAD_DIMS": ()}],
    ids=["rounded-p", "late-stats", "early-stats"],
)
@pytest.mark.parametrize(
    ("dtype", "d", "causal", "sq", "sk", "heads", "heads_k"),
    [
        (torch.bfloat16, 64, False, 777, 1500, 4, 4),
        (torch.float16, 64, True, 1500, 777, 4, 1),
        (torch.bfloat16, 128, True, 1023, 1023, 8, 2),
    ],
)
def test_gluon_split_backward_step_settings(
    monkeypatch, check_against_reference, settings, dtype, d, causal, sq, sk, heads, heads_k
):
    """The split Gluon backward under the step settings of ``attention._HOPPER_BWD_STEP``
    that apply to it (dSᵀ from the rounded Pᵀ, the statistics read after the wait for S at
    every head dim or at none; timed by ``bench/bench_dispatch.py``), against the fp64
    reference."""
    from flash_attn_tri import attention

    if not attention.is_hopper(torch.device("cuda")):
        pytest.skip("the Gluon kernels are for Hopper GPUs")
    for name, value in settings.items():
        monkeypatch.setitem(attention._HOPPER_BWD_STEP, name, value)
    monkeypatch.setenv("FLASH_ATTN_TRI_GLUON_BWD", "1")
    calls = _record_calls(monkeypatch, "_gluon_dq", "_gluon_dkdv")
    q, k, v = _qkv((2, sq, heads, d), (2, sk, heads_k, d), d, dtype, seed=sq + 7 * sk)
    out = flash_attn_func(q, k, v, causal=causal)
    grad_out = randn(out.shape, seed=19, dtype=dtype, device="cuda")
    check_against_reference(out, q, k, v, grad_out, causal=causal)
    assert calls == ["_gluon_dq", "_gluon_dkdv"], calls


def test_deterministic_steps_aside_from_the_fused_gluon_backward(monkeypatch):
    """The fused Gluon backward (``FLASH_ATTN_TRI_GLUON_BWD=fused``) adds dQ up in an order
    that varies run to run; with ``deterministic=True`` the call takes the split kernels
    instead, and the gradients repeat bit for bit."""
    from flash_attn_tri import attention

    if not attention.is_hopper(torch.device("cuda")):
        pytest.skip("the Gluon kernels are for Hopper GPUs")
    monkeypatch.setenv("FLASH_ATTN_TRI_GLUON_BWD", "fused")
    calls = _record_calls(monkeypatch, "_gluon_dq", "_gluon_fused_backward")
    q, k, v = _qkv((2, 2048, 8, 128), (2, 2048, 2, 128), 128, torch.bfloat16, seed=31)
    dout = randn((2, 2048, 8, 128), seed=32, dtype=torch.bfloat16, device="cuda")
    runs = []
    for _ in range(3):
        out = flash_attn_func(q, k, v, causal=True, deterministic=True)
        runs.append(torch.autograd.grad(out, (q, k, v), dout))
    assert calls == ["_gluon_dq"] * 3, calls
    for other in runs[1:]:
        for a, b in zip(runs[0], other, strict=True):
            assert torch.equal(a, b)
    fused = torch.autograd.grad(flash_attn_func(q, k, v, causal=True), (q, k, v), dout)
    assert calls[-1] == "_gluon_fused_backward", calls
    for name, g, g_det in zip(("dq", "dk", "dv"), fused, runs[0], strict=True):
        assert rel_err(g.float(), g_det.float()) < 1e-2, name


def test_default_backward_kinds_and_what_repeats_bitwise(monkeypatch):
    """By default on Hopper a D = 128 call takes the split Gluon backward under a causal mask
    and the fused one without. The split one repeats bit for bit; the fused one repeats dK
    and dV bit for bit and dQ up to the order of its fp32 sums; ``deterministic=True`` takes
    the split kernels without a mask too, and repeats bit for bit. At D = 64 the fused one
    without a mask from 2048 tokens, the split one below that and under a causal mask (bit
    for bit again)."""
    from flash_attn_tri import attention

    if not attention.is_hopper(torch.device("cuda")):
        pytest.skip("the Gluon kernels are for Hopper GPUs")
    monkeypatch.delenv("FLASH_ATTN_TRI_GLUON_BWD", raising=False)
    calls = _record_calls(monkeypatch, "_gluon_dq", "_gluon_fused_backward")
    q, k, v = _qkv((2, 2048, 8, 128), (2, 2048, 2, 128), 128, torch.bfloat16, seed=33)
    dout = randn((2, 2048, 8, 128), seed=34, dtype=torch.bfloat16, device="cuda")

    def grads(**options):
        return torch.autograd.grad(flash_attn_func(q, k, v, **options), (q, k, v), dout)

    causal = [grads(causal=True) for _ in range(2)]
    assert calls == ["_gluon_dq"] * 2, calls
    for a, b in zip(*causal, strict=True):
        assert torch.equal(a, b)
    full = [grads() for _ in range(2)]
    assert calls[2:] == ["_gluon_fused_backward"] * 2, calls
    assert torch.equal(full[0][1], full[1][1]) and torch.equal(full[0][2], full[1][2])
    assert rel_err(full[0][0].float(), full[1][0].float()) < 1e-3
    det = [grads(deterministic=True) for _ in range(2)]
    assert calls[4:] == ["_gluon_dq"] * 2, calls
    for name, a, b, f in zip(("dq", "dk", "dv"), *det, full[0], strict=True):
        assert torch.equal(a, b), name
        assert rel_err(a.float(), f.float()) < 1e-2, name
    # D = 64: fused without a mask from 2048 tokens, split causal (bitwise repeatable) and
    # with deterministic=True
    q, k, v = _qkv((1, 4096, 4, 64), (1, 4096, 2, 64), 64, torch.bfloat16, seed=35)
    dout = randn((1, 4096, 4, 64), seed=36, dtype=torch.bfloat16, device="cuda")
    full = [grads() for _ in range(2)]
    assert calls[6:] == ["_gluon_fused_backward"] * 2, calls
    assert torch.equal(full[0][1], full[1][1]) and torch.equal(full[0][2], full[1][2])
    assert rel_err(full[0][0].float(), full[1][0].float()) < 1e-3
    for options in ({"causal": True}, {"deterministic": True}):
        runs = [grads(**options) for _ in range(2)]
        for name, a, b in zip(("dq", "dk", "dv"), *runs, strict=True):
            assert torch.equal(a, b), (options, name)
    assert calls[8:] == ["_gluon_dq"] * 4, calls
    # ... and split below 2048 tokens without a mask
    q, k, v = _qkv((1, 1024, 4, 64), (1, 1024, 2, 64), 64, torch.bfloat16, seed=37)
    dout = randn((1, 1024, 4, 64), seed=38, dtype=torch.bfloat16, device="cuda")
    grads()
    assert calls[12:] == ["_gluon_dq"], calls


def test_repeated_calls_take_their_plan_and_agree_bitwise():
    """A call signature seen before goes straight to its plan (``attention._PLANS``): the
    kernels of the first call, launched directly (bound launches, no launcher key), with the
    first call's results bit for bit (the causal D = 128 call: split backward). A view off
    16-byte alignment is another signature, which the Gluon kernels do not take."""
    from flash_attn_tri import attention

    if not attention.is_hopper(torch.device("cuda")):
        pytest.skip("the plans are the Gluon kernels' (Hopper)")
    q, k, v = _qkv((2, 1024, 8, 128), (2, 1024, 2, 128), 128, torch.bfloat16, seed=41)
    dout = randn((2, 1024, 8, 128), seed=42, dtype=torch.bfloat16, device="cuda")

    def step(q):
        out = flash_attn_func(q, k, v, causal=True)
        return (out.detach(), *torch.autograd.grad(out, (q, k, v), dout))

    runs = [step(q) for _ in range(3)]
    plans = [p for p in attention._PLANS.values() if p is not None]
    (fwd,) = [p for p in plans if isinstance(p, attention._ForwardPlan)]
    (bwd,) = [p for p in plans if isinstance(p, attention._BackwardPlan)]
    assert bwd.kind == "split"
    assert fwd.launch.is_direct and bwd.first.launch.is_direct and bwd.second.launch.is_direct
    for run in runs[1:]:
        for name, a, b in zip(("out", "dq", "dk", "dv"), runs[0], run, strict=True):
            assert torch.equal(a, b), name
    buffer = torch.empty(q.numel() + 1, device="cuda", dtype=q.dtype)
    shifted = buffer[1:].view(q.shape).copy_(q.detach()).requires_grad_()
    assert shifted.data_ptr() % 16
    before = len(attention._PLANS)
    other = step(shifted)
    assert len(attention._PLANS) == before + 2
    assert attention._PLANS[next(reversed(attention._PLANS))] is None  # (the backward's)
    for name, a, b in zip(("out", "dq", "dk", "dv"), runs[0], other, strict=True):
        assert rel_err(b.float(), a.float()) < 1e-2, name
