"""Host time per call: where short attention calls are bound by the CPU rather than the GPU.

For each shape (16384 tokens, hidden 2048, bf16, as ``bench_flash_attn.py``) and each
implementation, three numbers per call, forward and forward+backward:

- ``host``: the CPU time to enqueue one call, measured over ``--calls`` calls issued behind a
  long sleep kernel (``torch.cuda._sleep``), so the GPU never waits on the CPU and nothing
  blocks; the least of ``--repeats`` such measurements (what the CPU needs; anything else
  running on the machine only adds to it), their median beside it;
- ``graph``: the GPU time of the same call replayed from a CUDA graph (no host work);
- ``eager``: ``do_bench``'s median of the call as users make it.

A call whose ``host`` exceeds its ``graph`` time is host-bound: eager runs at the host's pace.
``--profile`` adds a cProfile of flash_attn_tri's calls (top functions by own time) and
``--breakdown`` the host µs a call spent inside each of a few functions (inclusive, measured
with a clock around each: cProfile's own overhead is larger than most of what it times): the
way to find what the host spends its time on.

Run on a GPU: ``python3 bench_host.py [--profile] [--breakdown] [--calls N] [--repeats R]
[--seqlen S ...] [--head-dim D ...] [--causal | --full] [impl ...]`` (impls:
flash_attn_tri, sdpa_flash, sdpa_cudnn). Prints a table and writes ``bench_host.csv`` to
``results_dir("flash-attn-tri")``.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import pstats
import statistics
import sys
from collections.abc import Callable

import torch

from tri_shared.bench import (
    SLEEP_CYCLES,
    environment,
    host_time_us,
    print_table,
    results_dir,
    time_fn,
    timed_calls,
    write_csv,
)

TOKENS = 16384
HIDDEN = 2048
IMPLS = ("flash_attn_tri", "sdpa_flash", "sdpa_cudnn")


def _impl(name: str) -> tuple[Callable, contextlib.AbstractContextManager]:
    """(attention(q, k, v, causal) on [batch, seqlen, heads, D] tensors, the context to run
    it in)."""
    if name == "flash_attn_tri":
        from flash_attn_tri import flash_attn_func

        return (lambda q, k, v, c: flash_attn_func(q, k, v, causal=c)), contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backend = {"sdpa_flash": SDPBackend.FLASH_ATTENTION, "sdpa_cudnn": SDPBackend.CUDNN_ATTENTION}
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def run(q, k, v, c):
        # SDPA takes [batch, heads, seqlen, D]: transposed views, as a drop-in user would
        out = sdpa(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=c)
        return out.transpose(1, 2)

    return run, sdpa_kernel(backend[name])


def graph_us(fn: Callable[[], object]) -> float:
    """GPU µs of ``fn`` replayed from a CUDA graph (``nan`` if it cannot be captured)."""
    import triton

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    try:
        with torch.cuda.stream(stream):
            for _ in range(3):
                fn()
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            fn()
    except RuntimeError as err:
        print(f"  (not captured: {str(err)[:120]})")
        return float("nan")
    return triton.testing.do_bench(graph.replay) * 1e3


def profile(fn: Callable[[], object], calls: int, top: int = 25) -> str:
    """cProfile of ``calls`` calls of ``fn`` behind a sleep kernel: the top functions by own
    time."""
    fn()
    torch.cuda.synchronize()
    prof = cProfile.Profile()
    torch.cuda._sleep(SLEEP_CYCLES)
    prof.enable()
    for _ in range(calls):
        fn()
    prof.disable()
    torch.cuda.synchronize()
    text = io.StringIO()
    pstats.Stats(prof, stream=text).sort_stats("tottime").print_stats(top)
    return text.getvalue()


def measure(
    name: str, d: int, causal: bool, seqlen: int, calls: int, repeats: int, show_profile: bool,
    split: bool,
) -> list[dict]:  # fmt: skip
    """The rows of one implementation at one shape: forward, then forward+backward."""
    shape = (TOKENS // seqlen, seqlen, HIDDEN // d, d)
    g = torch.Generator(device="cuda").manual_seed(seqlen + d)
    q, k, v, dout = (
        torch.randn(shape, device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(4)
    )
    qkv = [t.requires_grad_() for t in (q, k, v)]
    attn, ctx = _impl(name)

    def fwd():
        with torch.no_grad():
            return attn(q, k, v, causal)

    def step():
        out = attn(*qkv, causal)
        return torch.autograd.grad(out, qkv, dout)

    rows = []
    with ctx:
        for part, fn in (("fwd", fwd), ("fwd+bwd", step)):
            hosts = [host_time_us(fn, calls) for _ in range(repeats)]
            host, host_median = min(hosts), statistics.median(hosts)
            graph, eager = graph_us(fn), time_fn(fn) * 1e3
            rows.append(
                {"impl": name, "D": d, "causal": causal, "seqlen": seqlen, "part": part,
                 "host_us": host, "host_median_us": host_median, "graph_us": graph,
                 "eager_us": eager, "host_bound": host > graph}
            )  # fmt: skip
            print(
                f"{name:15s} D={d:3d} causal={causal!s:5s} S={seqlen:5d} {part:7s}: host "
                f"{host:7.1f} µs (median {host_median:7.1f}), graph {graph:7.1f} µs, "
                f"eager {eager:7.1f} µs",
                flush=True,
            )
            if split and name == "flash_attn_tri":
                print(host_breakdown(fn, calls))
            if show_profile and name == "flash_attn_tri":
                print(profile(fn, calls))
    return rows


def _breakdown_targets() -> list[tuple[object, str]]:
    """(owner, attribute) of the functions ``--breakdown`` times."""
    from triton.backends.nvidia import driver as nvidia_driver

    from flash_attn_tri import attention
    from tri_shared import launch

    targets: list[tuple[object, str]] = [
        (attention, name)
        for name in ("_check_common", "_run", "_forward_impl", "_input_grads", "_backward_impl",
                     "_descriptor", "_box_descriptor", "_gluon_fused_backward",
                     "_gluon_dq_accumulator")
        if hasattr(attention, name)
    ]  # fmt: skip
    targets += [(launch.FastLauncher, "_launch"), (nvidia_driver.CudaLauncher, "__call__")]
    targets += [(nvidia_driver, "make_tensordesc_arg"), (torch.autograd, "grad")]
    return targets


def host_breakdown(fn: Callable[[], object], calls: int) -> str:
    """Host µs a call of ``fn`` spends in each timed function (inclusive) and calls a call,
    behind a sleep kernel."""
    fn()
    torch.cuda.synchronize()
    totals: dict[str, list[int]] = {}
    with timed_calls(_breakdown_targets(), totals):
        fn()  # (the wrappers' first calls)
        torch.cuda.synchronize()
        for slot in totals.values():
            slot[:] = [0, 0]
        per_call = host_time_us(fn, calls, warm=False)
    lines = [f"  {'the whole call':48s} {per_call:8.1f} µs"]
    for name, (ns, count) in sorted(totals.items(), key=lambda kv: -kv[1][0]):
        if count:
            lines.append(f"  {name:48s} {ns / calls / 1e3:8.1f} µs  {count / calls:4.1f} calls")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("impls", nargs="*", default=list(IMPLS), help=", ".join(IMPLS))
    parser.add_argument("--seqlen", type=int, nargs="+", default=[1024, 2048])
    parser.add_argument("--head-dim", type=int, nargs="+", default=[64, 128])
    mask = parser.add_mutually_exclusive_group()
    mask.add_argument("--causal", action="store_true", help="causal rows only")
    mask.add_argument("--full", action="store_true", help="rows without a mask only")
    parser.add_argument("--calls", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=5, help="host measurements per call")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--breakdown", action="store_true")
    args = parser.parse_args()
    unknown = [name for name in args.impls if name not in IMPLS]
    if unknown:
        parser.error(f"impls: expected names among {IMPLS}, got {unknown}")
    if not torch.cuda.is_available():
        print("bench_host.py needs a CUDA GPU", file=sys.stderr)
        return 1
    print(environment())
    masks = [True] if args.causal else [False] if args.full else [False, True]
    rows = []
    for d in args.head_dim:
        for causal in masks:
            for seqlen in args.seqlen:
                for name in args.impls:
                    rows += measure(
                        name, d, causal, seqlen, args.calls, args.repeats, args.profile,
                        args.breakdown,
                    )  # fmt: skip
    cols = ["impl", "D", "causal", "seqlen", "part", "host_us", "host_median_us", "graph_us",
            "eager_us"]  # fmt: skip
    print_table(rows, [*cols, "host_bound"])
    path = write_csv(rows, results_dir("flash-attn-tri") / "bench_host.csv")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
