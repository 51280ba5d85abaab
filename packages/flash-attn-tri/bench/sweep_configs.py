"""Time every launch candidate of the forward, dK/dV and dQ kernels, one forced at a time, per
head dim, mask and sequence length: the data behind the candidate lists in
``flash_attn_tri.attention`` (which the autotuner then chooses from per length class).

Run on a GPU: ``python3 sweep_configs.py [--extra] [--rounds N] [--seqlen S ...] [--kernel K
...] [--head-dim D ...] [--causal | --full]``. Same setup as ``bench_flash_attn.py`` (16384
tokens, hidden 2048, bf16). Backward timings (dQ and dK/dV together, the Triton kernels: the
Gluon backward is switched off for them) force one kernel's config; the other kernel
autotunes as usual. ``--extra`` adds configs outside the lists (write them into the ``EXTRA``
table first); ``--rounds`` repeats the whole sweep, so that each config is timed that many
times apart (the gaps between the leaders are about the size of one timing's noise); the
other options restrict the sweep. Prints every timing, then the best config per kernel and
shape by its median over the rounds, and writes ``sweep_configs.csv`` to
``results_dir("flash-attn-tri")``.

``--against-autotune`` times the pinned configs (``attention._HOPPER_D64_PINS``) against the
autotuner instead: per round and shape, the call as it runs by default, then with the pins
of the ``--kernel`` kernels off and the autotuner choosing afresh (its picks printed), the
forward for "fwd" and the Triton backward for "dq" / "dkdv", with the configs launched;
then the median of each and their ratio (``pins_against_autotune.csv``).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
from collections.abc import Iterator

import torch

from tri_shared.bench import env_set, print_table, results_dir, tflops, time_fn, write_csv

TOKENS = 16384
HIDDEN = 2048
SEQLENS = (1024, 4096, 16384)
HEAD_DIMS = (64, 128)
KERNELS = ("fwd", "dkdv", "dq")
# (BLOCK_M, BLOCK_N, num_warps, num_stages) to try beyond the candidate lists, per kernel and
# head-dim class
EXTRA: dict[tuple[str, int], list[tuple[int, int, int, int]]] = {
    ("fwd", 64): [(64, 128, 4, 3), (128, 128, 8, 4), (64, 64, 4, 4), (128, 64, 8, 3)],
    # for the D = 64 backward under 4096 tokens (the Triton kernels there until session 22;
    # now only causal calls take them by default)
    ("dkdv", 64): [
        (64, 128, 4, 3),
        (32, 64, 4, 3),
        (64, 64, 4, 2),
        (32, 128, 8, 2),
        (64, 128, 4, 2),
    ],
    # (dQ with num_stages 2 crashes ptxas from triton 3.6 at D = 64 too: not listed)
    ("dq", 64): [(128, 64, 4, 3), (128, 128, 8, 3)],
}

Config = tuple[int, int, int, int]


@contextlib.contextmanager
def forced(kernel: str, cfg: Config) -> Iterator[None]:
    """Within the block, ``kernel`` launches with ``cfg`` only (autotuning sees one config)."""
    from flash_attn_tri import attention

    name = f"_{kernel}_candidates"
    saved = getattr(attention, name)
    setattr(attention, name, lambda _block_d: [cfg])
    try:
        with unpinned(list(KERNELS)):  # (the pins replace the candidates)
            yield
    finally:
        setattr(attention, name, saved)


def config_name(cfg: Config) -> str:
    """``BLOCK_MxBLOCK_NxWARPSxSTAGES``, as the CSV columns name a config."""
    return "x".join(map(str, cfg))


def candidates(kernel: str, d: int, extra: bool) -> list[Config]:
    from flash_attn_tri import attention

    cands = list(getattr(attention, f"_{kernel}_candidates")(d))
    if extra:
        cands += [c for c in EXTRA.get((kernel, d), []) if c not in cands]
    return cands


def time_once(kernel: str, d: int, causal: bool, seqlen: int) -> tuple[str, float, float]:
    """(what, ms, TFLOP/s) of the forward (kernel "fwd") or of the backward, at one shape."""
    from flash_attn_tri import flash_attn_func

    batch, heads = TOKENS // seqlen, HIDDEN // d
    g = torch.Generator(device="cuda").manual_seed(seqlen + d)
    q, k, v, dout = (
        torch.randn((batch, seqlen, heads, d), device="cuda", dtype=torch.bfloat16, generator=g)
        for _ in range(4)
    )
    flops = 4 * batch * heads * seqlen * seqlen * d * (0.5 if causal else 1.0)
    if kernel == "fwd":
        ms = time_fn(lambda: flash_attn_func(q, k, v, causal=causal))
        return "forward", ms, tflops(flops, ms)
    for t in (q, k, v):
        t.requires_grad_()
    out = flash_attn_func(q, k, v, causal=causal)
    with env_set("FLASH_ATTN_TRI_GLUON_BWD", "0"):  # the Triton kernels whose configs these are
        ms = time_fn(lambda: torch.autograd.grad(out, (q, k, v), dout, retain_graph=True))
    return "backward", ms, tflops(2.5 * flops, ms)


def best_by_median(rows: list[dict]) -> list[dict]:
    """Per (kernel, D, causal, seqlen): each config's median TFLOP/s over the rounds, the
    best config and the runner-up."""
    rates: dict[tuple, dict[str, list[float]]] = {}
    for r in rows:
        shape = (r["kernel"], r["D"], r["causal"], r["seqlen"])
        rates.setdefault(shape, {}).setdefault(r["config"], []).append(r["tflops"])
    out = []
    for (kernel, d, causal, seqlen), by_config in rates.items():
        ranked = sorted(
            ((statistics.median(v), c, len(v)) for c, v in by_config.items()), reverse=True
        )
        (best, config, n), runner_up = ranked[0], ranked[1] if len(ranked) > 1 else None
        out.append(
            {"kernel": kernel, "D": d, "causal": causal, "seqlen": seqlen, "best": config,
             "median_tflops": best, "timings": n,
             "runner_up": runner_up[1] if runner_up else "",
             "runner_up_tflops": runner_up[0] if runner_up else float("nan")}
        )  # fmt: skip
    return out


def sweep_one(
    kernel: str, d: int, causal: bool, cfg: Config, seqlens: list[int], round_: int
) -> list[dict]:
    """Rows of one config forced, at each sequence length."""
    rows = []
    with forced(kernel, cfg):
        for s in seqlens:
            try:
                what, ms, rate = time_once(kernel, d, causal, s)
            except Exception as exc:  # a config that fails to build
                print(f"{kernel} D={d} causal={causal} {cfg} S={s}: {exc!s:.120}")
                continue
            config = config_name(cfg)
            rows.append(
                {"round": round_, "kernel": kernel, "D": d, "causal": causal, "seqlen": s,
                 "config": config, "what": what, "ms": ms, "tflops": rate}
            )  # fmt: skip
            print(
                f"[{round_}] {kernel:4s} D={d:3d} causal={causal!s:5s} {cfg} S={s:5d}: "
                f"{what} {ms:.3f} ms {rate:.0f} TFLOP/s",
                flush=True,
            )
    return rows


@contextlib.contextmanager
def unpinned(kernels: list[str]) -> Iterator[None]:
    """Within the block, ``kernels`` autotune (their pins off, the others' kept), and every
    kernel wrapper is made afresh (so the autotuner chooses again)."""
    from flash_attn_tri import attention

    saved = attention._pinned_config

    def pins(kernel: str, *args):
        return None if kernel in kernels else saved(kernel, *args)

    attention._pinned_config = pins
    attention._kernels.clear()
    try:
        yield
    finally:
        attention._pinned_config = saved
        attention._kernels.clear()


def configs_launched() -> str:
    """The configs of the kernel wrappers made so far, as ``kernel:MxNxWARPSxSTAGES``: the
    pinned ones and those the autotuner chose."""
    from flash_attn_tri import attention

    names = []
    for (name, _dclass, _length, pinned), kern in attention._kernels.items():
        cfg = getattr(kern, "best_config", None)
        if pinned is None and cfg is not None:
            pinned = (cfg.kwargs["BLOCK_M"], cfg.kwargs["BLOCK_N"], cfg.num_warps, cfg.num_stages)
        if pinned is not None:
            names.append(f"{name}:{config_name(pinned)}")
    return " ".join(sorted(names))


def against_autotune(
    kernels: list[str], d: int, causal: bool, seqlens: list[int], round_: int
) -> list[dict]:
    """Rows of the default call (pins on) and of the same call with ``kernels`` autotuned,
    at each sequence length: the forward if "fwd" is among them, the backward if "dq" or
    "dkdv" is."""
    parts = (["fwd"] if "fwd" in kernels else []) + (
        ["dq"] if {"dq", "dkdv"} & set(kernels) else []
    )
    rows = []
    for s in seqlens:
        for part in parts:
            for mode in ("pinned", "autotuned"):
                with unpinned(kernels if mode == "autotuned" else []):
                    what, ms, rate = time_once(part, d, causal, s)
                    configs = configs_launched()
                rows.append(
                    {"round": round_, "D": d, "causal": causal, "seqlen": s, "what": what,
                     "mode": mode, "ms": ms, "tflops": rate, "configs": configs}
                )  # fmt: skip
                print(
                    f"[{round_}] D={d:3d} causal={causal!s:5s} S={s:5d} {what:8s} {mode:9s}: "
                    f"{ms:.3f} ms {rate:.0f} TFLOP/s {configs}",
                    flush=True,
                )
    return rows


def pinned_over_autotuned(rows: list[dict]) -> list[dict]:
    """Per (D, causal, seqlen, what): the median TFLOP/s of the pinned and of the autotuned
    rows over the rounds, their ratio, and the autotuned rows' range."""
    rates: dict[tuple, dict[str, list[float]]] = {}
    for r in rows:
        shape = (r["D"], r["causal"], r["seqlen"], r["what"])
        rates.setdefault(shape, {"pinned": [], "autotuned": []})[r["mode"]].append(r["tflops"])
    out = []
    for (d, causal, seqlen, what), by_mode in rates.items():
        pinned, tuned = by_mode["pinned"], by_mode["autotuned"]
        if not pinned or not tuned:
            continue
        p, t = statistics.median(pinned), statistics.median(tuned)
        out.append(
            {"D": d, "causal": causal, "seqlen": seqlen, "what": what, "pinned_tflops": p,
             "autotuned_tflops": t, "ratio": p / t, "autotuned_min": min(tuned),
             "autotuned_max": max(tuned), "rounds": min(len(pinned), len(tuned))}
        )  # fmt: skip
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--extra", action="store_true")
    parser.add_argument("--rounds", type=int, default=1, help="times to repeat the sweep")
    parser.add_argument("--seqlen", type=int, nargs="+", default=list(SEQLENS))
    parser.add_argument("--kernel", choices=KERNELS, nargs="+", default=list(KERNELS))
    parser.add_argument("--head-dim", type=int, nargs="+", default=list(HEAD_DIMS))
    mask = parser.add_mutually_exclusive_group()
    mask.add_argument("--causal", action="store_true", help="causal only")
    mask.add_argument("--full", action="store_true", help="non-causal only")
    parser.add_argument(
        "--against-autotune", action="store_true", help="the pins against the autotuner"
    )
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device: this sweep needs a GPU")
        return 0
    # the GPU clocks up over the first fraction of a second of load: without this the first
    # timed config looks up to ~25% slower than it is
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    for _ in range(200):
        a @ a
    torch.cuda.synchronize()
    masks = [c for c in (False, True) if not (args.causal and not c) and not (args.full and c)]
    rows = []
    if args.against_autotune:
        for round_ in range(1, args.rounds + 1):
            for d in args.head_dim:
                for causal in masks:
                    rows += against_autotune(args.kernel, d, causal, args.seqlen, round_)
        cols = ["D", "causal", "seqlen", "what", "pinned_tflops", "autotuned_tflops", "ratio",
                "autotuned_min", "autotuned_max", "rounds"]  # fmt: skip
        print_table(pinned_over_autotuned(rows), cols, title="pinned against autotuned")
        write_csv(rows, results_dir("flash-attn-tri") / "pins_against_autotune.csv")
        return 0
    for round_ in range(1, args.rounds + 1):
        for d in args.head_dim:
            for causal in masks:
                for kernel in args.kernel:
                    for cfg in candidates(kernel, d, args.extra):
                        rows += sweep_one(kernel, d, causal, cfg, args.seqlen, round_)
    cols = ["round", "kernel", "D", "causal", "seqlen", "config", "what", "ms", "tflops"]
    print_table(rows, cols, title="launch configs, one at a time")
    best_cols = ["kernel", "D", "causal", "seqlen", "best", "median_tflops", "timings",
                 "runner_up", "runner_up_tflops"]  # fmt: skip
    print_table(best_by_median(rows), best_cols, title="best config by median over the rounds")
    write_csv(rows, results_dir("flash-attn-tri") / "sweep_configs.csv")
    return 0


if __name__ == "__main__":
    sys.exit(main())
