"""Measure the choices behind flash_attn_tri's kernel dispatch on Hopper, interleaved.

For each case (the setup of ``bench_flash_attn.py``: 16384 tokens, hidden 2048, bf16) every
alternative is timed in turn, round after round, with ``do_bench`` medians, so that drift of
clocks and host load hits all of them alike; a case prints each alternative's median over
the rounds, its range, and the fastest. Separate bench runs of the whole suite differ by
5-10% on the lent machines (BENCHMARKS.md), more than several of these choices are worth.

- forward: the Triton kernel against the Gluon kernel (``FLASH_ATTN_TRI_GLUON=0`` / ``=1``)
  under each of its schedules (``FLASH_ATTN_TRI_GLUON_SCHEDULE``: one tile a program, one
  unit a program, persistent), with SDPA's cuDNN backend beside them as the bar;
- backward alone (``autograd.grad`` with ``retain_graph``, counted as 2.5 forwards): the
  Triton kernels, the split and the fused Gluon kernels (``FLASH_ATTN_TRI_GLUON_BWD=0`` /
  ``=1`` / ``=fused``; the split kernels also on other tiles, ``TILES``) around
  the rule's boundaries, with SDPA's cuDNN backward as the bar. Each alternative's
  gradients are first checked against the Triton kernels' (``err_vs_triton``).

Run on a Hopper GPU: ``python3 bench_dispatch.py [fwd] [bwd] [--rounds=N] [--head-dim=D]
[--seqlen=S,...] [--causal=yes|no|both] [--alternatives=NAME,...] [--other-tiles]`` (both
parts, 3 rounds, every case of ``FORWARD_CASES`` / ``BACKWARD_CASES`` by default;
``--seqlen``, ``--head-dim`` and ``--causal`` keep the cases that match, ``--alternatives``
times those alternatives in every case kept, ``--other-tiles`` adds the ``TILES``
alternatives to the backward cases). Prints a table and writes ``dispatch.csv`` to
``results_dir("flash-attn-tri")``; compare its winners with ``attention._gluon_forward_wanted``
and ``attention._gluon_backward_wanted``.
"""

from __future__ import annotations

import contextlib
import statistics
import sys
from collections.abc import Callable

import torch

from tri_shared.bench import (
    env_set,
    environment,
    print_table,
    results_dir,
    tflops,
    time_fn,
    write_csv,
)

TOKENS = 16384
HIDDEN = 2048

