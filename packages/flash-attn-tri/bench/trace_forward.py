"""Time the phases of the Gluon forward's tiles from inside the kernel (Hopper GPU).

A copy of ``kernels/attention_hopper.py`` that reads the multiprocessor's clock
(``clock64``) at each phase of a tile is written to a temporary folder and launched as
``flash_attn_tri`` launches the forward, at the setup of ``bench_flash_attn.py`` (16384
tokens, hidden 2048, bf16). For the first 16 tiles of every program it records, for each
consumer warpgroup: the first block's scores and softmax with the waits for the query
tile and the first K ("prologue"), the pipelined loop over the other key blocks, the last
``P·V`` with the wait for its V, the output and log-sum-exp stores ("epilogue") and the
gap to the next tile; and the producer's waits for free slots. It prints the
median cycles of each phase (for causal pairs, long and short tiles apart), so that the
time a tile spends outside its loop shows (BENCHMARKS.md, session 24). The marks cost a few
percent of the kernel's rate; the output is checked against the library's.

The copy is made by inserting the marks at fixed places of the kernel's source: when the
kernel changes, ``instrumented_source`` says which place no longer matches.

Run on a Hopper GPU: ``python3 trace_forward.py [--seqlen=S,...] [--head-dim=D]
[--causal=yes|no|both] [--o-stores]``.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
from pathlib import Path

import torch

TOKENS = 16384
HIDDEN = 2048
TILES = 16  # tiles traced per program
# a consumer tile's phases; "prologue": its first block's scores and softmax, the waits
# for its queries and first K, and the hand-back of the previous output's buffer
PHASES = ["prologue", "loop", "last P·V", "epilogue"]
# --causal=
CAUSAL = {"yes": [True], "no": [False], "both": [True, False]}


def _kernel_path() -> Path:
    import flash_attn_tri

    return Path(flash_attn_tri.__file__).parent / "kernels" / "attention_hopper.py"


_MARK = '''

@gluon.jit
def _mark(trace_ptr, role, tile, event):
    """Store the clock at ``event`` of tile ``tile`` of warpgroup ``role`` (0 and 1 the
    consumers, 2 the producer) into ``trace_ptr`` ``[programs, 3, TILES, 8]`` int64."""
    now = gl.inline_asm_elementwise(
        "mov.u64 $0, %clock64;", "=l", [], dtype=gl.int64, is_pure=False, pack=1
    )
    if tile < TILES:
        gl.store(trace_ptr + ((gl.program_id(0) * 3 + role) * TILES + tile) * 8 + event, now)
'''

# the producer's loop head and its V wait, the consumer's first waits (kernel source)
_KEY_LOOP = (
    "            for j in range(_key_blocks(start_m, seqlen_k, diag, BLOCK_M, BLOCK_N, CAUSAL)):\n"
    "                slot = ring % NUM_STAGES\n"
    "                phase = ((ring // NUM_STAGES) & 1) ^ 1\n"
    "                mbarrier.wait(k_empty.index(slot), phase)\n"
)
_V_WAIT = "                mbarrier.wait(v_empty.index(slot), phase)\n"
# the consumer's tile loop: its start, the pipelined steps, the last block, the output
_TILE_START = "            step = ring - tile\n"
_STEPS = "            p, acc, m_i, l_i = _run_tile(\n"
_LAST = "            last = ring + n_blocks - 1\n"
_CLOSE = "            _close_tile(\n"
_NEXT = "            ring += n_blocks\n"


def _at(role: str, event: int, indent: int = 4) -> str:
    return " " * indent + f"_mark(trace_ptr, {role}, tile, {event})\n"


def _first(role: str, event: int) -> str:
    return " " * 16 + "if j == 0:\n" + _at(role, event, 20)


# (place in the kernel's source, what it becomes, how many times the place occurs)
_EDITS = [
    (
        "_LN2: gl.constexpr = gl.constexpr(0.6931471805599453)\n",
        "_LN2: gl.constexpr = gl.constexpr(0.6931471805599453)\n"
        f"TILES: gl.constexpr = gl.constexpr({TILES})\n" + _MARK,
        1,
    ),
    # every partition and the kernel take the trace buffer first
    *(
        (f"def {name}(\n    {first},", f"def {name}(\n    trace_ptr, {first},", 1)
        for name, first in (
            ("_producer", "q_desc"),
            ("_consumer", "q_smem"),
            ("flash_fwd_hopper_kernel", "q_desc"),
        )
    ),
    *(
        (f"{call}(\n{' ' * 16}{first},", f"{call}(\n{' ' * 16}trace_ptr, {first},", count)
        for call, first, count in (
            ("            (_consumer, ", "q_smem", 2),
            ("            (_producer, ", "q_desc", 1),
        )
    ),
    # producer: tile start, K0's slot free, query tiles issued, V0's slot free, all issued
    (_KEY_LOOP, _at("2", 0, 12) + _KEY_LOOP + _first("2", 1), 1),
    (_V_WAIT, _first("2", 2) + _V_WAIT + _first("2", 3), 1),
    (
        "                ring += 1\n            tile += 1",
        "                ring += 1\n" + _at("2", 4, 12) + "            tile += 1",
        1,
    ),
    # consumers: the starts of the phases of PHASES, in order, and the end of the last
    (_TILE_START, _at("WG", 0, 12) + _TILE_START, 1),
    (_STEPS, _at("WG", 1, 12) + _STEPS, 1),
    (_LAST, _at("WG", 2, 12) + _LAST, 1),
    (_CLOSE, _at("WG", 3, 12) + _CLOSE, 1),
    (_NEXT, _at("WG", 4, 12) + _NEXT, 1),
]


def instrumented_source(source: str | None = None) -> str:
    """The Gluon forward's source (``kernels/attention_hopper.py`` unless given) with the
    clock marks in. Raises ValueError naming the place that no longer matches."""
    from tri_shared.bench import patch_source

    if source is None:
        source = _kernel_path().read_text()
    return patch_source(source, _EDITS, "trace_forward")


def trace(
    module, d: int, s: int, causal: bool, o_via_tma: bool
) -> tuple[torch.Tensor, float, bool]:
    """Launch the instrumented forward at the bench setup: (clock marks ``[programs, 3,
    TILES, 8]``, ms a call, whether causal tiles went in pairs)."""
    import triton

    from flash_attn_tri import attention, flash_attn_func

    batch, heads = TOKENS // s, HIDDEN // d
    g = torch.Generator(device="cuda").manual_seed(s + d)
    q, k, v = (
        torch.randn(batch, s, heads, d, device="cuda", dtype=torch.bfloat16, generator=g)
        for _ in range(3)
    )
    out = torch.empty_like(q)
    lse = torch.empty(batch, heads, s, device="cuda", dtype=torch.float32)
    n_m = triton.cdiv(s, attention._HOPPER_FWD_BLOCK_M)
    sms = attention.num_sms(q.device.index)
    pair, persistent = attention._gluon_forward_schedule(n_m * heads * batch, causal, s, sms)
    _, constexprs, options = attention._hopper_fwd_launch(d, causal, pair)
    constexprs = {**constexprs, "O_VIA_TMA": o_via_tma}
    n_units = (triton.cdiv(n_m, 2) if pair else n_m) * heads * batch
    programs = min(n_units, sms) if persistent else n_units
    marks = torch.zeros(programs, 3, TILES, 8, device="cuda", dtype=torch.int64)
    rows = constexprs["BLOCK_M"] // 2
    descriptors = [attention._box_descriptor(q, rows)]
    descriptors += [attention._box_descriptor(t, constexprs["BLOCK_N"]) for t in (k, v)]
    descriptors.append(attention._box_descriptor(out, rows))
    qk_scale2 = d**-0.5 * 1.4426950408889634

    def launch():
        module.flash_fwd_hopper_kernel[(programs,)](
            marks, *descriptors, out, lse, s, s, heads, 1, n_units, qk_scale2,
            out.stride(0), out.stride(1), out.stride(2), lse.stride(0), lse.stride(1),
            **constexprs, **options,
        )  # fmt: skip

    launch()
    ms = triton.testing.do_bench(launch, warmup=25, rep=100)
    marks.zero_()
    launch()
    expected = flash_attn_func(q, k, v, causal=causal)
    if not torch.equal(out, expected):
        raise AssertionError("trace_forward: the instrumented kernel's output differs")
    return marks.cpu(), ms, pair


def summarise(marks: torch.Tensor, pair: bool) -> list[dict]:
    """Median cycles of each phase, a row per consumer warpgroup and (pairs) tile kind;
    tiles 1 to TILES - 2 of each program (the first starts cold, the last has no gap)."""
    rows = []
    kinds = {"long": 0, "short": 1} if pair else {"all": None}
    for wg in (0, 1):
        for kind, parity in kinds.items():
            spans = []
            for p in range(marks.shape[0]):
                for tile in range(1, TILES - 1):
                    if parity is not None and tile % 2 != parity:
                        continue
                    e, nxt = marks[p, wg, tile], marks[p, wg, tile + 1, 0]
                    if bool((e[: len(PHASES) + 1] == 0).any()) or int(nxt) == 0:
                        continue  # the program had fewer tiles
                    n = len(PHASES)
                    spans.append([int(e[i + 1] - e[i]) for i in range(n)] + [int(nxt - e[n])])
            if not spans:
                continue
            row = {"warpgroup": wg, "tiles": kind, "n": len(spans)}
            for i, name in enumerate([*PHASES, "gap"]):
                row[name] = statistics.median(span[i] for span in spans)
            row["total"] = statistics.median(sum(span) for span in spans)
            rows.append(row)
    return rows


def main() -> int:
    from tri_shared.bench import choice, int_list, parse_flags

    options = parse_flags(
        sys.argv[1:],
        "trace_forward",
        {
            "--seqlen": ([1024], int_list, "--seqlen=S,..."),
            "--head-dim": (128, choice({"64": 64, "128": 128}), "--head-dim=64|128"),
            "--causal": ([True, False], choice(CAUSAL), "--causal=yes|no|both"),
            "--o-stores": (False, choice({"": True}), "--o-stores"),
        },
    )
    seqlens, head_dim, causals = options["seqlen"], options["head_dim"], options["causal"]
    o_via_tma = not options["o_stores"]
    if not torch.cuda.is_available():
        print("no CUDA device: this diagnostic needs a Hopper GPU")
        return 0
    from tri_shared.bench import import_source, print_table

    with tempfile.TemporaryDirectory() as folder:
        module = import_source(instrumented_source(), folder, "attention_hopper_traced")
        for s in seqlens:
            for causal in causals:
                marks, ms, pair = trace(module, head_dim, s, causal, o_via_tma)
                flops = 4 * TOKENS * s * HIDDEN * (0.5 if causal else 1.0)
                title = (
                    f"D={head_dim} S={s} causal={causal} o_via_tma={o_via_tma}: "
                    f"{flops / ms / 1e9:.0f} TFLOP/s traced, median cycles"
                )
                rows = summarise(marks, pair)
                print_table(rows, list(rows[0]), title=title)
    return 0


if __name__ == "__main__":
    sys.exit(main())
