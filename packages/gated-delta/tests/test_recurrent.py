"""Tests of ``fused_sigmoid_gating_delta_rule_update`` (decode and short sequences) against
both references: fixed-length and varlen batches, GQA, l2norm, scale, both pool layouts,
pool dtypes, negative indices, empty sequences, speculative-decoding verify, untouched
slots, every documented error, and on a GPU bf16, the Qwen3-Next shape, large grids,
64-bit offsets and CUDA graph capture."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
import torch

from gated_delta.fused_sigmoid_gating_recurrent import (
    _forward,
    fused_sigmoid_gating_delta_rule_update,
    launch_grid,
)
from gated_delta.reference import (
    fused_sigmoid_gating_delta_rule_update_native,
    fused_sigmoid_gating_delta_rule_update_native_optimized,
)
from tri_shared.testing import assert_close, poison, rand, randn, randperm

KERNEL = fused_sigmoid_gating_delta_rule_update
NATIVE = fused_sigmoid_gating_delta_rule_update_native
OPTIMIZED = fused_sigmoid_gating_delta_rule_update_native_optimized
POSITIONAL = (
    "A_log",
    "a",
    "dt_bias",
    "softplus_beta",
    "softplus_threshold",
    "q",
    "k",
    "v",
    "b",
    "initial_state_source",
    "initial_state_indices",
    "scale",
    "use_qk_l2norm_in_kernel",
    "cu_seqlens",
)
TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}


def _make_decode_args(
    *,
    device: torch.device,
    B: int = 2,
    T: int = 1,
    H: int = 2,
    HV: int = 4,
    K: int = 32,
    V: int = 32,
    lens: Sequence[int] | None = None,
    dtype: torch.dtype = torch.float32,
    pool_dtype: torch.dtype = torch.float32,
    layout: str = "kv",
    num_slots: int | None = None,
    indices: Sequence[int] | None = None,
    ab_3d: bool = False,
    seed: int = 0,
) -> dict[str, Any]:
    """Positional + keyword arguments of ``fused_sigmoid_gating_delta_rule_update`` as one
    dict (keys are the parameter names). With ``lens`` the batch is varlen: B = 1, T the sum
    of the lengths, cu_seqlens built from them (int32). Slots are random and distinct unless
    ``indices`` is given; the pool holds extra slots no sequence addresses."""
    if lens is not None:
        N = len(lens)
        B, T = 1, int(sum(lens))
        cu = torch.tensor([0, *torch.tensor(list(lens)).cumsum(0).tolist()], dtype=torch.int32)
        cu_seqlens = cu.to(device)
    else:
        N, cu_seqlens = B, None
    num_slots = num_slots if num_slots is not None else 2 * N + 3
    if indices is None:
        idx = randperm(num_slots, seed=seed + 1)[:N]
    else:
        idx = torch.tensor(list(indices), dtype=torch.int64)
    state = (HV, K, V) if layout == "kv" else (HV, V, K)
    ab_shape = (B, T, HV) if ab_3d else (B * T, HV)
    return {
        "A_log": randn((HV,), seed=seed + 2, device=device, scale=0.5),
        "a": randn(ab_shape, seed=seed + 3, device=device, dtype=dtype),
        "dt_bias": randn((HV,), seed=seed + 4, device=device),
        "softplus_beta": 1.0,
        "softplus_threshold": 20.0,
        "q": randn((B, T, H, K), seed=seed + 5, device=device, dtype=dtype),
        "k": randn((B, T, H, K), seed=seed + 6, device=device, dtype=dtype),
        "v": randn((B, T, HV, V), seed=seed + 7, device=device, dtype=dtype),
        "b": randn(ab_shape, seed=seed + 8, device=device, dtype=dtype),
        "initial_state_source": rand(
            (num_slots, *state), seed=seed + 9, device=device, low=-0.5, high=0.5
        ).to(pool_dtype),
        "initial_state_indices": idx.to(device),
        "scale": None,
        "use_qk_l2norm_in_kernel": True,
        "cu_seqlens": cu_seqlens,
    }


@pytest.fixture
def make_decode_args(device: torch.device):
    """Factory: ``make_decode_args(B=..., T=..., ...)`` on the test device."""

    def factory(**kwargs: Any) -> dict[str, Any]:
        kwargs.setdefault("device", device)
        return _make_decode_args(**kwargs)

    return factory


def call(fn, args: dict[str, Any], **extra: Any) -> torch.Tensor:
    """Call ``fn`` with SGLang's positional order plus keyword-only extras."""
    return fn(*(args[n] for n in POSITIONAL), **extra)


