"""Time the phases of the Gluon backward's tiles from inside the kernels (Hopper GPU).

A copy of ``kernels/attention_hopper_bwd.py`` that reads the multiprocessor's clock
(``clock64``) at each phase of a program is written to a temporary folder, and a backward
runs through ``flash_attn_tri`` with its kernels swapped for the copies, at the setup of
``bench_flash_attn.py`` (16384 tokens, hidden 2048, bf16). Each program is one tile (128
query rows for dQ, 128 keys for dK/dV; the kernels are not persistent); for each consumer
warpgroup it records the start, the end of the prologue (dQ: the row statistics, the wait
for Q, dO and O, delta; dK/dV: the wait for K and V), the end of the loop over blocks and
the end of the stores, and the multiprocessor it ran on. It prints, for each kernel, the
median cycles of each phase, of a loop step (without a mask, where every tile has the same
number of steps) and of the gap between one program's end and the next program's start on
the same multiprocessor: what a tile costs beyond its steps (BENCHMARKS.md, session 25,
fits that at about 2.5 steps at D = 64). The marks cost a little; the gradients are
checked against an uninstrumented run's.

The copy is made by inserting the marks at fixed places of the kernels' source: when the
kernels change, ``instrumented_source`` says which place no longer matches.

Run on a Hopper GPU: ``python3 trace_backward.py [--seqlen=S,...] [--head-dim=64|128]
[--causal=yes|no|both] [--kind=split|fused|NAME]`` (NAME: any other split or fused
alternative of ``bench_dispatch.py``'s backward, run on its tiles and settings).
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import statistics
import sys
import tempfile
from pathlib import Path

import torch

TOKENS = 16384
HIDDEN = 2048
KERNELS = ("flash_bwd_dq_hopper_kernel", "flash_bwd_dkdv_hopper_kernel")
# a program's marks per consumer warpgroup: start, prologue end, loop end, stores end, and
# (slot 7) the multiprocessor
PHASES = ["prologue", "loop", "stores"]
SLOTS = 8
SM_SLOT = 7
# --causal=
CAUSAL = {"yes": [True], "no": [False], "both": [True, False]}


def _kernel_path() -> Path:
    import flash_attn_tri

    return Path(flash_attn_tri.__file__).parent / "kernels" / "attention_hopper_bwd.py"


_MARK = '''

@gluon.jit
def _mark(trace_ptr, role, event):
    """Store the clock at ``event`` of this program's consumer warpgroup ``role`` into
    ``trace_ptr`` ``[programs, 2, 8]`` int64 (programs numbered along axis 0, then 1, 2);
    at the first event also the multiprocessor's number (slot 7)."""
    now = gl.inline_asm_elementwise(
        "mov.u64 $0, %clock64;", "=l", [], dtype=gl.int64, is_pure=False, pack=1
    )
    program = (
        gl.program_id(2) * gl.num_programs(1) + gl.program_id(1)
    ) * gl.num_programs(0) + gl.program_id(0)
    row = trace_ptr + (program.to(gl.int64) * 2 + role) * 8
    gl.store(row + event, now)
    if event == 0:
        sm = gl.inline_asm_elementwise(
            "mov.u32 $0, %smid;", "=r", [], dtype=gl.int32, is_pure=False, pack=1
        )
        gl.store(row + 7, sm.to(gl.int64))
