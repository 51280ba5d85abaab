"""Host time of flash_attn_tri's Python, measured without a GPU.

A forward+backward at the shapes of ``bench_host.py`` spends 0.6-1.1 ms of CPU time on the
H100 machines measured in BENCHMARKS.md ("Host time"), most of it in this package's Python;
where a call's GPU work is that short (D = 128 causal at 1024 tokens) the host sets its
pace. This tool times that Python on the CPU: the calls take the dispatch they take on a
Hopper GPU (checks, the choice of kernels, descriptors, the launcher's keys, allocations,
autograd), with CPU tensors standing in for CUDA ones and every kernel launch stopped at
the last step, Triton's compiled launcher (not timed here: 5-20 µs a launch on those
machines; the fused backward's copy of dQ is skipped too). Nothing is computed: the
numbers compare changes to the host path; the GPU machines' CPUs ran it 2-4× slower than
a development one.

Each case's first call makes the Hopper calls' plans (``attention._PLANS``); its second,
from the plans, must launch the same kernels with the same arguments (grids, sizes,
strides, descriptors' boxes), or the tool stops with both lists.

It prints, once, the µs of a forward+backward of a bare ``torch.autograd.Function`` that
only allocates its output and gradients (what any custom autograd op pays), then per case
the µs of a forward and of a forward+backward (the least of ``--repeats`` rounds of
``--calls`` calls, the median beside it), the kernels launched, and with ``--breakdown``
the µs a forward+backward spends inside each of the main functions (inclusive).

Run anywhere (no GPU needed; it refuses to run where CUDA is available, since it changes
what ``torch.Tensor.is_cuda`` says): ``python3 host_offline.py [--calls=N] [--repeats=R]
[--head-dim=64,128] [--seqlen=1024,...] [--causal=yes|no|both] [--breakdown]``.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import sys
from collections.abc import Callable, Iterator

# the compiled kernels' launch path is what is timed: Triton's interpreter (which the test
# suite turns on without a GPU) wraps kernels differently, so it must be off before the
# first import of triton
os.environ.pop("TRITON_INTERPRET", None)

import torch

from tri_shared.bench import choice, host_time_us, int_list, parse_flags, timed_calls

TOKENS = 16384
HIDDEN = 2048
# tensors this small keep CPU allocation cheap (CUDA's caching allocator is): the dispatch
# sees the same head dims, sequence lengths and layouts as at the benchmark's sizes
SMALL_BATCH, SMALL_HEADS = 1, 2

FLAGS = {
    "--calls": (300, int, "--calls=N"),
    "--repeats": (5, int, "--repeats=R"),
    "--head-dim": ([128, 64], int_list, "--head-dim=D,..."),
    "--seqlen": ([1024], int_list, "--seqlen=S,..."),
    "--causal": (
        [True, False],
        choice({"yes": [True], "no": [False], "both": [True, False]}),
        "--causal=yes|no|both",
    ),
    "--breakdown": (False, choice({"": True}), "--breakdown"),
}


# what an attribute held before it was patched, when it was not in the owner's own dict
_MISSING = object()


def _described(arg: object) -> object:
    """What a launch argument gives the kernel, comparable between calls: a tensor's shape,
    strides and dtype; a descriptor's class, sizes, strides, box and element type; any
    other value itself."""
    if isinstance(arg, torch.Tensor):
        return ("tensor", tuple(arg.shape), arg.stride(), arg.dtype)
    if hasattr(arg, "block_shape") and hasattr(arg, "base"):
        return (type(arg).__name__, tuple(arg.shape), tuple(arg.strides),
                tuple(arg.block_shape), arg.base.dtype)  # fmt: skip
    return arg


class _NoKernel:
    """A compiled kernel whose launch (what the launcher, or a bound launch, calls on a hit)
    does nothing but, while ``_NoKernel.recorded`` is a list, append its name and arguments
    (:func:`_described`: grid, stream, runtime arguments and constexprs) to that list."""

    function = None
    packed_metadata = None
    recorded: list | None = None

    def __init__(self, name: str) -> None:
        self.name = name

    def run(self, *args: object) -> None:
        if _NoKernel.recorded is not None:
            _NoKernel.recorded.append((self.name, tuple(map(_described, args))))


def _recorded_launches(fn: Callable[[], object]) -> list:
    """The launches of one call of ``fn`` with their arguments (:class:`_NoKernel`)."""
    _NoKernel.recorded = []
    try:
        fn()
        return _NoKernel.recorded
    finally:
        _NoKernel.recorded = None


class _NoDriver:
    def get_current_device(self) -> int:
        return 0

    def get_current_stream(self, device: int) -> int:
        return 0


@contextlib.contextmanager
def hopper_dispatch_on_cpu() -> Iterator[None]:
    """Inside the block, flash_attn_tri calls on CPU tensors take the dispatch of a Hopper
    GPU and their launches go as far as the compiled launcher (:class:`_NoKernel`; what
    they launch: :func:`_recorded_launches`)."""
    import tri_shared.launch as launch
    from flash_attn_tri import attention

    saved = []

    def patch(owner: object, name: str, value: object) -> None:
        saved.append((owner, name, owner.__dict__.get(name, _MISSING)))
        setattr(owner, name, value)

    def first_launch(self, key, grid, args, kwargs):
        # keep a do-nothing kernel where Triton's launch would compile one; an autotuned
        # kernel keeps its first config as if the tuner had picked it
        config = self.fn.configs[0] if self._tuned else None
        constexprs = {**kwargs, **config.kwargs} if config is not None else kwargs
        tail = self._constexpr_tail(len(args), constexprs)
        if tail is None:
            raise RuntimeError(f"{self._jit.__name__}: a launch the launcher does not keep")
        config_kwargs = None if config is None else config.all_kwargs()
        self._kernels[key] = (_NoKernel(self._jit.__name__), tail, config, config_kwargs)
        return real_launch(self, grid, *args, **kwargs)

    real_launch = launch.FastLauncher._launch

    def launch_without_driver(self, grid, *args, **kwargs):
        self._driver = _NoDriver()
        return real_launch(self, grid, *args, **kwargs)

    real_check = attention._check_common

    def check_common(*args, **kwargs):
        # the one check that asks for CUDA tensors: let CPU ones through
        attention.is_interpreter = lambda: True
        try:
            return real_check(*args, **kwargs)
        finally:
            attention.is_interpreter = lambda: False

    patch(torch.Tensor, "is_cuda", property(lambda self: True))
    # the fused backward's conversion of dQ to the input type (one copy kernel on the GPU)
    # would be a real conversion on the CPU: skipped
    patch(torch.Tensor, "copy_", lambda self, src, non_blocking=False: self)
    patch(attention, "is_interpreter", lambda: False)
    patch(attention, "is_hopper", lambda device=None: True)
    patch(attention, "num_sms", lambda index=0: 132)
    patch(attention, "_check_common", check_common)
    patch(launch, "is_interpreter", lambda: False)
    patch(launch, "_hooks_installed", lambda: False)
    patch(launch.FastLauncher, "_first_launch", first_launch)
    patch(launch.FastLauncher, "_launch", launch_without_driver)
    # plans and kept kernels made under these stand-ins must not outlive them (nor be
    # taken from before)
    attention._PLANS.clear()
    launch._LAUNCHERS.clear()
    try:
        yield
    finally:
        attention._PLANS.clear()
        launch._LAUNCHERS.clear()
        for owner, name, value in reversed(saved):
            if value is _MISSING:
                delattr(owner, name)
            else:
                setattr(owner, name, value)


class _Bare(torch.autograd.Function):
    """Allocates its output and the gradients, nothing else."""

    @staticmethod
    def forward(ctx, q, k, v):
        ctx.save_for_backward(q, k, v)
        return torch.empty_like(q)

    @staticmethod
    def backward(ctx, dout):
        q, k, v = ctx.saved_tensors
        return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _per_call_us(fn: Callable[[], object], calls: int, repeats: int) -> tuple[float, float]:
    """(least, median) µs a call over ``repeats`` rounds of ``calls`` calls (after 20 to
    warm up)."""
    for _ in range(min(calls, 20)):
        fn()
    rounds = [host_time_us(fn, calls, warm=False) for _ in range(repeats)]
    return min(rounds), statistics.median(rounds)


_BREAKDOWN = (
    "flash_attn_func", "_forward_impl", "_backward_impl", "_gluon_forward", "_gluon_dq",
    "_gluon_dkdv", "_gluon_fused_backward", "_gluon_forward_eligible", "_gluon_backward_kind",
    "_check_common", "make_descriptor", "_descriptors",
)  # fmt: skip


def _breakdown_targets() -> list[tuple[object, str]]:
    """(owner, attribute) of the functions ``--breakdown`` times: ``_BREAKDOWN`` of
    flash_attn_tri.attention and the launcher's launch."""
    import tri_shared.launch as launch
    from flash_attn_tri import attention

    return [(attention, n) for n in _BREAKDOWN] + [(launch.FastLauncher, "_launch")]


