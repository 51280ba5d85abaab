"""Decode benchmark of ``fused_sigmoid_gating_delta_rule_update`` on the Qwen3-Next shape.

H = 16, HV = 32, K = V = 128, T = 1, l2norm on, bf16 q/k/v, random distinct pool slots.
Bytes = state read + write (N·HV·K·V·bytes·2) + q, k, v, o (+ a, b); bandwidth as a
fraction of the device-to-device copy bandwidth measured in the same run.

Timing: the kernel replayed from a CUDA graph (how engines run decode: no Python launch
cost), and the eager call (Python checks + launch) for comparison. Baselines: the package's
vectorised PyTorch reference; FLA's fused_recurrent_gated_delta_rule with a gather/scatter
of the pool slots when ``fla`` is importable.

    python3 bench_decode.py            # the table, CSV and PNG
    python3 bench_decode.py --sweep    # also a shortlist of launch configs per batch size
"""

from __future__ import annotations

import sys

import torch

from gated_delta.fused_sigmoid_gating_recurrent import _forward, pick_config
from gated_delta.reference import fused_sigmoid_gating_delta_rule_update_native_optimized
from tri_shared.bench import (
    environment,
    gbps,
    measure_ceilings,
    plot,
    print_table,
    results_dir,
    time_fn,
    write_csv,
)
from tri_shared.testing import randn, randperm

H, HV, K, V = 16, 32, 128, 128
BATCHES = (1, 8, 32, 128, 512)
SWEEP_BATCHES = (1, 8, 32, 128)


def make_inputs(N: int, layout: str, pool_dtype: torch.dtype, seed: int = 0) -> dict:
    dev = torch.device("cuda")
    slots = 2 * N + 8
    state = (HV, K, V) if layout == "kv" else (HV, V, K)
    return {
        "A_log": randn((HV,), seed=seed, device=dev, scale=0.5),
        "a": randn((N, HV), seed=seed + 1, device=dev, dtype=torch.bfloat16),
        "dt_bias": randn((HV,), seed=seed + 2, device=dev),
        "softplus_beta": 1.0,
        "softplus_threshold": 20.0,
        "q": randn((N, 1, H, K), seed=seed + 3, device=dev, dtype=torch.bfloat16),
        "k": randn((N, 1, H, K), seed=seed + 4, device=dev, dtype=torch.bfloat16),
        "v": randn((N, 1, HV, V), seed=seed + 5, device=dev, dtype=torch.bfloat16),
        "b": randn((N, HV), seed=seed + 6, device=dev, dtype=torch.bfloat16),
        "initial_state_source": randn((slots, *state), seed=seed + 7, device=dev, scale=0.1).to(
            pool_dtype
        ),
        "initial_state_indices": randperm(slots, seed=seed + 8, device=dev)[:N].to(torch.int32),
    }


def positional(x: dict) -> tuple:
    return (
        x["A_log"],
        x["a"],
        x["dt_bias"],
        x["softplus_beta"],
        x["softplus_threshold"],
        x["q"],
        x["k"],
        x["v"],
        x["b"],
        x["initial_state_source"],
        x["initial_state_indices"],
        None,
        True,
        None,
    )


def nbytes(N: int, pool_dtype: torch.dtype) -> int:
    state = N * HV * K * V * torch.tensor([], dtype=pool_dtype).element_size() * 2
    qk = 2 * N * H * K * 2
    vo = 2 * N * HV * V * 2
    ab = 2 * N * HV * 2
    return state + qk + vo + ab


def graph_time(fn, **timing) -> float:
    """Median ms of ``fn`` replayed from a CUDA graph (one call per replay)."""
    fn()  # compile and warm up outside the capture
    torch.cuda.synchronize()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return time_fn(graph.replay, **timing)


def fla_baseline():
    try:
        from fla.ops.gated_delta_rule import fused_recurrent_gated_delta_rule
    except Exception as exc:  # any import failure means: not available here
        print(f"FLA baseline skipped: fla is not importable ({type(exc).__name__})")
        return None

    def run(x: dict) -> torch.Tensor:
        idx = x["initial_state_indices"].long()
        h0 = x["initial_state_source"][idx].float()
        g = -torch.exp(x["A_log"]) * torch.nn.functional.softplus(x["a"].float() + x["dt_bias"])
        beta = torch.sigmoid(x["b"].float())
        N = x["q"].shape[0]
        o, ht = fused_recurrent_gated_delta_rule(
            x["q"],
            x["k"],
            x["v"],
            g.view(N, 1, HV),
            beta.view(N, 1, HV).to(x["q"].dtype),
            initial_state=h0,
            output_final_state=True,
            use_qk_l2norm_in_kernel=True,
        )
        x["initial_state_source"][idx] = ht.to(x["initial_state_source"].dtype)
        return o

    return run


