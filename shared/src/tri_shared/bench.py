"""Benchmark helpers: the roofline ceilings measured in the same run, timing, rates, and a
table, CSV and PNG plot of the results.

Plotting needs matplotlib (``pip install tri-shared[bench]``); everything else needs only
torch and triton.
"""

from __future__ import annotations

import csv
import os
import statistics
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import triton
import triton.testing


@dataclass(frozen=True)
class Ceilings:
    """What the device reaches in this run: copy bandwidth (bytes read + written per second)
    and the bf16 matrix-multiply rate."""

    copy_gbps: float
    matmul_tflops: float
    device_name: str

    def fraction_of_copy(self, gbps: float) -> float:
        return gbps / self.copy_gbps if self.copy_gbps > 0 else float("nan")

    def fraction_of_matmul(self, tflops: float) -> float:
        return tflops / self.matmul_tflops if self.matmul_tflops > 0 else float("nan")


def time_fn(
    fn: Callable[[], Any],
    *,
    warmup: int = 25,
    rep: int = 100,
    grad_to_none: Sequence[torch.Tensor] = (),
) -> float:
    """Median milliseconds per call of ``fn``.

    On a GPU: ``triton.testing.do_bench`` (CUDA events, L2 flushed between calls), with
    ``warmup`` and ``rep`` in milliseconds. On the CPU: wall clock over a few calls.
    ``grad_to_none``: tensors whose ``.grad`` is set to None before every call, as a training
    step's ``zero_grad()`` does, so that a backward writes its gradient instead of adding it
    to the previous call's (a host-side assignment: no GPU work inside the timed span).
    """
    if grad_to_none:

        def call() -> Any:
            for t in grad_to_none:
                t.grad = None
            return fn()

    else:
        call = fn
    if torch.cuda.is_available():
        return float(triton.testing.do_bench(call, warmup=warmup, rep=rep, return_mode="median"))
    call()
    samples = []
    for _ in range(3):
        t0 = time.perf_counter()
        call()
        samples.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(samples)


# a sleep kernel long enough to cover every call host_time_us enqueues (cycles at about
# 2 GHz: 0.5 s)
SLEEP_CYCLES = 1_000_000_000


def host_time_us(fn: Callable[[], Any], calls: int = 30, *, warm: bool = True) -> float:
    """CPU microseconds to issue one call of ``fn`` (after one call to warm up, unless
    ``warm`` is false).

    On a GPU the calls are issued behind a long sleep kernel, so the GPU never waits for the
    CPU and no call blocks on the GPU: what the host needs a call, against which the GPU
    time of the same call says whether it is host-bound (``calls`` of ``fn`` must enqueue
    less than the sleep's half second of work). On the CPU: wall clock a call.
    """
    if warm:
        fn()
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda._sleep(SLEEP_CYCLES)
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    elapsed = time.perf_counter() - start
    if cuda:
        torch.cuda.synchronize()
    return elapsed / calls * 1e6


@contextmanager
def timed_calls(
    targets: Iterable[tuple[Any, str]], totals: dict[str, list[int]]
) -> Iterator[dict[str, list[int]]]:
    """Within the block, each function ``getattr(owner, attr)`` of ``targets`` adds its
    calls' nanoseconds and count to ``totals["<owner>.<attr>"]`` (``[ns, calls]``, made at
    0 where missing; inclusive: a nested call counts in each timed caller too); the functions
    are put back afterwards. For breakdowns of host time: a clock around each call costs
    less than what cProfile adds to every call. Yields ``totals``."""
    saved = []
    for owner, attr in targets:
        fn = getattr(owner, attr)
        slot = totals.setdefault(f"{getattr(owner, '__name__', owner)}.{attr}", [0, 0])

        def timed(*args: Any, _fn: Callable = fn, _slot: list = slot, **kwargs: Any) -> Any:
            start = time.perf_counter_ns()
            try:
                return _fn(*args, **kwargs)
            finally:
                _slot[0] += time.perf_counter_ns() - start
                _slot[1] += 1

        saved.append((owner, attr, fn))
        setattr(owner, attr, timed)
    try:
        yield totals
    finally:
        for owner, attr, fn in reversed(saved):
            setattr(owner, attr, fn)


