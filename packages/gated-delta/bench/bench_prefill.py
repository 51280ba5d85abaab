"""Chunked prefill benchmark: Qwen3-Next shape (H = 16, HV = 32, K = V = 128), bf16 q/k/v,
fp32 state pool, l2norm on, N sequences packed with cu_seqlens.

Times, in one run: ``fused_sigmoid_gating_delta_rule_prefill`` (gates fused),
``chunk_gated_delta_rule`` (gates given), FLA's ``chunk_gated_delta_rule`` when importable,
and the decode kernel ``fused_sigmoid_gating_delta_rule_update`` on the same inputs (to find
the length from which the chunked path wins). Prints a table and writes CSV + PNG to
``results_dir("gated-delta")``.

    python3 packages/gated-delta/bench/bench_prefill.py [--quick]
"""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F

from gated_delta import chunk as chunk_mod
from gated_delta.chunk import chunk_gated_delta_rule, fused_sigmoid_gating_delta_rule_prefill
from gated_delta.fused_sigmoid_gating_recurrent import fused_sigmoid_gating_delta_rule_update
from tri_shared.bench import (
    environment,
    kernel_times,
    measure_ceilings,
    plot,
    print_table,
    results_dir,
    tflops,
    time_fn,
    write_csv,
)
from tri_shared.testing import rel_err

H, HV, K, V = 16, 32, 128, 128


def make_inputs(N: int, L: int, device: torch.device) -> dict:
    total = N * L
    gen = torch.Generator(device=device).manual_seed(0)
    rnd = lambda *s: torch.randn(*s, generator=gen, device=device)
    bf = torch.bfloat16
    inp = {
        "q": rnd(1, total, H, K).to(bf),
        "k": rnd(1, total, H, K).to(bf),
        "v": rnd(1, total, HV, V).to(bf),
        "a": rnd(total, HV).to(bf),
        "b": rnd(total, HV).to(bf),
        "A_log": rnd(HV) * 0.5,
        "dt_bias": rnd(HV),
        "pool": rnd(N + 8, HV, K, V) * 0.1,
        "idx": torch.randperm(N + 8, generator=gen, device=device)[:N].to(torch.int32),
        "cu": torch.arange(N + 1, device=device, dtype=torch.int32) * L,
    }
    x = inp["a"].float() + inp["dt_bias"]
    inp["g"] = (-torch.exp(inp["A_log"]) * F.softplus(x))[None]
    inp["beta"] = torch.sigmoid(inp["b"].float())[None]
    inp["h0"] = inp["pool"][inp["idx"].long()].contiguous()
    return inp


def flops(N: int, L: int) -> float:
    """Matrix-product FLOPs of the chunked algorithm (C = 64) per value head, summed: per
    chunk A = K K^T and Q K^T, U = T X, and K S, Q S, P U, K^T U."""
    C = 64
    chunks = N * L / C
    per_chunk = 2 * C * C * K * 2 + 2 * C * C * V
    per_chunk += 2 * C * K * V * 4
    return chunks * per_chunk * HV