def sweep(ceil) -> list[dict]:
    """A shortlist of (BLOCK_V, num_warps) per layout, each with the flat and the 2-D grid,
    per batch size, timed from a CUDA graph."""
    rows = []
    shortlist = {
        "kv": [(32, 1), (64, 2), (32, 2), (128, 4), (16, 1)],
        "vk": [(16, 1), (32, 1), (8, 1), (64, 2), (16, 2)],
    }
    # latency-bound small batches: also fewer, wider programs and more warps per program
    small_batch_extra = {
        "kv": [(16, 2), (64, 4), (128, 8)],
        "vk": [(4, 1), (8, 2), (32, 2), (16, 4)],
    }
    for layout, pool_dtype in (
        ("kv", torch.float32),
        ("vk", torch.float32),
        ("kv", torch.bfloat16),
    ):
        for N in BATCHES:
            x = make_inputs(N, layout, pool_dtype)
            found = []
            pairs = shortlist[layout] + (small_batch_extra[layout] if N <= 32 else [])
            configs = [(bv, w, fl) for bv, w in pairs for fl in (True, False)]
            for block_v, warps, flat in configs:
                ms = graph_time(
                    lambda x=x, bv=block_v, w=warps, lay=layout, fl=flat: _forward(
                        *positional(x),
                        state_layout=lay,
                        block_v=bv,
                        num_warps=w,
                        flat_grid=fl,
                    ),
                    warmup=5,
                    rep=20,
                )
                frac = ceil.fraction_of_copy(gbps(nbytes(N, pool_dtype), ms))
                row = {"layout": layout, "pool": str(pool_dtype)[6:], "N": N}
                row |= {"block_v": block_v, "warps": warps}
                row |= {"flat_grid": flat, "us": ms * 1e3, "frac_copy": frac}
                rows.append(row)
                found.append(row)
            found.sort(key=lambda r: r["us"])
            auto = pick_config(N * HV, K, V, layout, pool_dtype.itemsize)
            top = [
                (
                    r["block_v"],
                    r["warps"],
                    r["flat_grid"],
                    round(r["us"], 1),
                    round(r["frac_copy"], 3),
                )
                for r in found[:5]
            ]
            print(f"sweep {layout} {pool_dtype} N={N}: heuristic {auto}; best {top}", flush=True)
    return rows


def main() -> None:
    if not torch.cuda.is_available():
        print("bench_decode: needs a CUDA GPU; nothing to do on this machine")
        return
    env = environment()
    print(env)
    ceil = measure_ceilings("cuda")
    print(f"ceilings: copy {ceil.copy_gbps:.0f} GB/s, bf16 matmul {ceil.matmul_tflops:.0f} TFLOP/s")
    if "--sweep-only" in sys.argv:
        write_csv(sweep(ceil), results_dir("gated-delta") / "bench_decode_sweep.csv")
        return
    fla = fla_baseline()
    print("SGLang baseline skipped: sglang is not part of this environment")
    rows = []
    for layout, pool_dtype in (
        ("kv", torch.float32),
        ("vk", torch.float32),
        ("kv", torch.bfloat16),
    ):
        for N in BATCHES:
            x = make_inputs(N, layout, pool_dtype)
            nb = nbytes(N, pool_dtype)
            pname = str(pool_dtype).replace("torch.", "")
            entries = {
                "triton (graph)": lambda x=x, layout=layout: _forward(
                    *positional(x), state_layout=layout
                ),
            }
            for name, fn in entries.items():
                ms = graph_time(fn)
                rows.append(
                    {
                        "impl": name,
                        "layout": layout,
                        "pool": pname,
                        "N": N,
                        "us": ms * 1e3,
                        "TB/s": gbps(nb, ms) / 1e3,
                        "frac_copy": ceil.fraction_of_copy(gbps(nb, ms)),
                    }
                )
            ms = time_fn(lambda x=x, layout=layout: _forward(*positional(x), state_layout=layout))
            rows.append(
                {
                    "impl": "triton (eager)",
                    "layout": layout,
                    "pool": pname,
                    "N": N,
                    "us": ms * 1e3,
                    "TB/s": gbps(nb, ms) / 1e3,
                    "frac_copy": ceil.fraction_of_copy(gbps(nb, ms)),
                }
            )
            if layout == "kv" and pool_dtype == torch.float32:
                ref = fused_sigmoid_gating_delta_rule_update_native_optimized
                ms = time_fn(lambda x=x, ref=ref: ref(*positional(x)), warmup=5, rep=20)
                rows.append(
                    {
                        "impl": "torch reference",
                        "layout": layout,
                        "pool": pname,
                        "N": N,
                        "us": ms * 1e3,
                        "TB/s": gbps(nb, ms) / 1e3,
                        "frac_copy": ceil.fraction_of_copy(gbps(nb, ms)),
                    }
                )
                if fla is not None:
                    ms = time_fn(lambda x=x: fla(x))
                    rows.append(
                        {
                            "impl": "fla + gather/scatter",
                            "layout": layout,
                            "pool": pname,
                            "N": N,
                            "us": ms * 1e3,
                            "TB/s": gbps(nb, ms) / 1e3,
                            "frac_copy": ceil.fraction_of_copy(gbps(nb, ms)),
                        }
                    )
            del x
            torch.cuda.empty_cache()
    title = (
        f"GDN decode, H={H} HV={HV} K=V={K}, T=1, bf16 q/k/v, l2norm - {ceil.device_name}, "
        f"copy {ceil.copy_gbps:.0f} GB/s"
    )
    print_table(rows, title=title)
    out = results_dir("gated-delta")
    write_csv(rows, out / "bench_decode.csv")
    for r in rows:
        r["series"] = f"{r['impl']} {r['layout']} {r['pool']}"
    plot(rows, x="N", y="frac_copy", series="series", path=out / "bench_decode.png", title=title)
    if "--sweep" in sys.argv:
        srows = sweep(ceil)
        write_csv(srows, out / "bench_decode_sweep.csv")


if __name__ == "__main__":
    main()
