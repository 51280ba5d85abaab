"""Benchmark of the fused sparse indexer loss against a plain PyTorch version (bf16).

    python3 packages/indexer-loss/bench/bench_sparse.py

Prints a table, writes bench_sparse.csv and bench_sparse.png to results_dir("indexer-loss").
Times forward and forward + backward (gradient to index_score), the peak extra memory of
each (bytes allocated beyond the inputs), and TFLOP/s: "useful" counts the scores once
(2·B·H·S·topk·D, the work of the loss), the kernel computes them twice (two sweeps).
"""

from __future__ import annotations

import sys

import torch

import indexer_loss.sparse as sparse_mod
from indexer_loss import compute_index_loss_sparse, sparse_attention_target
from tri_shared.bench import (
    env_set,
    environment,
    measure_ceilings,
    plot,
    print_table,
    results_dir,
    tflops,
    time_fn,
    write_csv,
)

SHAPES = [  # (H, S, L, topk, D)
    (16, 4096, 8192, 256, 128),
    (64, 4096, 8192, 2048, 128),
    (128, 4096, 8192, 2048, 576),
]


def plain_loss(query, key, index_score, indices, scaling, chunk_offset=0, eps=1e-10):
    """The straightforward PyTorch version: gather the top-k keys, einsum, masked softmax per
    head, head sum, L1 normalisation, KL; bf16 matmul, fp32 softmax."""
    B, _, S, _ = query.shape
    L = key.shape[1]
    pos = chunk_offset + torch.arange(S, device=query.device)
    idx = indices.long()
    valid = (idx >= 0) & (idx < L) & (idx <= pos[None, :, None])
    safe = torch.where(valid, idx, 0)
    keys = key[torch.arange(B, device=key.device)[:, None, None], safe]  # [B, S, topk, D]
    with torch.no_grad():
        s = torch.einsum("bhsd,bskd->bhsk", query, keys).float() * scaling
        s = s.masked_fill(~valid[:, None], float("-inf"))
        p = torch.softmax(s, dim=-1).nan_to_num(0.0).sum(dim=1)
        p = p / p.sum(-1, keepdim=True).clamp_min(eps)
    x = index_score.float().masked_fill(~valid, float("-inf"))
    logq = torch.log_softmax(x, dim=-1)
    kl = torch.where(valid, p * (torch.log(p + eps) - logq), 0.0)
    return kl.sum(-1)


def inputs(H, S, L, topk, D, chunk_offset):
    dev = "cuda"
    g = torch.Generator(device=dev)
    g.manual_seed(0)
    query = torch.randn(1, H, S, D, device=dev, dtype=torch.bfloat16, generator=g)
    key = torch.randn(1, L, D, device=dev, dtype=torch.bfloat16, generator=g)
    index_score = torch.randn(1, S, topk, device=dev, dtype=torch.bfloat16, generator=g)
    last = chunk_offset + torch.arange(S, device=dev)
    u = torch.rand(1, S, topk, device=dev, generator=g)
    indices = (u * (last[None, :, None] + 1)).long().to(torch.int32)
    return query, key, index_score, indices


def ab_sparse():
    """The A/B case of ``tools/ab.py``: the bench's H = 64, topk = 2048, D = 128 shape (the
    Gluon forward on a Hopper GPU), the loss with its gradient and the target alone."""
    H, S, L, topk, D = SHAPES[1]
    off, scaling = L - S, D**-0.5
    query, key, index_score, indices = inputs(H, S, L, topk, D, off)
    x = index_score.clone().requires_grad_(True)

    def fwd_bwd():
        x.grad = None  # a training step's zero_grad(): the backward writes the gradient
        compute_index_loss_sparse(query, key, x, indices, scaling, off).sum().backward()

    return {
        "fwd+bwd": fwd_bwd,
        "target": lambda: sparse_attention_target(query, key, indices, scaling, off),
    }


def triton_kernel_only():
    """Turn the Gluon (Hopper) forward off, so that the Triton kernel runs."""
    return env_set("INDEXER_LOSS_GLUON", "0")


def kernel_name(q, k) -> str:
    """Which forward the fused loss runs for these inputs."""
    return "Gluon (Hopper)" if sparse_mod._hopper_eligible(q, k) else "Triton"


def measure(fn, backward, grads=()):
    """(median ms, peak extra GiB) of fn (+ backward through index_score). ``grads``: the
    tensors whose gradient is set to None before each call (outside the timed span), as a
    training step's ``zero_grad()`` does; else each backward would also add its gradient to
    the previous call's."""

    def step():
        out = fn()
        if backward:
            out.sum().backward()
        return out

    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    step()
    torch.cuda.synchronize()
    peak = (torch.cuda.max_memory_allocated() - base) / 2**30
    ms = time_fn(step, grad_to_none=grads)
    return ms, peak


