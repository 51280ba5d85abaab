"""Which kernels a call takes: the Gluon forward and backward for Hopper where they measured
faster than the Triton kernels (BENCHMARKS.md), the Triton kernels elsewhere. The launches are
checked on the GPU (test_gpu.py)."""

import pytest

from flash_attn_tri import attention


@pytest.mark.parametrize(
    ("switch", "head_dim", "wanted"),
    [
        (None, 128, True),
        (None, 64, False),  # D = 64: the Triton kernel is faster
        (None, 96, False),
        ("1", 64, True),
        ("1", 128, True),
        ("1", 96, False),  # no Gluon kernel for that head dim
        ("0", 128, False),
    ],
)
def test_gluon_forward_wanted(monkeypatch, switch, head_dim, wanted):
    if switch is None:
        monkeypatch.delenv("FLASH_ATTN_TRI_GLUON", raising=False)
    else:
        monkeypatch.setenv("FLASH_ATTN_TRI_GLUON", switch)
    assert attention._gluon_forward_wanted(head_dim) is wanted


@pytest.mark.parametrize(
    ("switch", "head_dim", "causal", "seqlen", "deterministic", "kind"),
    [
        (None, 128, True, 1024, False, "split"),  # causal: split, at every length
        (None, 128, True, 16384, False, "split"),
        (None, 128, False, 1024, False, "fused"),  # no mask: fused, at every length
        (None, 128, False, 16384, False, "fused"),
        (None, 128, False, 16384, True, "split"),  # fused dQ rounding varies run to run
        (None, 64, False, 1024, False, "split"),  # D = 64 without a mask: split below 2048
        (None, 64, False, 2047, False, "split"),
        (None, 64, False, 2048, False, "fused"),  # fused from 2048 tokens
        (None, 64, False, 16384, False, "fused"),
        (None, 64, False, 16384, True, "split"),
        (None, 64, True, 4096, False, "split"),  # D = 64 causal: split, at every length
        (None, 64, True, 1024, False, "split"),
        (None, 64, True, 16384, False, "split"),
        (None, 64, True, 16384, True, "split"),
        (None, 96, False, 16384, False, None),  # no Gluon kernel for that head dim
        ("1", 64, True, 100, False, "split"),
        ("1", 128, False, 16384, False, "split"),
        ("1", 96, False, 4096, False, None),
        ("fused", 64, True, 100, False, "fused"),
        ("fused", 128, True, 100, True, "split"),
        ("0", 128, False, 16384, False, None),
    ],
)
def test_gluon_backward_wanted(monkeypatch, switch, head_dim, causal, seqlen, deterministic, kind):
    if switch is None:
        monkeypatch.delenv("FLASH_ATTN_TRI_GLUON_BWD", raising=False)
    else:
        monkeypatch.setenv("FLASH_ATTN_TRI_GLUON_BWD", switch)
    assert attention._gluon_backward_wanted(head_dim, causal, seqlen, deterministic) == kind


@pytest.mark.parametrize(
    ("switch", "tiles", "causal", "seqlen_k", "schedule"),
    [
        (None, 2048, True, 1024, (True, True)),  # causal past one tile an SM: pairs
        (None, 2048, False, 1024, (False, True)),  # no mask: every tile sees all the keys
        (None, 132, True, 1024, (False, True)),  # one tile an SM: pairing would idle half
        (None, 133, True, 1024, (True, True)),
        (None, 2048, True, 8192, (True, True)),
        (None, 2048, True, 8193, (True, False)),  # long: one unit a program
        ("auto", 2048, False, 16384, (False, False)),
        ("tiles", 2048, True, 1024, (False, False)),
        ("pairs", 2048, True, 1024, (True, False)),
        ("pairs", 2048, False, 1024, (False, False)),
        ("persistent", 8, True, 16384, (False, True)),
    ],
)
def test_gluon_forward_schedule(monkeypatch, switch, tiles, causal, seqlen_k, schedule):
    if switch is None:
        monkeypatch.delenv("FLASH_ATTN_TRI_GLUON_SCHEDULE", raising=False)
    else:
        monkeypatch.setenv("FLASH_ATTN_TRI_GLUON_SCHEDULE", switch)
    assert attention._gluon_forward_schedule(tiles, causal, seqlen_k, sms=132) == schedule


def test_gluon_forward_schedule_rejects_unknown_switch(monkeypatch):
    monkeypatch.setenv("FLASH_ATTN_TRI_GLUON_SCHEDULE", "spread")
    with pytest.raises(ValueError, match=r"FLASH_ATTN_TRI_GLUON_SCHEDULE.*'spread'"):
        attention._gluon_forward_schedule(2048, True, 1024, sms=132)


def _opts(window=(-1, -1), softcap=0.0, dropout_p=0.0):
    return attention._Opts(64, 0.125, window[0], window[1], softcap, dropout_p)