def clone_args(args: dict[str, Any]) -> dict[str, Any]:
    return {n: (t.clone() if isinstance(t, torch.Tensor) else t) for n, t in args.items()}


def run_all(args: dict[str, Any], refs=(NATIVE, OPTIMIZED), **extra: Any):
    """Run the kernel and the references on private copies of the pool (and buffer).

    Returns ``[(output, pool, buffer), ...]``, the kernel's first. Slots and buffer entries
    are poisoned with NaN beforehand where they must be written, so a missed write shows."""
    results = []
    for fn in (KERNEL, *refs):
        a = clone_args(args)
        ex = dict(extra)
        if "intermediate_states_buffer" in ex:
            ex["intermediate_states_buffer"] = ex["intermediate_states_buffer"].clone()
        out = call(fn, a, **ex)
        results.append((out, a["initial_state_source"], ex.get("intermediate_states_buffer")))
    return results


def check_against_refs(args, results, *, out_dtype, pool_dtype, buffer_dtype=None):
    out_k, pool_k, buf_k = results[0]
    for out_r, pool_r, buf_r in results[1:]:
        assert out_k.shape == out_r.shape
        assert out_k.dtype == out_dtype
        assert_close(out_k, out_r, max_rel_err=TOL[out_dtype], name="o")
        assert_close(pool_k, pool_r, max_rel_err=TOL[pool_dtype], name="pool")
        if buf_k is not None:
            assert_close(buf_k, buf_r, max_rel_err=TOL[buffer_dtype], name="buffer")


def addressed_slots(args) -> set[int]:
    return {int(i) for i in args["initial_state_indices"].tolist() if i >= 0}


def assert_untouched(before: torch.Tensor, after: torch.Tensor, keep: Sequence[int]) -> None:
    """Slots in ``keep`` are bit-identical (NaN-safe: compare the raw bits)."""
    for s in keep:
        assert torch.equal(before[s].view(torch.uint8), after[s].view(torch.uint8)), (
            f"slot {s} changed"
        )


# ---------------------------------------------------------------------------------------------
# correctness on CPU (interpreter) and GPU


CASES = [
    # name, factory kwargs, call extras
    ("fixed-T1-gqa2", {"B": 3, "T": 1, "H": 2, "HV": 4, "K": 32, "V": 32}, {}),
    # T = 1 without cu_seqlens compiles the straight-line decode path (no token loop)
    (
        "fixed-T1-vk-odd-negative",
        {"B": 3, "T": 1, "H": 1, "HV": 2, "K": 17, "V": 40, "layout": "vk", "indices": [1, -1, 3]},
        {},
    ),
    (
        "fixed-T1-fp16pool-nol2",
        {"B": 2, "T": 1, "H": 2, "HV": 2, "K": 24, "V": 24, "pool_dtype": torch.float16},
        {"use_qk_l2norm_in_kernel": False, "scale": 0.3},
    ),
    ("fixed-T5-gqa1-odd", {"B": 2, "T": 5, "H": 3, "HV": 3, "K": 40, "V": 24}, {}),
    ("fixed-gqa4-vk", {"B": 2, "T": 3, "H": 1, "HV": 4, "K": 17, "V": 33, "layout": "vk"}, {}),
    (
        "fixed-ab3d-scale-nol2",
        {"B": 2, "T": 4, "H": 2, "HV": 4, "K": 16, "V": 64, "ab_3d": True},
        {"scale": 0.37, "use_qk_l2norm_in_kernel": False},
    ),
    (
        "fixed-fp16-inputs",
        {"B": 2, "T": 3, "H": 2, "HV": 2, "K": 32, "V": 24, "dtype": torch.float16},
        {},
    ),
    (
        "fixed-fp16-pool-vk",
        {
            "B": 3,
            "T": 2,
            "H": 1,
            "HV": 2,
            "K": 24,
            "V": 40,
            "pool_dtype": torch.float16,
            "layout": "vk",
        },
        {},
    ),
    ("varlen-empty-gqa2", {"lens": [3, 0, 5, 1], "H": 2, "HV": 4, "K": 24, "V": 16}, {}),
    (
        "varlen-vk-gqa4-nol2",
        {"lens": [1, 4, 0, 2], "H": 1, "HV": 4, "K": 32, "V": 20, "layout": "vk"},
        {"use_qk_l2norm_in_kernel": False, "scale": 0.5},
    ),
    (
        "fixed-negative-indices",
        {"B": 4, "T": 2, "H": 2, "HV": 2, "K": 16, "V": 16, "indices": [2, -1, 0, -1]},
        {},
    ),
    (
        "varlen-negative-fp16pool",
        {
            "lens": [2, 3, 0],
            "H": 2,
            "HV": 2,
            "K": 16,
            "V": 48,
            "indices": [-1, 4, 1],
            "pool_dtype": torch.float16,
        },
        {},
    ),
]


