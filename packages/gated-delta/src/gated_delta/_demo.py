"""Demo cases of the gated-delta operators (see :mod:`tri_shared.demo`)."""

from __future__ import annotations

import torch

from tri_shared.demo import DemoCase
from tri_shared.testing import randn, randperm

from .chunk import fused_sigmoid_gating_delta_rule_prefill
from .fused_sigmoid_gating_recurrent import fused_sigmoid_gating_delta_rule_update
from .reference import fused_sigmoid_gating_delta_rule_update_native_optimized


def _gated_inputs(
    B: int,
    T: int,
    H: int,
    HV: int,
    K: int,
    V: int,
    dtype: torch.dtype,
    device: torch.device,
    seed: int,
) -> tuple:
    """The positional arguments before the pool: A_log, a, dt_bias, softplus beta and
    threshold, q, k, v, b (a and b as [B*T, HV])."""
    return (
        randn((HV,), seed=seed, device=device, scale=0.5),
        randn((B * T, HV), seed=seed + 1, device=device, dtype=dtype),
        randn((HV,), seed=seed + 2, device=device),
        1.0,
        20.0,
        randn((B, T, H, K), seed=seed + 3, device=device, dtype=dtype),
        randn((B, T, H, K), seed=seed + 4, device=device, dtype=dtype),
        randn((B, T, HV, V), seed=seed + 5, device=device, dtype=dtype),
        randn((B * T, HV), seed=seed + 6, device=device, dtype=dtype),
    )


def _decode_case(device: torch.device) -> DemoCase:
    # Qwen3-Next heads on a GPU; a small head dim under the interpreter (it runs programs one
    # by one on the CPU)
    if device.type == "cuda":
        N, H, HV, K, V, dtype = 64, 16, 32, 128, 128, torch.bfloat16
    else:
        N, H, HV, K, V, dtype = 4, 2, 4, 32, 32, torch.float32
    slots = 2 * N
    pool = randn((slots, HV, K, V), seed=7, device=device, scale=0.1)
    idx = randperm(slots, seed=8, device=device)[:N].to(torch.int32)
    args = _gated_inputs(N, 1, H, HV, K, V, dtype, device, seed=0)

    # each call starts from the same pool (a copy), so repeated timing runs stay comparable
    def run() -> torch.Tensor:
        return fused_sigmoid_gating_delta_rule_update(*args, pool.clone(), idx, None, True)

    def reference() -> torch.Tensor:
        return fused_sigmoid_gating_delta_rule_update_native_optimized(
            *args, pool.clone(), idx, None, True
        )

    tol = 1e-2 if dtype == torch.bfloat16 else 1e-5
    name = "bf16" if dtype == torch.bfloat16 else "fp32"
    return DemoCase(
        "gated_delta.fused_sigmoid_gating_delta_rule_update",
        f"N={N} T=1 H={H} HV={HV} K=V={K} {name}, fp32 pool",
        run,
        reference,
        tol,
    )


def _prefill_case(device: torch.device) -> DemoCase:
    # varlen prefill of a few prompts (one of length 1) into pool slots, against the
    # recurrent reference on the same inputs
    if device.type == "cuda":
        lengths, H, HV, K, V, dtype = [1000, 1, 3000, 257], 16, 32, 128, 128, torch.bfloat16
    else:
        lengths, H, HV, K, V, dtype = [70, 1, 130], 2, 4, 32, 32, torch.float32
    N, T = len(lengths), sum(lengths)
    cu_seqlens = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], device=device)
    slots = 2 * N
    pool = randn((slots, HV, K, V), seed=17, device=device, scale=0.1)
    idx = randperm(slots, seed=18, device=device)[:N].to(torch.int32)
    args = _gated_inputs(1, T, H, HV, K, V, dtype, device, seed=10)

    def run() -> torch.Tensor:
        return fused_sigmoid_gating_delta_rule_prefill(
            *args, pool.clone(), idx, None, True, cu_seqlens
        )

    def reference() -> torch.Tensor:
        return fused_sigmoid_gating_delta_rule_update_native_optimized(
            *args, pool.clone(), idx, None, True, cu_seqlens
        )

    name = "bf16" if dtype == torch.bfloat16 else "fp32"
    return DemoCase(
        "gated_delta.fused_sigmoid_gating_delta_rule_prefill",
        f"varlen {lengths} H={H} HV={HV} K=V={K} {name}, fp32 pool",
        run,
        reference,
        1e-2 if dtype == torch.bfloat16 else 1e-5,
    )


def cases(device: torch.device) -> list[DemoCase]:
    return [_decode_case(device), _prefill_case(device)]
