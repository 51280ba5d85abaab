"""Time each kernel of the three backwards on their own, at the setup of
``bench_flash_attn.py`` (16384 tokens, hidden 2048, bf16, D = 64 and 128, causal and not):
where a backward's time goes, and each kernel's matmul rate against the forward's.

- ``triton``: the Triton dQ kernel (with delta), then the Triton dK/dV kernel;
- ``split`` (the default at D = 64 and at D = 128 causal on Hopper): the Gluon dQ kernel
  (with the row statistics lse·log2 e and delta), then the Gluon dK/dV kernel;
- ``fused`` (the default at D = 128 without a mask): the row statistics with the
  accumulator's zeroing, the Gluon dK/dV kernel adding dQ up with the copy engine's bulk
  reductions, and the conversion of the accumulator to dQ.

Each part is timed alone (``triton.testing.do_bench`` median, L2 flushed between calls) with
its inputs from one forward; a row also gives the sum of its parts and the whole backward as
``autograd.grad`` runs it (host work included). ``TFLOP/s`` counts the matmuls the kernel
issues (2 · rows · keys · D each, halved when causal): dQ 3 (S, dP, dQ), dK/dV 4 (S, dP, dV,
dK), fused 5. Run on a Hopper GPU: ``python3 bench_backward_kernels.py [--seqlen S ...]``;
prints a table and writes ``backward_kernels.csv`` to ``results_dir("flash-attn-tri")``.
"""

from __future__ import annotations

import argparse
import sys

import torch

from tri_shared.bench import env_set, print_table, results_dir, tflops, time_fn, write_csv

TOKENS = 16384
HIDDEN = 2048
SEQLENS = (1024, 2048, 4096, 8192, 16384)
HEAD_DIMS = (64, 128)


def _parts(kind: str, q, k, v, out, lse, dout, causal: bool):
    """(name, matmuls, function) of each launch of the ``kind`` backward, given the
    forward's ``out`` and ``lse``."""
    from flash_attn_tri import attention as fa

    d = q.shape[-1]
    o = fa._Opts(d, d**-0.5, -1, 0 if causal else -1, 0.0, 0.0)
    dq, dk, dv = (torch.empty_like(t) for t in (q, k, v))
    if kind in ("split", "fused"):
        plan = fa._gluon_backward_plan(kind, q, k, dout, out, lse, dq, dk, o, causal)
    if kind == "split":
        stats = fa._gluon_dq(q, k, v, dout, out, lse, dq, plan.first)  # for dK/dV
        return [
            ("dq", 3, lambda: fa._gluon_dq(q, k, v, dout, out, lse, dq, plan.first)),
            ("dkdv", 4, lambda: fa._gluon_dkdv(q, k, v, dout, stats, dk, dv, plan.second)),
        ]
    if kind == "fused":
        acc, stats = fa._gluon_dq_accumulator(q, out, dout, lse, plan.first)
        return [
            ("preprocess", 0, lambda: fa._gluon_dq_accumulator(q, out, dout, lse, plan.first)),
            ("fused", 5, lambda: fa._gluon_dkdv(q, k, v, dout, stats, dk, dv, plan.second, acc)),
            ("dq copy", 0, lambda: dq.copy_(acc[:, : q.shape[1]])),
        ]
    # the Triton kernels: the whole backward with the Gluon kernels off (two launches)
    return [("dq+dkdv", 7, None)]


def _measure(d: int, causal: bool, s: int) -> list[dict]:
    """The rows of one shape: each backward's parts, their sum and the whole backward."""
    from flash_attn_tri import flash_attn_func

    batch, heads = TOKENS // s, HIDDEN // d
    g = torch.Generator(device="cuda").manual_seed(s + d)
    q, k, v, dout = (
        torch.randn(batch, s, heads, d, device="cuda", dtype=torch.bfloat16, generator=g)
        for _ in range(4)
    )
    qkv = tuple(t.clone().requires_grad_() for t in (q, k, v))
    out, lse, _ = flash_attn_func(*qkv, causal=causal, return_attn_probs=True)
    out = out.detach()
    pair_flops = 2 * batch * heads * s * s * d * (0.5 if causal else 1.0)
    rows = []
    for kind, switch in (("triton", "0"), ("split", "1"), ("fused", "fused")):
        key = {"D": d, "causal": causal, "seqlen": s, "backward": kind}
        with env_set("FLASH_ATTN_TRI_GLUON_BWD", switch):
            out_g = flash_attn_func(*qkv, causal=causal)
            whole_ms = time_fn(
                lambda out_g=out_g: torch.autograd.grad(out_g, qkv, dout, retain_graph=True)
            )
            total = 0.0
            for name, matmuls, fn in _parts(kind, q, k, v, out, lse, dout, causal):
                ms = whole_ms if fn is None else time_fn(fn)
                total += ms
                flops = tflops(matmuls * pair_flops, ms) if matmuls else float("nan")
                rows.append({**key, "part": name, "ms": ms, "tflops": flops})
        for name, ms in (("sum of parts", total), ("autograd.grad", whole_ms)):
            rows.append({**key, "part": name, "ms": ms, "tflops": tflops(5 * pair_flops, ms)})
        print(f"D={d} causal={causal} S={s} {kind}: {total:.3f} ms in parts, "
              f"{whole_ms:.3f} ms whole", flush=True)  # fmt: skip
    return rows


def main() -> int:
    if not torch.cuda.is_available():
        print("no CUDA device: this benchmark needs a GPU")
        return 0
    from flash_attn_tri.attention import is_hopper

    if not is_hopper(torch.device("cuda")):
        print("not a Hopper GPU: the Gluon kernels do not run here")
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seqlen", type=int, nargs="*", default=list(SEQLENS))
    args = parser.parse_args()
    rows = [
        row
        for d in HEAD_DIMS
        for causal in (False, True)
        for s in args.seqlen
        for row in _measure(d, causal, s)
    ]
    print_table(rows, ["D", "causal", "seqlen", "backward", "part", "ms", "tflops"],
                title="backward kernels, bf16 (TFLOP/s: the kernel's own matmuls; sums: 2.5 "
                "forwards)")  # fmt: skip
    write_csv(rows, results_dir("flash-attn-tri") / "backward_kernels.csv")
    return 0


if __name__ == "__main__":
    sys.exit(main())