'''


def _at(event: int, indent: int = 4) -> str:
    return " " * indent + f"_mark(trace_ptr, WG, {event})\n"


_DQ_START = "    row0 = start_m + WG * HALF\n"
_DQ_PROLOGUE = "    gl.store(stats_row + padded + offs_m, delta)\n"
_DQ_LOOP = "    offs_r = row0 + gl.arange(0, HALF, layout=gl.SliceLayout(1, O_LAYOUT))\n"
_DQ_END = "        mask=(offs_r < seqlen_q)[:, None],\n    )\n"
_KV_WAIT = "    mbarrier.wait(kv_bar, 0)\n"
_KV_LOOP = "    total = group * n_steps\n"
_KV_END = "    gl.store(dv_ptr + rows, dv.to(dv_ptr.dtype.element_ty), mask=in_k)\n"

# (place in the kernels' source, what it becomes, how many times the place occurs)
_EDITS = [
    # the copy lives outside the package: its one relative import made absolute
    (
        "from .attention_hopper import _tile\n",
        "from flash_attn_tri.kernels.attention_hopper import _tile\n",
        1,
    ),
    (
        "_LOG2E: gl.constexpr = gl.constexpr(1.4426950408889634)\n",
        "_LOG2E: gl.constexpr = gl.constexpr(1.4426950408889634)\n" + _MARK,
        1,
    ),
    # the consumers and the kernels take the trace buffer first
    *(
        (f"def {name}(\n    {first},", f"def {name}(\n    trace_ptr, {first},", 1)
        for name, first in (
            ("_consumer", "q_smem"),
            ("_dq_consumer", "q_smem"),
            ("flash_bwd_dkdv_hopper_kernel", "q_desc"),
            ("flash_bwd_dq_hopper_kernel", "q_desc"),
        )
    ),
    *(
        (f"({name}, (\n{' ' * 16}q_smem,", f"({name}, (\n{' ' * 16}trace_ptr, q_smem,", 2)
        for name in ("_consumer", "_dq_consumer")
    ),
    # dQ: start, prologue end, loop end, stores end
    (_DQ_START, _DQ_START + _at(0), 1),
    (_DQ_PROLOGUE, _DQ_PROLOGUE + _at(1), 1),
    (_DQ_LOOP, _at(2) + _DQ_LOOP, 1),
    (_DQ_END, _DQ_END + _at(3), 1),
    # dK/dV: start, K and V in, loop end, stores end
    (_KV_WAIT, _at(0) + _KV_WAIT + _at(1), 1),
    (_KV_LOOP, _at(2) + _KV_LOOP, 1),
    (_KV_END, _KV_END + _at(3), 1),
]


def instrumented_source(source: str | None = None) -> str:
    """The Gluon backward's source (``kernels/attention_hopper_bwd.py`` unless given) with
    the clock marks in. Raises ValueError naming the place that no longer matches."""
    from tri_shared.bench import patch_source

    if source is None:
        source = _kernel_path().read_text()
    return patch_source(source, _EDITS, "trace_backward")


class _TracedLaunches:
    """Stands in for ``attention.fast_launcher`` while the instrumented kernels are swapped
    in: their launches get a fresh marks buffer ``[programs, 2, 8]`` first (kept in
    ``marks`` by kernel name); other kernels launch as usual."""

    def __init__(self, module, fast_launcher):
        self.traced = {id(getattr(module, name)): name for name in KERNELS}
        self.fast_launcher = fast_launcher
        self.marks: dict[str, torch.Tensor] = {}

    def __call__(self, fn):
        name = self.traced.get(id(fn))
        if name is None:
            return self.fast_launcher(fn)
        return _Grid(self, fn, name)


class _Grid:
    """What ``fast_launcher(fn)`` gives for an instrumented kernel: ``[grid](*args,
    **kwargs)`` and ``bind(grid, **kwargs)(*args)`` (the plans' bound launches) launch it
    with a fresh marks buffer first."""

    def __init__(self, launches: _TracedLaunches, fn, name: str):
        self.launches, self.fn, self.name = launches, fn, name

    def __getitem__(self, grid: tuple[int, ...]):
        return functools.partial(self._launch, grid)

    def bind(self, grid: tuple[int, ...], **kwargs):
        return lambda *args: self._launch(grid, *args, **kwargs)

    def _launch(self, grid: tuple[int, ...], *args, **kwargs) -> None:
        programs = 1
        for size in grid:
            programs *= size
        marks = torch.zeros(programs, 2, SLOTS, dtype=torch.int64, device="cuda")
        self.launches.marks[self.name] = marks
        self.fn[grid](marks, *args, **kwargs)


@contextlib.contextmanager
def _swapped_in(module):
    """The instrumented kernels in place of the library's, their marks in the result."""
    from flash_attn_tri import attention
    from flash_attn_tri.kernels import attention_hopper_bwd as bwd

    launches = _TracedLaunches(module, attention.fast_launcher)
    saved = {name: getattr(bwd, name) for name in KERNELS}
    # plans hold the launches they were made with: none made before (or with) the swap
    # may serve a call on the other side of it
    attention._PLANS.clear()
    try:
        attention.fast_launcher = launches
        for name in KERNELS:
            setattr(bwd, name, getattr(module, name))
        yield launches
    finally:
        attention.fast_launcher = launches.fast_launcher
        for name, fn in saved.items():
            setattr(bwd, name, fn)
        attention._PLANS.clear()


def trace(module, d: int, s: int, causal: bool, kind: str) -> dict[str, torch.Tensor]:
    """Run one backward at the bench setup with the instrumented kernels (``kind``: a split
    or fused backward alternative of ``bench_dispatch.BACKWARD``, under its switches, tiles
    and settings): the marks of each kernel launched, by name. The gradients are checked
    against the library's under the same alternative (dQ only roughly when fused: its sums
    land in varying order)."""
    from flash_attn_tri import flash_attn_func
    from tri_shared.bench import env_set

    batch, heads = TOKENS // s, HIDDEN // d
    g = torch.Generator(device="cuda").manual_seed(s + d)
    q, k, v, dout = (
        torch.randn(batch, s, heads, d, device="cuda", dtype=torch.bfloat16, generator=g)
        for _ in range(4)
    )

    def grads():
        leaves = [t.detach().requires_grad_() for t in (q, k, v)]
        out = flash_attn_func(*leaves, causal=causal)
        return torch.autograd.grad(out, leaves, dout)

    bench_dispatch = _bench_dispatch()
    with contextlib.ExitStack() as stack:
        for switch in bench_dispatch.BACKWARD[kind]:
            stack.enter_context(env_set(*switch))
        stack.enter_context(bench_dispatch._tiles(kind))
        expected = grads()
        with _swapped_in(module) as launches:
            grads()  # compiles
            got = grads()
    for name, a, e in zip(("dq", "dk", "dv"), got, expected, strict=True):
        if _fused(kind) and name == "dq":
            ok = bool(((a.float() - e.float()).norm() <= 1e-2 * e.float().norm()).item())
        else:
            ok = torch.equal(a, e)
        if not ok:
            raise AssertionError(f"trace_backward: the instrumented kernels' {name} differs")
    return {name: marks.cpu() for name, marks in launches.marks.items()}


def _fused(kind: str) -> bool:
    return kind.startswith("fused")


@functools.cache
def _bench_dispatch():
    """``bench_dispatch.py`` beside this file (its alternatives' switches, tiles, settings)."""
    path = Path(__file__).with_name("bench_dispatch.py")
    spec = importlib.util.spec_from_file_location("bench_dispatch", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _kinds() -> dict[str, str]:
    """``--kind``'s values: bench_dispatch's split and fused backward alternatives."""
    names = _bench_dispatch().BACKWARD
    return {name: name for name in names if name.startswith(("split", "fused"))}


def summarise(marks: torch.Tensor, steps: int | None) -> list[dict]:
    """Median cycles of each phase per consumer warpgroup; of a loop step when every tile
    takes ``steps`` of them (None: not the same for all); and of the gap from one program's
    last mark to the next program's first on the same multiprocessor. Programs with a
    missing mark (none ran) are left out."""
    rows = []
    marks = marks[(marks[:, :, : len(PHASES) + 1] != 0).all(dim=2).all(dim=1)]
    done = marks[:, :, : len(PHASES) + 1]
    for wg in (0, 1):
        spans = done[:, wg, 1:] - done[:, wg, :-1]
        row = {"warpgroup": wg, "programs": marks.shape[0]}
        for i, name in enumerate(PHASES):
            row[name] = statistics.median(spans[:, i].tolist())
        row["loop / step"] = row["loop"] / steps if steps else float("nan")
        rows.append(row)
    # programs in the order they ran on each multiprocessor: start of either warpgroup,
    # end of the later one
    start = done[:, :, 0].min(dim=1).values
    end = done[:, :, -1].max(dim=1).values
    sm = marks[:, 0, SM_SLOT]
    gaps = []
    for unit in sm.unique().tolist():
        order = torch.argsort(start[sm == unit])
        s_sorted, e_sorted = start[sm == unit][order], end[sm == unit][order]
        gaps += (s_sorted[1:] - e_sorted[:-1]).tolist()
    gap = statistics.median(gaps) if gaps else float("nan")
    for row in rows:
        row["gap between programs"] = gap
    return rows


def main() -> int:
    from tri_shared.bench import choice, int_list, parse_flags

    options = parse_flags(
        sys.argv[1:],
        "trace_backward",
        {
            "--seqlen": ([2048], int_list, "--seqlen=S,..."),
            "--head-dim": (64, choice({"64": 64, "128": 128}), "--head-dim=64|128"),
            "--causal": ([False], choice(CAUSAL), "--causal=yes|no|both"),
            "--kind": ("split", choice(_kinds()), "--kind=split|fused|NAME"),
        },
    )
    seqlens, head_dim, causals, kind = (
        options["seqlen"], options["head_dim"], options["causal"], options["kind"]
    )  # fmt: skip
    if not torch.cuda.is_available():
        print("no CUDA device: this diagnostic needs a Hopper GPU")
        return 0
    from flash_attn_tri import attention
    from tri_shared.bench import import_source, print_table

    with tempfile.TemporaryDirectory() as folder:
        module = import_source(instrumented_source(), folder, "attention_hopper_bwd_traced")
        for s in seqlens:
            for causal in causals:
                for name, marks in trace(module, head_dim, s, causal, kind).items():
                    kernel = "dq" if name == KERNELS[0] else ("fused" if _fused(kind) else "dkdv")
                    with _bench_dispatch()._tiles(kind):
                        block_m, block_n, _ = attention._HOPPER_BWD_TILES[(kernel, head_dim)]
                    # without a mask a dQ tile walks every key block, a dK/dV tile every
                    # query block of the group's heads (one head here)
                    steps = None if causal else -(-s // (block_n if kernel == "dq" else block_m))
                    title = f"{name} ({kind}) D={head_dim} S={s} causal={causal}: median cycles"
                    rows = summarise(marks, steps)
                    print_table(rows, list(rows[0]), title=title)
    return 0


if __name__ == "__main__":
    sys.exit(main())