@pytest.mark.parametrize(("name", "shape", "extra"), CASES, ids=[c[0] for c in CASES])
def test_matches_references(make_decode_args, name, shape, extra):
    args = make_decode_args(**shape, seed=hash(name) % 1000)
    for key in ("scale", "use_qk_l2norm_in_kernel"):
        if key in extra:
            args[key] = extra[key]
    before = args["initial_state_source"].clone()
    results = run_all(args, state_layout=shape.get("layout", "kv"))
    check_against_refs(
        args,
        results,
        out_dtype=args["q"].dtype,
        pool_dtype=args["initial_state_source"].dtype,
    )
    # slots that no sequence addresses, and slots of empty sequences, are bit-identical
    keep = set(range(before.shape[0])) - addressed_slots(args)
    if args["cu_seqlens"] is not None:
        cu = args["cu_seqlens"].tolist()
        idx = args["initial_state_indices"].tolist()
        keep |= {idx[n] for n in range(len(idx)) if cu[n] == cu[n + 1] and idx[n] >= 0}
    assert_untouched(before, results[0][1], sorted(keep))
    # and the addressed ones did change (the update is not a no-op)
    changed = addressed_slots(args) - keep
    for s in changed:
        assert not torch.equal(before[s], results[0][1][s]), f"slot {s} was not written"


def test_output_is_fully_written(make_decode_args):
    """o comes from torch.empty: fill the allocator's cache with NaN first so an element the
    kernel leaves unwritten shows up as non-finite."""
    args = make_decode_args(B=2, T=3, H=1, HV=2, K=16, V=40)
    junk = poison(torch.empty(2 * 3 * 2 * 40, dtype=torch.float32, device=args["q"].device))
    del junk
    out = call(KERNEL, clone_args(args))
    assert torch.isfinite(out).all()
    ref = call(NATIVE, clone_args(args))
    assert_close(out, ref, max_rel_err=1e-5)


def test_without_state_pool(make_decode_args):
    args = make_decode_args(B=2, T=3, H=2, HV=2, K=16, V=16)
    args["initial_state_source"] = None
    args["initial_state_indices"] = None
    out_k = call(KERNEL, args)
    out_n = call(NATIVE, args)
    out_o = call(OPTIMIZED, args)
    assert_close(out_k, out_n, max_rel_err=1e-5)
    assert_close(out_k, out_o, max_rel_err=1e-5)


def test_references_agree_with_each_other_and_with_fixed_mode(make_decode_args):
    """A varlen batch equals the same sequences run one by one in fixed-length mode."""
    lens = [2, 0, 3]
    args = make_decode_args(lens=lens, H=2, HV=4, K=16, V=8, num_slots=5, indices=[4, 0, 2])
    out_var = call(KERNEL, (var := clone_args(args)))
    starts = [0, 2, 2]
    for n, (s, ln) in enumerate(zip(starts, lens, strict=True)):
        if ln == 0:
            continue
        one = clone_args(args)
        for key in ("q", "k", "v"):
            one[key] = args[key][:, s : s + ln]
        for key in ("a", "b"):
            one[key] = args[key][s : s + ln]
        one["cu_seqlens"] = None
        one["initial_state_indices"] = args["initial_state_indices"][n : n + 1]
        out_fix = call(NATIVE, one)
        assert_close(out_var[:, s : s + ln], out_fix, max_rel_err=1e-5)
        slot = int(args["initial_state_indices"][n])
        assert_close(
            var["initial_state_source"][slot],
            one["initial_state_source"][slot],
            max_rel_err=1e-5,
        )