def measure(d: int, seqlen: int, causal: bool, calls: int, repeats: int, breakdown: bool) -> dict:
    """One case's row: µs a forward and a forward+backward, the kernels launched."""
    from flash_attn_tri import attention

    shape = (SMALL_BATCH, seqlen, SMALL_HEADS, d)
    q, k, v = (torch.empty(shape, dtype=torch.bfloat16).requires_grad_() for _ in range(3))
    dout = torch.empty(shape, dtype=torch.bfloat16)

    def fwd():
        with torch.no_grad():
            return attention.flash_attn_func(q, k, v, causal=causal)

    def step():
        out = attention.flash_attn_func(q, k, v, causal=causal)
        return torch.autograd.grad(out, (q, k, v), dout)

    with hopper_dispatch_on_cpu():
        first = _recorded_launches(step)
        kernels = [name for name, _ in first]
        # the same signature again: its plan (attention._PLANS) must launch the same kernels
        # with the same arguments as the whole dispatch did
        again = _recorded_launches(step)
        if again != first:
            raise RuntimeError(
                f"D={d} causal={causal} S={seqlen}: the planned call's launches differ from "
                f"the first call's:\n{first}\n{again}"
            )
        fwd_us, fwd_median = _per_call_us(fwd, calls, repeats)
        step_us, step_median = _per_call_us(step, calls, repeats)
        parts: dict[str, list[int]] = {}
        if breakdown:
            with timed_calls(_breakdown_targets(), parts):
                for _ in range(calls):
                    step()
    row = {
        "D": d, "causal": causal, "seqlen": seqlen, "fwd_us": fwd_us,
        "fwd_median_us": fwd_median, "fwdbwd_us": step_us, "fwdbwd_median_us": step_median,
        "kernels": " ".join(kernels),
    }  # fmt: skip
    ranked = sorted(parts.items(), key=lambda item: -item[1][0])
    row["parts"] = {name: ns / calls / 1e3 for name, (ns, count) in ranked if count}
    return row