def sweep_configs(q, k, x, idx, scaling, off):
    """Forward time of the Triton kernel under a few launch configurations (checks the fixed
    choice in indexer_loss.sparse._launch_config; the Gluon forward is off here)."""
    rows = []
    default = sparse_mod._launch_config
    H, D = q.shape[1], q.shape[3]
    configs = [  # (BLOCK_K, KT1, KT2, num_warps, num_stages, BLOCK_H or None for the default)
        (64, False, True, 4, 2, None),
        (64, False, True, 4, 3, None),
        (64, True, True, 4, 2, None),
        (64, False, False, 4, 2, None),
        (32, False, True, 4, 3, None),
        (128, False, True, 4, 2, None),
        (128, False, True, 8, 2, None),
        (128, True, True, 4, 2, None),
    ]
    if H > 64:
        configs += [(64, False, True, 8, 2, 128), (128, False, True, 8, 2, 128)]
    for bk, kt1, kt2, warps, stages, bh in configs:
        cfg = {"BLOCK_K": bk, "KT1": kt1, "KT2": kt2, "num_warps": warps, "num_stages": stages}
        if bh is not None:
            cfg["BLOCK_H"] = bh
        sparse_mod._launch_config = lambda *_a, cfg=cfg: cfg
        row = {
            "H": H,
            "D": D,
            "BLOCK_K": bk,
            "KT1": kt1,
            "KT2": kt2,
            "warps": warps,
            "stages": stages,
            "BLOCK_H": bh or "default",
        }
        try:
            with torch.no_grad(), triton_kernel_only():
                row["fwd_ms"] = time_fn(
                    lambda: compute_index_loss_sparse(q, k, x, idx, scaling, off)
                )
        except Exception as exc:  # e.g. out of shared memory for a config
            row["fwd_ms"] = float("nan")
            row["error"] = type(exc).__name__
        finally:
            sparse_mod._launch_config = default
        rows.append(row)
    return rows


def _triton_only(fn):
    with triton_kernel_only():
        return fn()


def main() -> int:
    if not torch.cuda.is_available():
        print("bench_sparse: needs a CUDA GPU; nothing measured")
        return 0
    env = environment()
    print("environment:", env)
    ceil = measure_ceilings("cuda")
    print(f"ceilings: copy {ceil.copy_gbps:.0f} GB/s, bf16 matmul {ceil.matmul_tflops:.0f} TFLOP/s")
    rows, sweep = [], []
    for H, S, L, topk, D in SHAPES:
        off = L - S
        q, k, x0, idx = inputs(H, S, L, topk, D, off)
        scaling = D**-0.5
        flops = 2.0 * H * S * topk * D
        x_fp32_gib = S * topk * 4 / 2**30
        x = x0.clone().requires_grad_(True)
        cases = {
            "fused": lambda q=q, k=k, x=x, idx=idx, s=scaling, o=off: compute_index_loss_sparse(
                q, k, x, idx, s, o
            ),
            "plain torch": lambda q=q, k=k, x=x, idx=idx, s=scaling, o=off: plain_loss(
                q, k, x, idx, s, o
            ),
        }
        kernel = kernel_name(q, k)
        if kernel != "Triton":  # the Triton kernel in the same run, for comparison
            cases["fused, Triton kernel"] = lambda fused=cases["fused"]: _triton_only(fused)
        for name, fn in cases.items():
            for backward in (False, True):
                label = "fwd+bwd" if backward else "fwd"
                try:
                    if backward:
                        ms, peak = measure(fn, True, grads=[x])
                    else:
                        with torch.no_grad():
                            ms, peak = measure(fn, False)
                except torch.cuda.OutOfMemoryError:
                    print(f"{name} {label} H={H} D={D}: out of memory, skipped")
                    torch.cuda.empty_cache()
                    continue
                x.grad = None
                rows.append(
                    {
                        "impl": name,
                        "kernel": ""
                        if name == "plain torch"
                        else kernel
                        if name == "fused"
                        else "Triton",
                        "pass": label,
                        "H": H,
                        "S": S,
                        "L": L,
                        "topk": topk,
                        "D": D,
                        "ms": ms,
                        "useful_TFLOPs": tflops(flops, ms),
                        "frac_matmul": ceil.fraction_of_matmul(tflops(flops, ms)),
                        "peak_extra_GiB": peak,
                        "x_fp32_GiB": x_fp32_gib,
                    }
                )
        sweep += sweep_configs(q, k, x0, idx, scaling, off)
        del q, k, x0, x, idx
        torch.cuda.empty_cache()
    for r in rows:
        if r["impl"].startswith("fused"):
            base = [
                b
                for b in rows
                if b["impl"] == "plain torch"
                and b["pass"] == r["pass"]
                and b["H"] == r["H"]
                and b["D"] == r["D"]
                and b["topk"] == r["topk"]
            ]
            r["speedup"] = base[0]["ms"] / r["ms"] if base else float("nan")
    print_table(rows, title=f"sparse indexer loss, bf16, {ceil.device_name}")
    print_table(sweep, title="launch configurations (fused forward)")
    out = results_dir("indexer-loss")
    write_csv(rows, out / "bench_sparse.csv")
    write_csv(sweep, out / "bench_sparse_configs.csv")
    for r in rows:
        r["series"] = f"{r['impl']} {r['pass']}"
        r["work_GFLOP"] = 2.0 * r["H"] * r["S"] * r["topk"] * r["D"] / 1e9
    plot(
        rows,
        x="work_GFLOP",
        y="ms",
        series="series",
        path=out / "bench_sparse.png",
        title="sparse indexer loss (bf16)",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