@pytest.mark.parametrize("layout", ["kv", "vk"])
@pytest.mark.parametrize("varlen", [False, True])
def test_verify_mode(make_decode_args, layout, varlen):
    """Speculative-decoding verify: per-step states into the buffer, pool unchanged."""
    if varlen:
        args = make_decode_args(lens=[3, 1, 0, 4], H=1, HV=2, K=16, V=24, layout=layout)
        cache_steps = 3  # the 4-token sequence's last state is not recorded
        buf_idx = [1, -1, 0, 2]
    else:
        args = make_decode_args(B=3, T=3, H=2, HV=2, K=24, V=16, layout=layout)
        cache_steps = 4
        buf_idx = [2, 0, -1]
    N = args["initial_state_indices"].shape[0]
    state = args["initial_state_source"].shape[1:]
    dev = args["q"].device
    buffer = poison(torch.empty((4, cache_steps, *state), dtype=torch.float32, device=dev))
    idx = torch.tensor(buf_idx[:N], dtype=torch.int32, device=dev)
    before = args["initial_state_source"].clone()
    results = run_all(
        args,
        state_layout=layout,
        disable_state_update=True,
        intermediate_states_buffer=buffer,
        intermediate_state_indices=idx,
    )
    out_k, pool_k, buf_k = results[0]
    assert torch.equal(pool_k, before)  # the pool is left as it was
    for out_r, _, buf_r in results[1:]:
        assert_close(out_k, out_r, max_rel_err=1e-5, name="o")
        written = torch.isfinite(buf_r)
        # the kernel writes exactly the entries the references write
        assert torch.equal(torch.isfinite(buf_k), written)
        assert_close(buf_k[written], buf_r[written], max_rel_err=1e-5, name="buffer")
    # the last recorded state of a fixed-length sequence equals the pool update of a normal call
    if not varlen:
        normal = clone_args(args)
        call(KERNEL, normal, state_layout=layout)
        n = 0
        slot = int(args["initial_state_indices"][n])
        assert_close(
            buf_k[buf_idx[n], args["q"].shape[1] - 1],
            normal["initial_state_source"][slot],
            max_rel_err=1e-5,
        )


@pytest.mark.parametrize("T", [1, 2])
def test_verify_mode_with_state_update(make_decode_args, T):
    """A buffer with ``disable_state_update=False`` records the steps and updates the pool
    (T = 1: the straight-line decode path; cache index -1 records nothing)."""
    args = make_decode_args(B=2, T=T, H=1, HV=2, K=16, V=16)
    dev = args["q"].device
    buffer = poison(torch.empty((2, 2, 2, 16, 16), device=dev))
    idx = torch.tensor([1, 0] if T > 1 else [-1, 0], device=dev)
    results = run_all(args, intermediate_states_buffer=buffer, intermediate_state_indices=idx)
    check_against_refs(
        args,
        results,
        out_dtype=torch.float32,
        pool_dtype=torch.float32,
        buffer_dtype=torch.float32,
    )


def test_disable_state_update_leaves_pool(make_decode_args):
    args = make_decode_args(B=3, T=2, H=2, HV=4, K=16, V=16)
    before = args["initial_state_source"].clone()
    out = call(KERNEL, args, disable_state_update=True)
    assert torch.equal(args["initial_state_source"], before)
    ref = call(NATIVE, clone_args(args))
    assert_close(out, ref, max_rel_err=1e-5)


def test_softplus_threshold_and_beta(make_decode_args):
    """Both softplus branches: beta x above and below the threshold."""
    args = make_decode_args(B=2, T=3, H=1, HV=2, K=16, V=16)
    args["softplus_beta"] = 2.0
    args["softplus_threshold"] = 0.5
    results = run_all(args)
    check_against_refs(args, results, out_dtype=torch.float32, pool_dtype=torch.float32)