def bare_us(calls: int, repeats: int) -> float:
    """µs a forward+backward of :class:`_Bare` (the least of the rounds)."""
    q, k, v = (torch.empty(1, 1024, 2, 128).requires_grad_() for _ in range(3))
    dout = torch.empty_like(q)

    def step():
        return torch.autograd.grad(_Bare.apply(q, k, v), (q, k, v), dout)

    return _per_call_us(step, calls, repeats)[0]


def main(argv: list[str]) -> int:
    options = parse_flags(argv, "host_offline.py", FLAGS)
    if torch.cuda.is_available():
        print("host_offline.py: CUDA is available; time the real calls with bench_host.py")
        return 1
    print(f"bare autograd.Function, forward+backward: {bare_us(1000, 5):.1f} µs")
    for d in options["head_dim"]:
        for causal in options["causal"]:
            for seqlen in options["seqlen"]:
                row = measure(
                    d, seqlen, causal, options["calls"], options["repeats"],
                    options["breakdown"],
                )  # fmt: skip
                print(
                    f"D={d:3d} causal={causal!s:5s} S={seqlen:5d}: forward {row['fwd_us']:6.1f} µs "
                    f"(median {row['fwd_median_us']:6.1f}), forward+backward "
                    f"{row['fwdbwd_us']:6.1f} µs (median {row['fwdbwd_median_us']:6.1f}); "
                    f"kernels: {row['kernels']}"
                )
                for name, us in row["parts"].items():
                    print(f"    {name:50s} {us:6.1f} µs")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