@pytest.mark.parametrize(
    ("hopper", "d", "dv", "varlen", "opts", "has_alibi", "seqlen", "pinned"),
    [
        (True, 64, 64, False, _opts(), False, 4096, (128, 128, 4, 3)),
        (True, 64, 64, False, _opts(), False, 3000, (128, 128, 4, 3)),  # length class 4096
        (True, 64, 64, False, _opts(), False, 100, (64, 64, 4, 3)),  # below 1024: class 1024
        (True, 64, 64, False, _opts(), False, 40000, (128, 64, 4, 4)),  # above: class 16384
        (True, 64, 64, False, _opts((-1, 0)), False, 1024, (64, 64, 4, 3)),  # causal
        (True, 64, 64, False, _opts((-1, 0)), False, 8192, (128, 64, 4, 4)),
        (False, 64, 64, False, _opts(), False, 4096, None),  # not Hopper: autotuned
        (True, 128, 128, False, _opts(), False, 4096, None),  # another head dim
        (True, 64, 32, False, _opts(), False, 4096, None),
        (True, 64, 64, True, _opts(), False, 4096, None),  # varlen
        (True, 64, 64, False, _opts((-1, 5)), False, 4096, None),  # a window, not causal
        (True, 64, 64, False, _opts((3, 0)), False, 4096, None),
        (True, 64, 64, False, _opts(softcap=30.0), False, 4096, None),
        (True, 64, 64, False, _opts(dropout_p=0.1), False, 4096, None),
        (True, 64, 64, False, _opts(), True, 4096, None),  # ALiBi
    ],
)
def test_pinned_forward_config(monkeypatch, hopper, d, dv, varlen, opts, has_alibi, seqlen, pinned):
    import torch

    monkeypatch.setattr(attention, "is_hopper", lambda _device: hopper)
    q = torch.empty(0)
    assert attention._pinned_config("fwd", q, d, dv, varlen, opts, has_alibi, seqlen) == pinned


@pytest.mark.parametrize(
    ("kernel", "hopper", "opts", "seqlen", "pinned"),
    [
        ("dq", True, _opts(), 2000, (64, 128, 4, 3)),
        ("dq", True, _opts(), 1000, None),  # dropped: the autotuner's pick ran faster
        ("dkdv", True, _opts(), 1000, (32, 128, 4, 3)),
        ("dkdv", True, _opts(), 2048, (32, 128, 4, 3)),
        ("dq", True, _opts((-1, 0)), 1024, (64, 64, 4, 3)),
        ("dq", True, _opts((-1, 0)), 1500, (128, 64, 4, 3)),
        ("dkdv", True, _opts((-1, 0)), 1024, (32, 128, 4, 2)),
        ("dq", True, _opts(), 4096, None),  # a length class not listed: autotuned
        ("dkdv", True, _opts((-1, 0)), 16384, None),
        ("dq", False, _opts(), 1024, None),  # not Hopper
        ("dkdv", True, _opts(dropout_p=0.1), 1024, None),
        ("dq", True, _opts((3, 0)), 1024, None),
    ],
)
def test_pinned_backward_config(monkeypatch, kernel, hopper, opts, seqlen, pinned):
    import torch

    monkeypatch.setattr(attention, "is_hopper", lambda _device: hopper)
    q = torch.empty(0)
    assert attention._pinned_config(kernel, q, 64, 64, False, opts, False, seqlen) == pinned


def test_sweep_ranks_configs_by_their_median_over_rounds(sweep_configs):
    """One fast outlier does not make a config the best: the median over the rounds does."""
    shape = {"kernel": "dq", "D": 64, "causal": False, "seqlen": 1024}
    timings = {"64x64x4x3": [300.0, 310.0, 305.0], "128x32x4x3": [290.0, 400.0, 295.0]}
    rows = [
        {**shape, "round": r + 1, "config": c, "tflops": t}
        for c, ts in timings.items()
        for r, t in enumerate(ts)
    ]
    rows.append({**shape, "seqlen": 2048, "round": 1, "config": "64x64x4x3", "tflops": 320.0})
    best = {b["seqlen"]: b for b in sweep_configs.best_by_median(rows)}
    assert best[1024]["best"] == "64x64x4x3" and best[1024]["median_tflops"] == 305.0
    assert best[1024]["runner_up"] == "128x32x4x3" and best[1024]["runner_up_tflops"] == 295.0
    assert best[1024]["timings"] == 3
    assert best[2048]["best"] == "64x64x4x3" and best[2048]["runner_up"] == ""