def test_non_contiguous_inputs(make_decode_args):
    """q/k/v as views into a fused projection (token stride larger than H*K)."""
    args = make_decode_args(B=2, T=3, H=2, HV=2, K=16, V=16)
    dev = args["q"].device
    fused = randn((2, 3, 2 * 16 * 3 + 5), seed=11, device=dev)
    args["q"] = fused[..., 0:32].unflatten(-1, (2, 16))
    args["k"] = fused[..., 32:64].unflatten(-1, (2, 16))
    args["v"] = fused[..., 64:96].unflatten(-1, (2, 16))
    args["a"] = randn((6, 4), seed=12, device=dev)[:, 1:3]
    assert not args["q"].is_contiguous()
    results = run_all(args)
    check_against_refs(args, results, out_dtype=torch.float32, pool_dtype=torch.float32)


def test_grid_stays_inside_cuda_limits():
    """The grid math for more than 65535 sequence-heads (the launch itself is a GPU test)."""
    assert launch_grid(2100, 32, 128, 32, flat=False) == (67200, 4)
    assert launch_grid(1, 32, 100, 16, flat=False) == (32, 7)
    assert launch_grid(70000, 64, 256, 8, flat=False)[0] == 70000 * 64
    assert launch_grid(2100, 32, 128, 32) == (67200 * 4,)
    assert launch_grid(1, 32, 100, 16) == (32 * 7,)
    with pytest.raises(ValueError, match="grid axis 0"):
        launch_grid(2**22, 64, 256, 8)


@pytest.mark.parametrize("flat_grid", [False, True])
@pytest.mark.parametrize("layout", ["kv", "vk"])
def test_both_grid_orders(make_decode_args, flat_grid, layout):
    """Both program orders (flat, V blocks fastest; or 2-D) with several V blocks."""
    args = make_decode_args(B=2, T=2, H=1, HV=2, K=16, V=40, layout=layout)
    ref = clone_args(args)
    out = _forward(
        *(args[n] for n in POSITIONAL),
        state_layout=layout,
        block_v=8,
        num_warps=1,
        flat_grid=flat_grid,
    )
    out_ref = call(NATIVE, ref, state_layout=layout)
    assert_close(out, out_ref, max_rel_err=1e-5)
    assert_close(args["initial_state_source"], ref["initial_state_source"], max_rel_err=1e-5)


# ---------------------------------------------------------------------------------------------
# bad input


def _bad(make_decode_args, mutate, **factory):
    # K != V so that a pool in the wrong layout has the wrong shape
    args = make_decode_args(B=2, T=2, H=2, HV=4, K=16, V=8, **factory)
    extra: dict[str, Any] = {}
    mutate(args, extra)
    return args, extra


def _mut(key, fn):
    def mutate(args, extra):
        args[key] = fn(args)

    return mutate


def _extra(**kw):
    def mutate(args, extra):
        for key, fn in kw.items():
            extra[key] = fn(args)

    return mutate


def _pool_noncontig(args):
    p = args["initial_state_source"]
    return torch.cat([p, p], dim=-1)[..., : p.shape[-1]]


def _buffer(steps, contiguous=True):
    def make(args):
        p = args["initial_state_source"]
        buf = torch.zeros((3, steps, *p.shape[1:]), device=p.device)
        return buf if contiguous else buf.transpose(-1, -2)

    return make