# each alternative: the environment switches it runs under ("cudnn" is SDPA's backend)
FORWARD = {
    "triton": (("FLASH_ATTN_TRI_GLUON", "0"),),
    **{
        f"gluon-{schedule}": (
            ("FLASH_ATTN_TRI_GLUON", "1"), ("FLASH_ATTN_TRI_GLUON_SCHEDULE", schedule),
        )
        for schedule in ("tiles", "pairs", "persistent")
    },
    # the Gluon forward under its own schedule rule; "-o-stores": its output written with
    # plain stores from registers rather than through the copy engine (SETTINGS)
    "gluon": (("FLASH_ATTN_TRI_GLUON", "1"),),
    "gluon-o-stores": (("FLASH_ATTN_TRI_GLUON", "1"),),
    "cudnn": (),
}  # fmt: skip
BACKWARD = {
    "triton": (("FLASH_ATTN_TRI_GLUON_BWD", "0"),),
    "split": (("FLASH_ATTN_TRI_GLUON_BWD", "1"),),
    "fused": (("FLASH_ATTN_TRI_GLUON_BWD", "fused"),),
    # the split kernels on other tiles than attention._HOPPER_BWD_TILES's (TILES below)
    "split-64": (("FLASH_ATTN_TRI_GLUON_BWD", "1"),),
    "split-3slots": (("FLASH_ATTN_TRI_GLUON_BWD", "1"),),
    "split-wide-dq128": (("FLASH_ATTN_TRI_GLUON_BWD", "1"),),
    "fused-64rows": (("FLASH_ATTN_TRI_GLUON_BWD", "fused"),),
    # the fused kernel with two dQ staging buffers at every head dim / one at every head
    # dim, with dK's matmul issued late, two buffers and late dK (SETTINGS)
    "fused-2dq": (("FLASH_ATTN_TRI_GLUON_BWD", "fused"),),
    "fused-1dq": (("FLASH_ATTN_TRI_GLUON_BWD", "fused"),),
    "fused-late-dk": (("FLASH_ATTN_TRI_GLUON_BWD", "fused"),),
    "fused-2dq-late-dk": (("FLASH_ATTN_TRI_GLUON_BWD", "fused"),),
    # dSᵀ from Pᵀ as rounded for dV's matmul (SETTINGS)
    "split-rounded-p": (("FLASH_ATTN_TRI_GLUON_BWD", "1"),),
    "fused-rounded-p": (("FLASH_ATTN_TRI_GLUON_BWD", "fused"),),
    # the block's lse·log2 e read after the wait for S at every head dim, or at none (the
    # default: D = 64 only; SETTINGS)
    "split-late-stats": (("FLASH_ATTN_TRI_GLUON_BWD", "1"),),
    "fused-late-stats": (("FLASH_ATTN_TRI_GLUON_BWD", "fused"),),
    "split-early-stats": (("FLASH_ATTN_TRI_GLUON_BWD", "1"),),
    "fused-early-stats": (("FLASH_ATTN_TRI_GLUON_BWD", "fused"),),
    "cudnn": (),
}
# alternatives that run the Gluon backward on other tiles: (kernel, D) -> (BLOCK_M, BLOCK_N,
# NUM_STAGES) in place of attention._HOPPER_BWD_TILES's
TILES = {
    # D = 64 on the 64-wide blocks written for D = 128 (the tiles before session 22)
    "split-64": {("dq", 64): (128, 64, 3), ("dkdv", 64): (64, 128, 3)},
    # D = 64 on the 128-wide blocks with 3 slots instead of 2
    "split-3slots": {("dq", 64): (128, 128, 3), ("dkdv", 64): (128, 128, 3)},
    # D = 128 with 128-key blocks in dQ (two slots: 224 KiB of shared memory)
    "split-wide-dq128": {("dq", 128): (128, 128, 2)},
    # the fused kernel at D = 64 on 64-row query blocks in three slots (the tiles before
    # session 27)
    "fused-64rows": {("fused", 64): (64, 128, 3)},
}
# alternatives that change a module-level setting of flash_attn_tri.attention: name ->
# {attribute: value} (a dict value updates the setting's dict)
SETTINGS = {
    "gluon-o-stores": {"_HOPPER_FWD_O_VIA_TMA": False},
    "fused-2dq": {"_HOPPER_BWD_STEP": {"TWO_DQ_BUFFERS_HEAD_DIMS": (64, 128)}},
    "fused-1dq": {"_HOPPER_BWD_STEP": {"TWO_DQ_BUFFERS_HEAD_DIMS": ()}},
    "fused-late-dk": {"_HOPPER_BWD_STEP": {"LATE_DK": True}},
    "fused-2dq-late-dk": {
        "_HOPPER_BWD_STEP": {"TWO_DQ_BUFFERS_HEAD_DIMS": (64, 128), "LATE_DK": True}
    },
    "split-rounded-p": {"_HOPPER_BWD_STEP": {"ROUNDED_P": True}},
    "fused-rounded-p": {"_HOPPER_BWD_STEP": {"ROUNDED_P": True}},
    "split-late-stats": {"_HOPPER_BWD_STEP": {"LATE_STATS_HEAD_DIMS": (64, 128)}},
    "fused-late-stats": {"_HOPPER_BWD_STEP": {"LATE_STATS_HEAD_DIMS": (64, 128)}},
    "split-early-stats": {"_HOPPER_BWD_STEP": {"LATE_STATS_HEAD_DIMS": ()}},
    "fused-early-stats": {"_HOPPER_BWD_STEP": {"LATE_STATS_HEAD_DIMS": ()}},
}
_BWD_D64 = ("triton", "split", "fused", "cudnn")
# (D, causal, seqlen, alternatives)
_FWD_ALL = ("triton", "gluon-tiles", "gluon-pairs", "gluon-persistent", "cudnn")
FORWARD_CASES = [
    *((d, causal, s, _FWD_ALL) for d in (64, 128) for causal in (False, True)
      for s in (1024, 2048, 4096, 8192, 16384)),
]  # fmt: skip
BACKWARD_CASES = [
    *((64, causal, s, _BWD_D64) for causal in (False, True)
      for s in (1024, 2048, 4096, 8192, 16384)),
    *((128, causal, s, ("split", "fused", "cudnn")) for causal in (False, True)
      for s in (1024, 2048, 4096, 16384)),
]  # fmt: skip
# --other-tiles: the TILES alternatives of each head dim join its backward cases
_OTHER_TILES = {64: ("split-64", "split-3slots", "fused-64rows"), 128: ("split-wide-dq128",)}