def main() -> int:
    if not torch.cuda.is_available():
        print("bench_prefill: needs a CUDA GPU; nothing measured")
        return 0
    quick = "--quick" in sys.argv
    dev = torch.device("cuda")
    env = environment()
    ceil = measure_ceilings(dev)
    print(f"{env}  copy {ceil.copy_gbps:.0f} GB/s  bf16 matmul {ceil.matmul_tflops:.0f} TFLOP/s")
    try:
        from fla.ops.gated_delta_rule import chunk_gated_delta_rule as fla_chunk
    except Exception as exc:
        fla_chunk = None
        print(f"FLA not importable ({type(exc).__name__}: {exc}); FLA column skipped")

    def ours_prefill(i):
        pool = i["pool"]
        return lambda: fused_sigmoid_gating_delta_rule_prefill(
            i["A_log"],
            i["a"],
            i["dt_bias"],
            1.0,
            20.0,
            i["q"],
            i["k"],
            i["v"],
            i["b"],
            pool,
            i["idx"],
            use_qk_l2norm_in_kernel=True,
            cu_seqlens=i["cu"],
        )

    def ours_chunk(i):
        return lambda: chunk_gated_delta_rule(
            i["q"],
            i["k"],
            i["v"],
            i["g"],
            i["beta"],
            initial_state=i["h0"],
            output_final_state=True,
            cu_seqlens=i["cu"],
            use_qk_l2norm_in_kernel=True,
        )

    def decode(i):
        return lambda: fused_sigmoid_gating_delta_rule_update(
            i["A_log"],
            i["a"],
            i["dt_bias"],
            1.0,
            20.0,
            i["q"],
            i["k"],
            i["v"],
            i["b"],
            i["pool"],
            i["idx"],
            use_qk_l2norm_in_kernel=True,
            cu_seqlens=i["cu"],
        )

    def fla(i):
        cu = i["cu"].long()
        return lambda: fla_chunk(
            i["q"],
            i["k"],
            i["v"],
            i["g"],
            i["beta"],
            initial_state=i["h0"],
            output_final_state=True,
            cu_seqlens=cu,
            use_qk_l2norm_in_kernel=True,
        )

    # 1. launch configs of both kernels at the headline size
    N, L = 4, 8192
    inp = make_inputs(N, L, dev)
    sweep = []
    state_configs = [(64, 4, 1), (64, 4, 2), (32, 4, 1)]
    if quick:
        state_configs = state_configs[:1]
    trials = [("prepare_warps", w) for w in (4, 2)] + [("state", c) for c in state_configs]
    default = dict(chunk_mod.TUNING)
    for kind, cfg in trials:
        chunk_mod.TUNING[kind] = cfg
        try:
            ms = time_fn(ours_chunk(inp))
        except Exception as exc:  # a config that does not compile on this device
            print(f"{kind} config {cfg}: {type(exc).__name__}: {exc}")
            chunk_mod.TUNING[kind] = default[kind]
            continue
        sweep.append({"setting": kind, "value": cfg, "ms": ms})
        best = min((r for r in sweep if r["setting"] == kind), key=lambda r: r["ms"])
        chunk_mod.TUNING[kind] = best["value"]
    print_table(sweep, title=f"kernel configs, chunk_gated_delta_rule N={N} L={L}")
    print(f"using {chunk_mod.TUNING}")
    for name, fn in (("ours", ours_chunk(inp)), ("FLA", fla(inp) if fla_chunk else None)):
        if fn is None:
            continue
        times = kernel_times(fn)
        total = sum(times.values())
        print(f"kernel breakdown, {name}, N={N} L={L}: {total:.3f} ms in kernels")
        for kname, ms in times.items():
            print(f"  {ms:8.3f} ms  {kname}")

    # correctness cross-check against FLA and the decode kernel at the headline size
    o_ours, s_ours = ours_chunk(inp)()
    if fla_chunk is not None:
        try:
            o_fla, s_fla = fla(inp)()
            print(
                f"rel err ours vs FLA: o {rel_err(o_ours, o_fla):.2e}, state "
                f"{rel_err(s_ours, s_fla):.2e}"
            )
        except Exception as exc:
            print(f"FLA call failed ({type(exc).__name__}: {exc}); FLA column skipped")
            fla_chunk = None
    o_dec = decode({**inp, "pool": inp["pool"].clone()})()
    print(f"rel err ours vs decode kernel: o {rel_err(o_ours, o_dec):.2e}")

    # 2. lengths: prefill vs FLA vs decode kernel
    rows = []
    lengths = [1, 16, 64, 256, 1024, 8192] if quick else [1, 4, 16, 64, 128, 256, 1024, 8192]
    for L in lengths:
        inp = make_inputs(N, L, dev)
        row = {"N": N, "L": L, "tokens": N * L}
        for name, make in (
            ("prefill_ms", ours_prefill),
            ("chunk_ms", ours_chunk),
            ("fla_ms", fla if fla_chunk is not None else None),
            ("decode_ms", decode),
        ):
            row[name] = time_fn(make(inp)) if make is not None else float("nan")
        row["prefill_TFLOPs"] = tflops(flops(N, L), row["prefill_ms"])
        row["fla/prefill"] = row["fla_ms"] / row["prefill_ms"]
        row["decode/prefill"] = row["decode_ms"] / row["prefill_ms"]
        rows.append(row)
        del inp
        torch.cuda.empty_cache()
    print_table(rows, title=f"gated-delta prefill, {env['device']}, bf16, fp32 state, N={N}")
    out = results_dir("gated-delta")
    write_csv(rows, out / "prefill.csv")
    write_csv(sweep, out / "prefill_configs.csv")
    long_rows = [
        {"L": r["L"], "ms": r[c], "kernel": c[:-3]}
        for r in rows
        for c in ("prefill_ms", "fla_ms", "decode_ms")
        if r[c] == r[c]
    ]
    plot(
        long_rows,
        x="L",
        y="ms",
        series="kernel",
        path=out / "prefill.png",
        title=f"GDN prefill, N={N} sequences, {env['device']}",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