BAD = [
    ("k-shape", _mut("k", lambda a: a["k"][:, :, :, :8]), ValueError, "k"),
    ("k-dtype", _mut("k", lambda a: a["k"].half()), TypeError, "k"),
    ("v-T", _mut("v", lambda a: a["v"][:, :1]), ValueError, "v"),
    ("v-hv-not-multiple", _mut("v", lambda a: a["v"][:, :, :3]), ValueError, "v"),
    ("a-HV", _mut("a", lambda a: a["a"][:, :3]), ValueError, "a"),
    ("a-tokens", _mut("a", lambda a: a["a"][:3]), ValueError, "a"),
    ("b-HV", _mut("b", lambda a: a["b"][:, :2]), ValueError, "b"),
    ("A_log-HV", _mut("A_log", lambda a: a["A_log"][:3]), ValueError, "A_log"),
    ("dt_bias-HV", _mut("dt_bias", lambda a: a["dt_bias"][:2]), ValueError, "dt_bias"),
    ("K-too-big", None, ValueError, "q"),
    ("V-too-big", None, ValueError, "v"),
    (
        "indices-float",
        _mut("initial_state_indices", lambda a: a["initial_state_indices"].float()),
        TypeError,
        "initial_state_indices",
    ),
    (
        "indices-length",
        _mut("initial_state_indices", lambda a: a["initial_state_indices"][:1]),
        ValueError,
        "initial_state_indices",
    ),
    ("cu_seqlens-float", None, TypeError, "cu_seqlens"),
    (
        "cu_seqlens-B",
        _mut(
            "cu_seqlens", lambda a: torch.tensor([0, 1, 2], dtype=torch.int32, device=a["q"].device)
        ),
        ValueError,
        "cu_seqlens",
    ),
    (
        "pool-noncontig",
        _mut("initial_state_source", _pool_noncontig),
        ValueError,
        "initial_state_source",
    ),
    (
        "pool-shape",
        _mut("initial_state_source", lambda a: a["initial_state_source"][:, :, :8].contiguous()),
        ValueError,
        "initial_state_source",
    ),
    ("scale-zero", _mut("scale", lambda a: 0.0), ValueError, "scale"),
    ("scale-negative", _mut("scale", lambda a: -1.0), ValueError, "scale"),
    ("layout", _extra(state_layout=lambda a: "kvk"), ValueError, "state_layout"),
    ("layout-mismatch", _extra(state_layout=lambda a: "vk"), ValueError, "initial_state_source"),
    (
        "buffer-steps",
        _extra(
            intermediate_states_buffer=_buffer(1),
            intermediate_state_indices=lambda a: torch.zeros(
                2, dtype=torch.int64, device=a["q"].device
            ),
        ),
        ValueError,
        "intermediate_states_buffer",
    ),
    (
        "buffer-noncontig",
        _extra(
            intermediate_states_buffer=_buffer(2, contiguous=False),
            intermediate_state_indices=lambda a: torch.zeros(
                2, dtype=torch.int64, device=a["q"].device
            ),
        ),
        ValueError,
        "intermediate_states_buffer",
    ),
    (
        "buffer-no-indices",
        _extra(intermediate_states_buffer=_buffer(2)),
        ValueError,
        "intermediate_state_indices",
    ),
    (
        "buffer-indices-float",
        _extra(
            intermediate_states_buffer=_buffer(2),
            intermediate_state_indices=lambda a: torch.zeros(2, device=a["q"].device),
        ),
        TypeError,
        "intermediate_state_indices",
    ),
    (
        "cache_steps-too-big",
        _extra(
            intermediate_states_buffer=_buffer(2),
            intermediate_state_indices=lambda a: torch.zeros(
                2, dtype=torch.int64, device=a["q"].device
            ),
            cache_steps=lambda a: 3,
        ),
        ValueError,
        "cache_steps",
    ),
    ("softplus_beta", _mut("softplus_beta", lambda a: 0.0), ValueError, "softplus_beta"),
    ("q-not-tensor", _mut("q", lambda a: a["q"].tolist()), TypeError, "q"),
    ("q-ndim", _mut("q", lambda a: a["q"][0]), ValueError, "q"),
    (
        "indices-without-pool",
        _mut("initial_state_source", lambda a: None),
        ValueError,
        "initial_state_source",
    ),
]


@pytest.mark.parametrize(("name", "mutate", "exc", "argname"), BAD, ids=[b[0] for b in BAD])
def test_bad_input(make_decode_args, name, mutate, exc, argname):
    if name == "K-too-big":
        args = make_decode_args(B=1, T=1, H=1, HV=1, K=257, V=8, num_slots=2)
        extra: dict[str, Any] = {}
    elif name == "V-too-big":
        args = make_decode_args(B=1, T=1, H=1, HV=1, K=8, V=300, num_slots=2)
        extra = {}
    elif name == "cu_seqlens-float":
        args = make_decode_args(lens=[1, 2], H=2, HV=4, K=16, V=16)
        args["cu_seqlens"] = args["cu_seqlens"].float()
        extra = {}
    else:
        args, extra = _bad(make_decode_args, mutate)
    # no clone: clone() would make a non-contiguous pool contiguous; nothing is written
    # because every call raises before launch
    for fn in (KERNEL, NATIVE, OPTIMIZED):
        with pytest.raises(exc, match=argname):
            call(fn, args, **extra)