def _inputs(d: int, s: int, requires_grad: bool) -> list[torch.Tensor]:
    """q, k, v and dout ``[batch, s, heads, d]`` at the setup above."""
    g = torch.Generator(device="cuda").manual_seed(s + d)
    shape = (TOKENS // s, s, HIDDEN // d, d)
    tensors = [torch.randn(shape, device="cuda", dtype=torch.bfloat16, generator=g) for _ in "qkvo"]
    for t in tensors[:3]:
        t.requires_grad_(requires_grad)
    return tensors


def _forward_call(d: int, causal: bool, s: int, name: str) -> Callable[[], object]:
    from flash_attn_tri import flash_attn_func

    q, k, v, _ = _inputs(d, s, requires_grad=False)
    if name == "cudnn":
        from torch.nn.attention import SDPBackend, sdpa_kernel
        from torch.nn.functional import scaled_dot_product_attention

        qt, kt, vt = (t.transpose(1, 2) for t in (q, k, v))

        def run():
            with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
                return scaled_dot_product_attention(qt, kt, vt, is_causal=causal)

        return run
    return lambda: flash_attn_func(q, k, v, causal=causal)


def _backward_call(d: int, causal: bool, s: int, name: str) -> Callable[[], object]:
    from flash_attn_tri import flash_attn_func

    q, k, v, dout = _inputs(d, s, requires_grad=True)
    if name == "cudnn":
        from torch.nn.attention import SDPBackend, sdpa_kernel
        from torch.nn.functional import scaled_dot_product_attention

        with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
            out = scaled_dot_product_attention(
                *(t.transpose(1, 2) for t in (q, k, v)), is_causal=causal
            )
        dout = dout.transpose(1, 2)
    else:
        out = flash_attn_func(q, k, v, causal=causal)
    return lambda: torch.autograd.grad(out, (q, k, v), dout, retain_graph=True)


@contextlib.contextmanager
def _tiles(name: str):
    """The Gluon backward's tiles (``TILES``) and the settings (``SETTINGS``) of alternative
    ``name`` inside the block."""
    from flash_attn_tri import attention

    saved = dict(attention._HOPPER_BWD_TILES)
    attention._HOPPER_BWD_TILES.update(TILES.get(name, {}))
    settings = SETTINGS.get(name, {})
    saved_settings = {attr: getattr(attention, attr) for attr in settings}
    for attr, value in settings.items():
        current = getattr(attention, attr)
        setattr(attention, attr, {**current, **value} if isinstance(current, dict) else value)
    try:
        yield
    finally:
        attention._HOPPER_BWD_TILES.clear()
        attention._HOPPER_BWD_TILES.update(saved)
        for attr, value in saved_settings.items():
            setattr(attention, attr, value)


def check_backward_alternatives(d: int, causal: bool, s: int, names: tuple[str, ...]) -> dict:
    """Each Gluon/Triton alternative's gradients against the Triton kernels' (relative
    error of dq, dk, dv) at one case: the tiles timed are checked before they are timed."""
    from tri_shared.testing import rel_err

    grads = {}
    for name in ("triton", *names):
        if name == "cudnn" or name in grads:
            continue
        with contextlib.ExitStack() as stack:
            for switch in BACKWARD[name]:
                stack.enter_context(env_set(*switch))
            stack.enter_context(_tiles(name))
            grads[name] = _backward_call(d, causal, s, name)()
    base = grads["triton"]
    return {
        name: max(rel_err(a.float(), b.float()) for a, b in zip(g, base, strict=True))
        for name, g in grads.items()
    }


def _measure(part: str, case: tuple, rounds: int) -> list[dict]:
    """One case: every alternative timed once a round, ``rounds`` rounds; a row each."""
    d, causal, s, alternatives = case
    switches, make, passes = {
        "fwd": (FORWARD, _forward_call, 1.0),
        "bwd": (BACKWARD, _backward_call, 2.5),
    }[part]
    errors = check_backward_alternatives(d, causal, s, alternatives) if part == "bwd" else {}
    calls = {name: make(d, causal, s, name) for name in alternatives}
    times: dict[str, list[float]] = {name: [] for name in alternatives}
    for _ in range(rounds):
        for name in alternatives:
            with contextlib.ExitStack() as stack:
                for switch in switches[name]:
                    stack.enter_context(env_set(*switch))
                stack.enter_context(_tiles(name))
                times[name].append(time_fn(calls[name]))
    flops = passes * 4 * TOKENS * s * HIDDEN * (0.5 if causal else 1.0)
    medians = {name: statistics.median(t) for name, t in times.items()}
    best = min(medians, key=medians.get)
    rows = []
    for name in alternatives:
        ms = medians[name]
        rows.append({
            "part": part, "D": d, "causal": causal, "seqlen": s, "impl": name,
            "ms": ms, "min_ms": min(times[name]), "max_ms": max(times[name]),
            "tflops": tflops(flops, ms), "vs_best": ms / medians[best],
            # rate over cuDNN's rate (the bar: >= 0.85)
            "vs_cudnn": medians["cudnn"] / ms if "cudnn" in medians else float("nan"),
            "fastest": name == best,
            # largest relative error of dq, dk, dv against the Triton kernels' (backward)
            "err_vs_triton": errors.get(name, float("nan")),
        })  # fmt: skip
    summary = ", ".join(
        f"{r['impl']} {r['tflops']:.0f} TFLOP/s ({r['min_ms']:.3f}-{r['max_ms']:.3f} ms)"
        for r in rows
    )
    print(f"{part} D={d} causal={causal!s:5} S={s:5}: {summary}; fastest {best}", flush=True)
    return rows


def parse_args(argv: list[str]) -> dict:
    """The command line's options (see the module docstring); SystemExit naming the
    argument on anything else."""
    options = {
        "parts": [], "rounds": 3, "head_dims": (64, 128), "seqlens": None,
        "causal": (False, True), "alternatives": None, "other_tiles": False,
    }  # fmt: skip
    causal_values = {"yes": (True,), "no": (False,), "both": (False, True)}
    for arg in argv:
        key, _, value = arg.partition("=")
        try:
            if arg in ("fwd", "bwd"):
                options["parts"].append(arg)
            elif key == "--rounds" and int(value) >= 1:
                options["rounds"] = int(value)
            elif key == "--head-dim":
                options["head_dims"] = (int(value),)
            elif key == "--seqlen":
                options["seqlens"] = tuple(int(x) for x in value.split(","))
            elif key == "--causal" and value in causal_values:
                options["causal"] = causal_values[value]
            elif key == "--alternatives" and value:
                options["alternatives"] = tuple(value.split(","))
            elif arg == "--other-tiles":
                options["other_tiles"] = True
            else:
                raise ValueError
        except ValueError:
            raise SystemExit(
                f"bench_dispatch: unexpected argument {arg!r} (expected fwd, bwd, --rounds=N "
                "with N >= 1, --head-dim=D, --seqlen=S,..., --causal=yes|no|both, "
                "--alternatives=NAME,..., --other-tiles)"
            ) from None
    options["parts"] = options["parts"] or ["fwd", "bwd"]
    for part in options["parts"]:
        known = FORWARD if part == "fwd" else BACKWARD
        unknown = [n for n in options["alternatives"] or () if n not in known]
        if unknown:
            raise SystemExit(
                f"bench_dispatch: --alternatives: expected {part} alternatives among "
                f"{sorted(known)}, got {unknown}"
            )
    return options


def select_cases(part: str, options: dict) -> list[tuple]:
    """The cases of ``part`` (``"fwd"`` or ``"bwd"``) that ``options`` keep, each with the
    alternatives it times."""
    cases = []
    for d, causal, s, names in FORWARD_CASES if part == "fwd" else BACKWARD_CASES:
        if d not in options["head_dims"] or causal not in options["causal"]:
            continue
        if options["seqlens"] is not None and s not in options["seqlens"]:
            continue
        if options["alternatives"] is not None:
            names = options["alternatives"]
        elif part == "bwd" and options["other_tiles"]:
            names = (*names[:-1], *_OTHER_TILES[d], names[-1])
        cases.append((d, causal, s, names))
    return cases


def main() -> int:
    options = parse_args(sys.argv[1:])
    if not torch.cuda.is_available():
        print("no CUDA device: this benchmark needs a GPU")
        return 0
    rounds = options["rounds"]
    env = environment()
    print(env)
    rows = []
    for part in options["parts"]:
        for case in select_cases(part, options):
            rows.extend(_measure(part, case, rounds))
    columns = ["part", "D", "causal", "seqlen", "impl", "tflops", "min_ms", "max_ms", "vs_best"]
    columns += ["vs_cudnn", "err_vs_triton"]
    print_table(rows, columns, title=f"dispatch choices, {rounds} rounds, bf16, {env}")
    write_csv(rows, results_dir("flash-attn-tri") / "dispatch.csv")
    return 0


if __name__ == "__main__":
    sys.exit(main())