@contextmanager
def env_set(name: str, value: str) -> Iterator[None]:
    """Environment variable ``name`` set to ``value`` inside the block, restored (or removed)
    after it: for switches a package reads on each call, such as a kernel choice."""
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


def kernel_times(fn: Callable[[], Any], *, iters: int = 10) -> dict[str, float]:
    """Milliseconds per call spent in each GPU kernel ``fn`` launches (torch profiler,
    averaged over ``iters`` calls after one warm-up call), longest first; for breakdowns,
    not headline figures (the profiler adds no time to kernels but does not flush L2)."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(iters):
            fn()
        torch.cuda.synchronize()
    totals: dict[str, float] = {}
    for event in prof.events():
        if event.device_type == torch.autograd.DeviceType.CUDA:
            name = event.name if len(event.name) <= 60 else event.name[:57] + "..."
            totals[name] = totals.get(name, 0.0) + event.device_time / 1e3 / iters
    return dict(sorted(totals.items(), key=lambda kv: -kv[1]))


def tflops(flops: float, ms: float) -> float:
    """TFLOP/s for ``flops`` operations done in ``ms`` milliseconds."""
    return flops / (ms * 1e-3) / 1e12


def gbps(nbytes: float, ms: float) -> float:
    """GB/s (10**9 bytes per second) for ``nbytes`` moved in ``ms`` milliseconds."""
    return nbytes / (ms * 1e-3) / 1e9


def measure_ceilings(
    device: torch.device | str = "cuda", *, copy_bytes: int = 2**31, matmul_n: int = 8192
) -> Ceilings:
    """Measure the device-to-device copy bandwidth (read + write) and the bf16 matmul rate
    on random data, the two ceilings every benchmark reports against."""
    device = torch.device(device)
    src = torch.randn(copy_bytes // 4, device=device, dtype=torch.float32)
    dst = torch.empty_like(src)
    copy_ms = time_fn(lambda: dst.copy_(src))
    a = torch.randn(matmul_n, matmul_n, device=device, dtype=torch.bfloat16)
    b = torch.randn(matmul_n, matmul_n, device=device, dtype=torch.bfloat16)
    mm_ms = time_fn(lambda: a @ b)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    return Ceilings(
        copy_gbps=gbps(2 * copy_bytes, copy_ms),
        matmul_tflops=tflops(2 * matmul_n**3, mm_ms),
        device_name=name,
    )


def environment() -> dict[str, str]:
    """Device and library versions, for the header of a results file."""
    dev = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    return {
        "device": dev,
        "torch": torch.__version__,
        "triton": triton.__version__,
        "date": time.strftime("%Y-%m-%d"),
    }


def results_dir(package: str | None = None) -> Path:
    """Where results go: ``$OUT`` when set, else ``bench-results/`` (created)."""
    root = Path(os.environ.get("OUT") or "bench-results")
    path = root / package if package and not os.environ.get("OUT") else root
    path.mkdir(parents=True, exist_ok=True)
    return path


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if value != value:
            return "-"
        return f"{value:.4g}" if abs(value) < 1e5 else f"{value:.3e}"
    return str(value)


def format_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> str:
    """A plain-text table of ``rows`` (dicts), columns in the order given or first seen."""
    if not rows:
        return "(no rows)"
    if columns is None:
        columns = list(dict.fromkeys(k for r in rows for k in r))
    cells = [[_fmt(r.get(c, "")) for c in columns] for r in rows]
    # numbers right-aligned, text left-aligned
    numeric = [all(isinstance(r.get(c), (int, float)) for r in rows) for c in columns]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    line = "  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip()
    out = [line, "  ".join("-" * w for w in widths)]
    for row in cells:
        out.append(
            "  ".join(
                v.rjust(w) if num else v.ljust(w)
                for v, w, num in zip(row, widths, numeric, strict=True)
            ).rstrip()
        )
    return "\n".join(out)


def print_table(
    rows: Sequence[Mapping[str, Any]],
    columns: Sequence[str] | None = None,
    title: str | None = None,
) -> None:
    """Print :func:`format_table`, with an optional title line."""
    if title:
        print(f"\n{title}")
    print(format_table(rows, columns), flush=True)


def write_csv(rows: Sequence[Mapping[str, Any]], path: str | os.PathLike[str]) -> Path:
    """Write ``rows`` (dicts) to a CSV file; columns in first-seen order."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = list(dict.fromkeys(k for r in rows for k in r))
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return path