def test_bad_device(make_decode_args):
    """Tensors on two devices: on CPU, a 'meta' tensor stands in for the other device."""
    args = make_decode_args(B=2, T=1, H=2, HV=4, K=16, V=16)
    other = torch.device("meta") if args["q"].device.type == "cpu" else torch.device("cpu")
    for key in ("v", "A_log", "initial_state_indices", "cu_seqlens_placeholder"):
        if key == "cu_seqlens_placeholder":
            continue
        bad = clone_args(args)
        bad[key] = bad[key].to(other)
        with pytest.raises(ValueError, match=key):
            call(KERNEL, bad)


DEBUG_BAD = [
    ("cu_seqlens-decreasing", {"lens": [2, 1, 2]}, "cu_seqlens"),
    ("index-too-big", {"B": 3, "indices": [0, 9, 1], "num_slots": 9}, "initial_state_indices"),
    ("index-below-minus-one", {"B": 3, "indices": [0, -2, 1]}, "initial_state_indices"),
    ("index-repeated", {"B": 3, "indices": [4, 1, 4]}, "initial_state_indices"),
]


@pytest.mark.parametrize(("name", "factory", "argname"), DEBUG_BAD, ids=[d[0] for d in DEBUG_BAD])
def test_debug_checks(make_decode_args, name, factory, argname):
    args = make_decode_args(T=1, H=1, HV=2, K=8, V=8, **factory)
    if name == "cu_seqlens-decreasing":
        args["cu_seqlens"] = torch.tensor([0, 2, 1, 5], dtype=torch.int32, device=args["q"].device)
    for fn in (KERNEL, NATIVE, OPTIMIZED):
        with pytest.raises(ValueError, match=argname):
            call(fn, clone_args(args), debug=True)
    # without debug the kernel runs (no host sync) when the indices stay in bounds
    if name in ("index-repeated", "index-below-minus-one"):
        call(KERNEL, clone_args(args))


def test_debug_mode_accepts_good_input(make_decode_args):
    args = make_decode_args(lens=[2, 0, 1], H=1, HV=2, K=8, V=8, indices=[0, -1, 3])
    out = call(KERNEL, clone_args(args), debug=True)
    assert_close(out, call(NATIVE, clone_args(args), debug=True), max_rel_err=1e-5)


# ---------------------------------------------------------------------------------------------
# GPU only: bf16, the Qwen3-Next shape, big grids, 64-bit offsets, CUDA graphs


