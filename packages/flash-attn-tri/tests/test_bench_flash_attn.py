"""bench/bench_flash_attn.py's timing of one case (checked on the CPU with a stand-in for
the attention call)."""

from __future__ import annotations

import time

import torch


def test_time_both_times_forward_and_backward_and_host_on_request(bench_flash_attn):
    calls = []

    def attention(q, k, v, causal):
        calls.append(causal)
        time.sleep(0.001)
        return q * k + v

    q, k, v = (torch.randn(2, 3, requires_grad=True) for _ in range(3))
    dout = torch.ones(2, 3)
    times = bench_flash_attn._time_both(attention, q, k, v, dout, True)
    assert set(times) == {"fwd_ms", "fwdbwd_ms"}
    assert times["fwd_ms"] >= 1.0 and times["fwdbwd_ms"] >= 1.0
    assert calls and all(calls)
    times = bench_flash_attn._time_both(attention, q, k, v, dout, False, host=True)
    assert set(times) == {"fwd_ms", "fwdbwd_ms", "fwd_host_us", "fwdbwd_host_us"}
    # (on the CPU the host time is the whole call: at least the stand-in's sleep)
    assert times["fwd_host_us"] >= 1000 and times["fwdbwd_host_us"] >= 1000
    assert q.grad is None  # gradients returned, nothing accumulated
