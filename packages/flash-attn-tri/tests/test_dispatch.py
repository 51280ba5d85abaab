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
        (None, 64, False, 4096, False, "fused"),  # D = 64: fused from 4096 tokens
        (None, 64, True, 16384, False, "fused"),
        (None, 64, True, 4095, False, None),  # shorter: the Triton kernels
        (None, 64, False, 16384, True, None),  # deterministic: Triton (split is no faster)
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
