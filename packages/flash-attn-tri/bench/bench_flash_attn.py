"""Benchmark flash_attn_tri against PyTorch SDPA's flash and cuDNN backends (and flash_attn when
installed) at the FlashAttention setup of ANCHORS.md: batch × seqlen = 16384 tokens, hidden
2048 (heads = 2048 / head dim), bf16, forward and forward+backward, causal and not.

Run on a GPU: ``python3 bench_flash_attn.py`` (or ``bash tools/gpu.sh bench flash-attn-tri``).
Prints a table and writes CSV + PNG plots to ``results_dir("flash-attn-tri")``. Arguments:
impl names to time only those; ``--head-dim=64`` one head dim only (``--head-dim=128,64``:
those, in that order); ``--host`` adds each call's host time (``fwd_host_us``,
``fwdbwd_host_us``: CPU µs to issue a forward / a forward+backward, the least of three
measurements of 30 calls issued behind a sleep kernel, ``tri_shared.bench.host_time_us``),
to see where a row is bound by the CPU rather than the GPU; ``--triton-forward``
adds ``flash_attn_tri_triton_fwd``, flash_attn_tri with the Gluon forward for Hopper turned
off (``FLASH_ATTN_TRI_GLUON=0`` during its calls; the backward is the same), and
``--gluon-forward`` ``flash_attn_tri_gluon_fwd``, with it taking every call it can
(``=1``); ``--backward-variants`` adds three with the
backward chosen by ``FLASH_ATTN_TRI_GLUON_BWD`` (the forward is the same):
``flash_attn_tri_triton_bwd`` (``=0``: the Triton kernels), ``flash_attn_tri_split_bwd``
(``=1``: the split Gluon backward for Hopper wherever it runs) and
``flash_attn_tri_fused_bwd`` (``=fused``: the fused Gluon backward wherever it runs, dQ added
up by the copy engine's reductions).
"""

from __future__ import annotations

import contextlib
import sys

import torch

from tri_shared.bench import (
    env_set,
    environment,
    host_time_us,
    measure_ceilings,
    plot,
    print_table,
    results_dir,
    tflops,
    time_fn,
    write_csv,
)

TOKENS = 16384
HIDDEN = 2048
SEQLENS = (1024, 2048, 4096, 8192, 16384)
HEAD_DIMS = (64, 128)


def _sdpa(backend_name: str):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backend = getattr(SDPBackend, backend_name)

    def run(q, k, v, causal):
        with sdpa_kernel(backend):
            return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal)

    return run


# the environment switch each flash_attn_tri variant runs under, forward and backward
_SWITCHES = {
    "flash_attn_tri_triton_fwd": ("FLASH_ATTN_TRI_GLUON", "0"),
    "flash_attn_tri_gluon_fwd": ("FLASH_ATTN_TRI_GLUON", "1"),
    "flash_attn_tri_triton_bwd": ("FLASH_ATTN_TRI_GLUON_BWD", "0"),
    "flash_attn_tri_split_bwd": ("FLASH_ATTN_TRI_GLUON_BWD", "1"),
    "flash_attn_tri_fused_bwd": ("FLASH_ATTN_TRI_GLUON_BWD", "fused"),
}


def _time_both(fn, q, k, v, dout, causal, host: bool = False) -> dict[str, float]:
    """Median ms of the forward and of forward+backward (``fwd_ms``, ``fwdbwd_ms``); with
    ``host``, the host µs a call of each (``fwd_host_us``, ``fwdbwd_host_us``)."""

    def fwd():
        return fn(q, k, v, causal)

    def fwd_bwd():
        out = fn(q, k, v, causal)
        torch.autograd.grad(out, (q, k, v), dout)

    times = {"fwd_ms": time_fn(fwd), "fwdbwd_ms": time_fn(fwd_bwd)}
    if host:
        times["fwd_host_us"] = min(host_time_us(fwd, 30) for _ in range(3))
        times["fwdbwd_host_us"] = min(host_time_us(fwd_bwd, 30) for _ in range(3))
    return times