def test_unpinned_turns_off_only_the_named_kernels_pins(monkeypatch, sweep_configs):
    import torch

    monkeypatch.setattr(attention, "is_hopper", lambda _device: True)
    q, args = torch.empty(0), (64, 64, False, _opts(), False, 2048)
    attention._kernels[("dq", 64, 2048, None)] = object()  # a wrapper made earlier
    with sweep_configs.unpinned(["dq"]):
        assert not attention._kernels  # the autotuner chooses afresh
        assert attention._pinned_config("dq", q, *args) is None
        assert attention._pinned_config("dkdv", q, *args) == attention._HOPPER_DKDV_D64[False, 2048]
        assert attention._pinned_config("fwd", q, *args) == attention._HOPPER_FWD_D64[False, 2048]
    assert attention._pinned_config("dq", q, *args) == attention._HOPPER_DQ_D64[False, 2048]


def test_forced_gives_one_candidate_and_no_pins(monkeypatch, sweep_configs):
    import torch

    monkeypatch.setattr(attention, "is_hopper", lambda _device: True)
    q, args = torch.empty(0), (64, 64, False, _opts(), False, 2048)
    candidates = attention._dq_candidates
    with sweep_configs.forced("dq", (1, 2, 3, 4)):
        assert attention._dq_candidates(64) == [(1, 2, 3, 4)]
        assert attention._pinned_config("dq", q, *args) is None
        assert attention._pinned_config("fwd", q, *args) is None
    assert attention._dq_candidates is candidates
    assert attention._pinned_config("dq", q, *args) == attention._HOPPER_DQ_D64[False, 2048]


def test_pins_against_autotune_summary(sweep_configs):
    """Medians per mode over the rounds, their ratio and the autotuned range; a shape timed
    in one mode only is left out."""
    shape = {"D": 64, "causal": False, "seqlen": 2048, "what": "backward"}
    rows = [
        {**shape, "round": r, "mode": m, "tflops": t}
        for r, m, t in [(1, "pinned", 320.0), (1, "autotuned", 300.0), (2, "pinned", 330.0),
                        (2, "autotuned", 340.0), (3, "pinned", 325.0), (3, "autotuned", 310.0)]
    ]  # fmt: skip
    rows.append({**shape, "seqlen": 1024, "round": 1, "mode": "pinned", "tflops": 290.0})
    (summary,) = sweep_configs.pinned_over_autotuned(rows)
    assert summary["seqlen"] == 2048 and summary["rounds"] == 3
    assert summary["pinned_tflops"] == 325.0 and summary["autotuned_tflops"] == 310.0
    assert summary["ratio"] == pytest.approx(325.0 / 310.0)
    assert (summary["autotuned_min"], summary["autotuned_max"]) == (300.0, 340.0)


@pytest.mark.parametrize("kernel", ["fwd", "dq", "dkdv"])
def test_pinned_configs_are_candidates_or_swept(sweep_configs, kernel):
    """Every pinned config is one the sweep timed (a candidate or one of its extras) and the
    GPU tests check (test_every_backward_config), pinned per (causal, length class)."""
    table = attention._HOPPER_D64_PINS[kernel]
    candidates = getattr(attention, f"_{kernel}_candidates")(64)
    swept = set(candidates) | set(sweep_configs.EXTRA.get((kernel, 64), []))
    assert set(table.values()) <= swept
    classes = {(causal, s) for causal in (False, True) for s in (1024, 2048, 4096, 8192, 16384)}
    assert set(table) <= classes
    if kernel == "fwd":
        assert set(table) == classes


def test_plan_keys_follow_signature_switches_and_settings(monkeypatch):
    """Two calls share a plan only where everything the Gluon dispatch reads is equal: the
    tensors' shapes, strides, dtypes, devices and 16-byte alignment, the options, the
    environment switches and the module's settings (which the benchmarks change)."""
    import torch

    q = torch.zeros(1, 64, 2, 16, dtype=torch.float16)
    options = (0.25, -1, 0, 0.0, True, 0.0)

    def key(*tensors, opts=options):
        return attention._plan_key("fwd", opts, tensors or (q, q, q))

    first = key()
    assert key() == first and hash(key()) == hash(first)
    shifted = torch.zeros(q.numel() + 1, dtype=q.dtype)[1:].view(q.shape)
    others = [
        key(q.transpose(1, 2).contiguous().transpose(1, 2), q, q),  # other strides
        key(q.float(), q, q),
        key(shifted, q, q),  # off 16-byte alignment
        key(torch.zeros(1, 65, 2, 16, dtype=q.dtype), q, q),
        key(opts=(0.25, -1, -1, 0.0, True, 0.0)),  # not causal
    ]
    monkeypatch.setenv("FLASH_ATTN_TRI_GLUON_BWD", "0")
    others.append(key())
    monkeypatch.setitem(attention._HOPPER_BWD_STEP, "LATE_DK", True)
    others.append(key())
    monkeypatch.setitem(attention._HOPPER_BWD_TILES, ("dq", 64), (64, 64, 3))
    others.append(key())
    monkeypatch.setattr(attention, "_HOPPER_FWD_O_VIA_TMA", False)
    others.append(key())
    assert len({first, *others}) == len(others) + 1