def plot(
    rows: Sequence[Mapping[str, Any]],
    *,
    x: str,
    y: str,
    series: str,
    path: str | os.PathLike[str],
    title: str = "",
    logx: bool = True,
) -> Path | None:
    """Line plot of ``y`` against ``x``, one line per value of ``series``, saved as PNG.

    Returns None (and prints why) when matplotlib is not installed.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("plot: matplotlib is not installed (pip install tri-shared[bench]); no PNG written")
        return None
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name in dict.fromkeys(r[series] for r in rows):
        pts = sorted((r[x], r[y]) for r in rows if r[series] == name and r.get(y) == r.get(y))
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=str(name))
    if logx:
        ax.set_xscale("log", base=2)
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------------------
# instrumented copies of kernels (clock marks written into a kernel's source)


def patch_source(source: str, edits: Sequence[tuple[str, str, int]], what: str) -> str:
    """``source`` with each ``(place, replacement, count)`` of ``edits`` applied in order, every
    place expected exactly ``count`` times. Raises ValueError naming ``what`` (the tool) and
    the first line of a place that no longer matches: the kernel changed under the tool."""
    for place, replacement, count in edits:
        found = source.count(place)
        if found != count:
            first = place.strip().splitlines()[0]
            raise ValueError(
                f"{what}: expected {count} occurrence(s) of {first!r} in the kernel, "
                f"found {found}; update its edits to the kernel's source"
            )
        source = source.replace(place, replacement)
    return source


def import_source(source: str, folder: str | os.PathLike[str], name: str) -> Any:
    """Write ``source`` to ``folder/name.py`` and import it as module ``name`` (a copy of a
    kernel module, e.g. with clock marks: Triton and Gluon read a kernel's source from its
    file)."""
    import importlib.util

    path = Path(folder) / f"{name}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def choice(values: Mapping[str, Any]) -> Callable[[str], Any]:
    """A converter for :func:`parse_flags`: the value of ``values`` a flag's text names
    (``""``: the flag given without ``=``); ValueError on any other text."""

    def convert(text: str) -> Any:
        if text not in values:
            raise ValueError(text)
        return values[text]

    return convert


def int_list(text: str) -> list[int]:
    """A converter for :func:`parse_flags`: comma-separated integers (``1024,2048``);
    ValueError on anything else."""
    return [int(x) for x in text.split(",")]


def parse_flags(
    argv: Sequence[str], tool: str, flags: Mapping[str, tuple[Any, Callable[[str], Any], str]]
) -> dict[str, Any]:
    """A bench script's ``--name=value`` options: ``flags`` maps each name to (default,
    converter of the text after ``=``, how it is written). Returns every flag's value by
    name without the dashes (``-`` as ``_``). Raises SystemExit naming the argument and
    the flags expected on an unknown flag or a value its converter refuses."""
    options = {name.lstrip("-").replace("-", "_"): spec[0] for name, spec in flags.items()}
    for arg in argv:
        name, _, text = arg.partition("=")
        try:
            if name not in flags:
                raise ValueError(name)
            options[name.lstrip("-").replace("-", "_")] = flags[name][1](text)
        except ValueError:
            expected = ", ".join(spec[2] for spec in flags.values())
            raise SystemExit(f"{tool}: unexpected argument {arg!r} (expected {expected})") from None
    return options
