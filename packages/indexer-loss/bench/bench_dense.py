"""Benchmark of the dense (warm-up) indexer loss: fused Triton against plain PyTorch.

Run on a GPU: ``python3 bench_dense.py`` (or ``bash tools/gpu.sh bench indexer-loss``).
bf16, B = 1, H = 64, D = 128, chunk_offset = 0 (S = L). Prints a table and writes
``bench_dense.csv`` / ``bench_dense.png`` under ``results_dir("indexer-loss")``.

FLOPs: one causal ``Q·Kᵀ`` is ``2·B·H·D·pairs`` (pairs = causal (row, key) pairs). The
fused forward computes it twice (per-head log-sum-exp, then the target and KL) and the
backward once more, so the executed counts are 2× (forward) and 3× (forward + backward);
TFLOP/s below are executed FLOPs over time, next to the bf16 matmul rate of the same run.
Extra memory: peak allocated during the call minus what was allocated before it, minus the
outputs (the loss and, with backward, index_score's gradient).
"""

from __future__ import annotations

import os
import sys

import torch

from indexer_loss import compute_index_loss_dense as fused_dense
from tri_shared.bench import (
    environment,
    measure_ceilings,
    plot,
    print_table,
    results_dir,
    tflops,
    time_fn,
    write_csv,
)

H, D = 64, 128
DTYPE = torch.bfloat16
SCALING = D**-0.5


def plain_dense(query, key, index_score, scaling, chunk_offset=0, eps=1e-10):
    """What a user would write: materialise per-head probabilities [B, H, S, L]."""
    S, L = query.shape[2], key.shape[1]
    pos = chunk_offset + torch.arange(S, device=query.device)
    valid = torch.arange(L, device=query.device)[None, :] <= pos[:, None]
    with torch.no_grad():
        s = torch.einsum("bhsd,bld->bhsl", query, key).float()
        s.mul_(scaling)
        s.masked_fill_(~valid, float("-inf"))
        p = torch.softmax(s, dim=-1).sum(dim=1) / query.shape[1]
        del s
    logits = index_score.float().masked_fill(~valid, float("-inf"))
    q = torch.softmax(logits, dim=-1)
    terms = p * (torch.log(p + eps) - torch.log(q + eps))
    return torch.where(valid & (p > 0), terms, 0.0).sum(dim=-1)


def causal_pairs(S: int, L: int, off: int) -> int:
    return sum(min(L, off + t + 1) for t in range(S))


def measure(fn, *, backward: bool, x: torch.Tensor):
    """(median ms, extra bytes) of fn() (+ backward into x.grad, reset before each call)."""

    def step():
        loss = fn()
        if backward:
            loss.sum().backward()
        return loss

    step()
    torch.cuda.synchronize()
    x.grad = None
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    loss = step()
    torch.cuda.synchronize()
    outputs = loss.numel() * loss.element_size()
    if backward:
        outputs += x.grad.numel() * x.grad.element_size()
    extra = torch.cuda.max_memory_allocated() - before - outputs
    del loss
    ms = time_fn(step, warmup=10, rep=50, grad_to_none=[x])
    x.grad = None
    return ms, extra


def main() -> int:
    if not torch.cuda.is_available():
        print("bench_dense: needs a CUDA GPU")
        return 0
    env = environment()
    print("environment:", env)
    ceil = measure_ceilings("cuda")
    print(f"ceilings: bf16 matmul {ceil.matmul_tflops:.0f} TFLOP/s, copy {ceil.copy_gbps:.0f} GB/s")
    sizes = [int(s) for s in os.environ.get("BENCH_DENSE_S", "2048,4096,8192,32768").split(",")]
    rows = []
    for S in sizes:
        L, off = S, 0
        pairs = causal_pairs(S, L, off)
        qk = 2.0 * H * D * pairs
        query = torch.randn(1, H, S, D, device="cuda", dtype=DTYPE)
        key = torch.randn(1, L, D, device="cuda", dtype=DTYPE)
        x = torch.randn(1, S, L, device="cuda", dtype=DTYPE).requires_grad_()
        impls = {
            "fused": lambda q=query, k=key, x=x, o=off: fused_dense(q, k, x, SCALING, o),
            "plain torch": lambda q=query, k=key, x=x, o=off: plain_dense(q, k, x, SCALING, o),
        }
        for name, fn in impls.items():
            for backward in (False, True):
                mode = "fwd+bwd" if backward else "fwd"
                row = {"S=L": S, "impl": name, "mode": mode}
                # The plain version peaks at ~2 fp32 copies of [H, S, L]: skip what cannot fit.
                need = 2.2 * 4 * H * S * L
                if name == "plain torch" and need > torch.cuda.mem_get_info()[0]:
                    row.update(ms=float("nan"), note=f"skipped: needs ~{need / 2**30:.0f} GiB")
                    rows.append(row)
                    continue
                try:
                    ms, extra = measure(fn, backward=backward, x=x)
                except torch.cuda.OutOfMemoryError:
                    torch.cuda.empty_cache()
                    row.update(ms=float("nan"), note="out of memory")
                    rows.append(row)
                    continue
                executed = qk * ((3 if backward else 2) if name == "fused" else 1)
                tf = tflops(executed, ms)
                row.update(
                    ms=ms,
                    TFLOPs=tf,
                    frac_matmul=ceil.fraction_of_matmul(tf),
                    extra_GiB=extra / 2**30,
                )
                rows.append(row)
        if torch.cuda.mem_get_info()[0] > 5 * 4 * H * S * L:
            with torch.no_grad():
                ref = impls["plain torch"]()
                err = (impls["fused"]() - ref).norm() / ref.norm()
                del ref
            print(f"S = L = {S}: fused vs plain torch loss, relative error {err.item():.2e}")
        for mode in ("fwd", "fwd+bwd"):
            f = [r for r in rows if r["S=L"] == S and r["impl"] == "fused" and r["mode"] == mode]
            p = [r for r in rows if r["S=L"] == S and r["impl"] != "fused" and r["mode"] == mode]
            if f and p and p[0]["ms"] == p[0]["ms"]:
                f[0]["speedup"] = p[0]["ms"] / f[0]["ms"]
        del query, key, x
        torch.cuda.empty_cache()
        print_table(rows[-4:], title=f"S = L = {S}")
    cols = ["S=L", "impl", "mode", "ms", "TFLOPs", "frac_matmul", "extra_GiB", "speedup", "note"]
    print_table(
        rows,
        cols,
        title=f"dense indexer loss, bf16, B=1 H={H} D={D}, {env['device']}, "
        f"matmul {ceil.matmul_tflops:.0f} TFLOP/s",
    )
    from indexer_loss.kernels import dense as kernels

    for name in ("_dense_head_lse_tuned", "_dense_target_tuned"):
        tuner = getattr(kernels, name)
        for key, cfg in getattr(tuner, "cache", {}).items():
            print(f"{name} {key}: {cfg}")
    out = results_dir("indexer-loss")
    write_csv(rows, out / "bench_dense.csv")
    plot(
        [r for r in rows if r["mode"] == "fwd+bwd"],
        x="S=L",
        y="ms",
        series="impl",
        path=out / "bench_dense.png",
        title="dense indexer loss fwd+bwd (bf16, H=64, D=128)",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