def _impls(
    triton_forward: bool = False, backward_variants: bool = False, gluon_forward: bool = False
):
    from flash_attn_tri import flash_attn_func

    def tri(q, k, v, c):
        return flash_attn_func(q, k, v, causal=c)

    impls = {"flash_attn_tri": (tri, "bshd")}
    if triton_forward:
        impls["flash_attn_tri_triton_fwd"] = (tri, "bshd")
    if gluon_forward:
        impls["flash_attn_tri_gluon_fwd"] = (tri, "bshd")
    if backward_variants:
        for name in ("flash_attn_tri_triton_bwd", "flash_attn_tri_split_bwd",
                     "flash_attn_tri_fused_bwd"):  # fmt: skip
            impls[name] = (tri, "bshd")
    impls["sdpa_flash"] = (_sdpa("FLASH_ATTENTION"), "bhsd")
    impls["sdpa_cudnn"] = (_sdpa("CUDNN_ATTENTION"), "bhsd")
    try:
        from flash_attn import flash_attn_func as fa2

        impls["flash_attn"] = (lambda q, k, v, c: fa2(q, k, v, causal=c), "bshd")
    except ImportError:
        print("flash_attn is not installed: skipping that baseline")
    return impls


def ab_attention():
    """The A/B case of ``tools/ab.py``: D = 128, S = 4096, causal, bf16, at the setup above;
    forward with backward (gradients by ``torch.autograd.grad``, nothing accumulated) and
    forward alone."""
    from flash_attn_tri import flash_attn_func

    s, d = 4096, 128
    g = torch.Generator(device="cuda").manual_seed(0)
    shape = (TOKENS // s, s, HIDDEN // d, d)
    q, k, v = (
        torch.randn(shape, device="cuda", dtype=torch.bfloat16, generator=g).requires_grad_()
        for _ in range(3)
    )
    dout = torch.randn(shape, device="cuda", dtype=torch.bfloat16, generator=g)

    def fwd_bwd():
        out = flash_attn_func(q, k, v, causal=True)
        return torch.autograd.grad(out, (q, k, v), dout)

    return {"fwd+bwd": fwd_bwd, "fwd": lambda: flash_attn_func(q, k, v, causal=True)}


def main() -> int:
    if not torch.cuda.is_available():
        print("no CUDA device: this benchmark needs a GPU")
        return 0
    env = environment()
    print(env)
    ceil = measure_ceilings("cuda")
    print(
        f"ceilings: bf16 matmul {ceil.matmul_tflops:.0f} TFLOP/s, "
        f"copy {ceil.copy_gbps:.0f} GB/s ({ceil.device_name})"
    )
    triton_forward = "--triton-forward" in sys.argv
    backward_variants = "--backward-variants" in sys.argv
    gluon_forward = "--gluon-forward" in sys.argv
    host = "--host" in sys.argv
    head_dims = HEAD_DIMS
    for arg in sys.argv[1:]:
        if arg.startswith("--head-dim="):
            head_dims = tuple(int(x) for x in arg.split("=", 1)[1].split(","))
    only = [a for a in sys.argv[1:] if not a.startswith("--")]  # optional filter: impl names
    rows = []
    for d in head_dims:
        heads = HIDDEN // d
        for causal in (False, True):
            for s in SEQLENS:
                batch = TOKENS // s
                g = torch.Generator(device="cuda").manual_seed(s + d)
                shape = (batch, s, heads, d)
                q, k, v = (
                    torch.randn(shape, device="cuda", dtype=torch.bfloat16, generator=g)
                    for _ in range(3)
                )
                dout = torch.randn(shape, device="cuda", dtype=torch.bfloat16, generator=g)
                fwd_flops = 4 * batch * heads * s * s * d * (0.5 if causal else 1.0)
                impls = _impls(triton_forward, backward_variants, gluon_forward)
                for name, (fn, layout) in impls.items():
                    if only and name not in only:
                        continue
                    if layout == "bhsd":
                        qi, ki, vi, doi = (t.transpose(1, 2).contiguous() for t in (q, k, v, dout))
                    else:
                        qi, ki, vi, doi = q, k, v, dout
                    qi, ki, vi = (t.detach().requires_grad_() for t in (qi, ki, vi))
                    row = {"impl": name, "D": d, "causal": causal, "seqlen": s, "batch": batch}
                    switch = _SWITCHES.get(name)
                    try:
                        with env_set(*switch) if switch else contextlib.nullcontext():
                            times = _time_both(fn, qi, ki, vi, doi, causal, host)
                    except RuntimeError as exc:  # backend not available for this shape / build
                        print(f"{name} D={d} causal={causal} S={s}: skipped ({str(exc)[:80]})")
                        continue
                    row.update(
                        fwd_ms=times["fwd_ms"],
                        fwd_tflops=tflops(fwd_flops, times["fwd_ms"]),
                        fwdbwd_ms=times["fwdbwd_ms"],
                        fwdbwd_tflops=tflops(3.5 * fwd_flops, times["fwdbwd_ms"]),
                    )
                    row.update((k, v) for k, v in times.items() if k.endswith("_host_us"))
                    rows.append(row)
                    hosts = (
                        f"  host {row['fwd_host_us']:6.1f} / {row['fwdbwd_host_us']:6.1f} µs "
                        f"against {1e3 * row['fwd_ms']:6.1f} / {1e3 * row['fwdbwd_ms']:6.1f}"
                        if host
                        else ""
                    )
                    print(
                        f"{name:15s} D={d:3d} causal={causal!s:5s} S={s:5d}: "
                        f"fwd {row['fwd_tflops']:6.1f}  "
                        f"fwd+bwd {row['fwdbwd_tflops']:6.1f} TFLOP/s{hosts}",
                        flush=True,
                    )
                del q, k, v, dout
    # ratios against the SDPA backends measured in this run
    by_key = {(r["impl"], r["D"], r["causal"], r["seqlen"]): r for r in rows}
    for r in rows:
        for base in ("sdpa_flash", "sdpa_cudnn"):
            b = by_key.get((base, r["D"], r["causal"], r["seqlen"]))
            if b is not None and r["impl"].startswith("flash_attn_tri"):
                r[f"fwd_vs_{base}"] = r["fwd_tflops"] / b["fwd_tflops"]
                r[f"fwdbwd_vs_{base}"] = r["fwdbwd_tflops"] / b["fwdbwd_tflops"]
    from flash_attn_tri import attention as fa_mod

    for key, kern in fa_mod._kernels.items():  # the launch configs the autotuner picked
        for tuned_for, cfg in getattr(kern, "cache", {}).items():
            print(f"autotuned {key}: {cfg} for {tuned_for}")
    cols = ["impl", "D", "causal", "seqlen", "fwd_tflops", "fwdbwd_tflops"]
    ratio_cols = [f"{m}_vs_{b}" for b in ("sdpa_flash", "sdpa_cudnn") for m in ("fwd", "fwdbwd")]
    host_cols = ["fwd_host_us", "fwdbwd_host_us"] if host else []
    print_table(rows, cols + ratio_cols + host_cols, title=f"attention TFLOP/s, bf16, {env}")
    out = results_dir("flash-attn-tri")
    write_csv(rows, out / "flash_attn_tri.csv")
    for d in head_dims:
        for causal in (False, True):
            sub = [r for r in rows if r["D"] == d and r["causal"] == causal]
            pts = []
            for r in sub:
                pts.append(
                    {"series": f"{r['impl']} fwd", "seqlen": r["seqlen"], "tflops": r["fwd_tflops"]}
                )
                pts.append(
                    {
                        "series": f"{r['impl']} fwd+bwd",
                        "seqlen": r["seqlen"],
                        "tflops": r["fwdbwd_tflops"],
                    }
                )
            plot(
                pts,
                x="seqlen",
                y="tflops",
                series="series",
                path=out / f"flash_attn_tri_d{d}_{'causal' if causal else 'full'}.png",
                title=f"bf16, D={d}, {'causal' if causal else 'non-causal'}, 16K tokens",
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