@pytest.mark.gpu
@pytest.mark.parametrize("layout", ["kv", "vk"])
@pytest.mark.parametrize("pool_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("varlen", [False, True])
def test_gpu_bf16(make_decode_args, layout, pool_dtype, varlen):
    shape = {"lens": [1, 7, 0, 33, 2]} if varlen else {"B": 5, "T": 3}
    args = make_decode_args(
        **shape,
        H=4,
        HV=8,
        K=96,
        V=80,
        dtype=torch.bfloat16,
        pool_dtype=pool_dtype,
        layout=layout,
    )
    results = run_all(args, refs=(OPTIMIZED,), state_layout=layout)
    check_against_refs(args, results, out_dtype=torch.bfloat16, pool_dtype=pool_dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("N", [1, 8, 32, 128])
@pytest.mark.parametrize("layout", ["kv", "vk"])
def test_gpu_qwen3_next_decode(make_decode_args, N, layout):
    """ANCHORS.md shape: H=16, HV=32, K=V=128, T=1, fp32 pool, bf16 q/k/v, l2norm."""
    args = make_decode_args(
        B=N,
        T=1,
        H=16,
        HV=32,
        K=128,
        V=128,
        dtype=torch.bfloat16,
        layout=layout,
        num_slots=N + 7,
    )
    before = args["initial_state_source"].clone()
    results = run_all(args, refs=(OPTIMIZED,), state_layout=layout)
    check_against_refs(args, results, out_dtype=torch.bfloat16, pool_dtype=torch.float32)
    keep = sorted(set(range(N + 7)) - addressed_slots(args))
    assert_untouched(before, results[0][1], keep)


@pytest.mark.gpu
def test_gpu_native_reference_qwen3_next(make_decode_args):
    """The plain loop reference too, on a small batch of the real shape (T = 4)."""
    args = make_decode_args(B=2, T=4, H=16, HV=32, K=128, V=128, dtype=torch.bfloat16)
    results = run_all(args, refs=(NATIVE,))
    check_against_refs(args, results, out_dtype=torch.bfloat16, pool_dtype=torch.float32)


@pytest.mark.gpu
@pytest.mark.parametrize("flat_grid", [True, False])
def test_gpu_more_than_65535_sequence_heads(make_decode_args, flat_grid):
    N, HV = 2100, 32  # 67200 sequence-heads
    args = make_decode_args(B=N, T=1, H=8, HV=HV, K=8, V=8, num_slots=N + 5)
    ref = clone_args(args)
    out = _forward(*(args[n] for n in POSITIONAL), flat_grid=flat_grid)
    out_ref = call(OPTIMIZED, ref)
    assert_close(out, out_ref, max_rel_err=1e-5)
    assert_close(args["initial_state_source"], ref["initial_state_source"], max_rel_err=1e-5)


@pytest.mark.gpu
def test_gpu_64bit_pool_offsets(device):
    """slot * HV * K * V passes 2**31 elements: a bf16 pool of 4100 slots at HV=32, K=V=128
    (4.3 GB); the last slots are used and must come out right."""
    HV, K, V, H = 32, 128, 128, 16
    slots = 4100
    pool = torch.zeros((slots, HV, K, V), dtype=torch.bfloat16, device=device)
    assert pool[slots - 1].storage_offset() > 2**31
    small = _make_decode_args(
        device=device,
        B=2,
        T=1,
        H=H,
        HV=HV,
        K=K,
        V=V,
        dtype=torch.bfloat16,
        pool_dtype=torch.bfloat16,
        num_slots=2,
        indices=[1, 0],
    )
    pool[slots - 1] = small["initial_state_source"][1]
    pool[slots - 2] = small["initial_state_source"][0]
    pool[0] = 1.0  # a slot that must stay as it is
    args = dict(small)
    args["initial_state_source"] = pool
    args["initial_state_indices"] = torch.tensor([slots - 1, slots - 2], device=device)
    out = call(KERNEL, args)
    ref_out = call(OPTIMIZED, small)
    assert_close(out, ref_out, max_rel_err=1e-2)
    assert_close(pool[slots - 1], small["initial_state_source"][1], max_rel_err=1e-2)
    assert_close(pool[slots - 2], small["initial_state_source"][0], max_rel_err=1e-2)
    assert bool((pool[0] == 1.0).all())
    del pool
    torch.cuda.empty_cache()


@pytest.mark.gpu
@pytest.mark.parametrize("verify", [False, True])
def test_gpu_cuda_graph_capture_and_replay(make_decode_args, verify):
    args = make_decode_args(
        B=4, T=2 if verify else 1, H=4, HV=8, K=64, V=64, dtype=torch.bfloat16, num_slots=12
    )
    extra: dict[str, Any] = {}
    if verify:
        extra = {
            "disable_state_update": True,
            "intermediate_states_buffer": torch.zeros((5, 2, 8, 64, 64), device="cuda"),
            "intermediate_state_indices": torch.tensor([4, 0, 2, 1], device="cuda"),
        }
    static = clone_args(args)
    call(
        KERNEL,
        clone_args(static),
        **{k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in extra.items()},
    )  # compile outside
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = call(KERNEL, static, **extra)
    # replay twice with fresh inputs copied into the captured buffers
    for seed in (21, 22):
        fresh = make_decode_args(
            B=4,
            T=2 if verify else 1,
            H=4,
            HV=8,
            K=64,
            V=64,
            dtype=torch.bfloat16,
            num_slots=12,
            seed=seed,
        )
        for key in ("q", "k", "v", "a", "b", "initial_state_source", "A_log", "dt_bias"):
            static[key].copy_(fresh[key])
        static["initial_state_indices"].copy_(fresh["initial_state_indices"])
        ref_args = clone_args(static)
        ref_extra = {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in extra.items()}
        ref = call(OPTIMIZED, ref_args, **ref_extra)
        graph.replay()
        torch.cuda.synchronize()
        assert_close(out, ref, max_rel_err=1e-2)
        assert_close(
            static["initial_state_source"], ref_args["initial_state_source"], max_rel_err=1e-5
        )
        if verify:
            assert_close(
                extra["intermediate_states_buffer"],
                ref_extra["intermediate_states_buffer"],
                max_rel_err=1e-5,
            )
