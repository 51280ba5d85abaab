"""Demo cases of the gated-delta decode operator (see :mod:`tri_shared.demo`)."""

from __future__ import annotations

import torch

from tri_shared.demo import DemoCase
from tri_shared.testing import randn, randperm

from .fused_sigmoid_gating_recurrent import fused_sigmoid_gating_delta_rule_update
from .reference import fused_sigmoid_gating_delta_rule_update_native_optimized


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
    args = (
        randn((HV,), seed=0, device=device, scale=0.5),
        randn((N, HV), seed=1, device=device, dtype=dtype),
        randn((HV,), seed=2, device=device),
        1.0,
        20.0,
        randn((N, 1, H, K), seed=3, device=device, dtype=dtype),
        randn((N, 1, H, K), seed=4, device=device, dtype=dtype),
        randn((N, 1, HV, V), seed=5, device=device, dtype=dtype),
        randn((N, HV), seed=6, device=device, dtype=dtype),
    )

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


def cases(device: torch.device) -> list[DemoCase]:
    return [_decode_case(device)]
