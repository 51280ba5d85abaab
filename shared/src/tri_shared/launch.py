"""Launch helpers: interpreter detection, grid sizing inside CUDA's limits, autotune configs,
device capability queries, and a launcher with less host work per call."""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable, Sequence
from typing import Any

import torch
import triton

MAX_GRID = (2**31 - 1, 65535, 65535)
"""CUDA's largest grid along axes 0, 1 and 2."""


def is_interpreter() -> bool:
    """True when kernels run through the Triton interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def cdiv(a: int, b: int) -> int:
    """Ceiling division of non-negative integers."""
    return -(-a // b)


def next_power_of_2(n: int) -> int:
    """The smallest power of two >= ``n`` (1 for ``n <= 1``)."""
    return 1 if n <= 1 else 1 << (int(n) - 1).bit_length()


def make_grid(*sizes: int) -> tuple[int, ...]:
    """A launch grid of up to three axes, checked against CUDA's limits.

    Put the dimension that grows with the problem (sequences × heads, rows) on axis 0,
    which allows 2**31 - 1 programs; axes 1 and 2 stop at 65535. Raises ``ValueError``
    naming the axis instead of letting the launch fail.
    """
    # (this runs on every launch: three axes, the common case, are checked without a loop)
    n = len(sizes)
    if n == 3:
        x, y, z = sizes
        if 0 <= x <= MAX_GRID[0] and 0 <= y <= MAX_GRID[1] and 0 <= z <= MAX_GRID[2]:
            return (int(x), int(y), int(z))
    if not 1 <= n <= 3:
        raise ValueError(f"grid: expected 1 to 3 axes, got {n}")
    for axis in range(n):
        size, limit = sizes[axis], MAX_GRID[axis]
        if not 0 <= size <= limit:
            raise ValueError(f"grid axis {axis}: expected 0 <= size <= {limit}, got {size}")
    return tuple(map(int, sizes))


def autotune_configs(configs: Sequence[triton.Config]) -> list[triton.Config]:
    """``configs`` on a GPU, only the first under the interpreter (which cannot autotune)."""
    configs = list(configs)
    if not configs:
        raise ValueError("configs: expected at least one triton.Config, got none")
    return configs[:1] if is_interpreter() else configs


def _device_index(device: torch.device | int | None) -> int:
    if device is None:
        return torch.cuda.current_device()
    if isinstance(device, int):
        return device
    return torch.device(device).index or 0


@functools.cache
def _capability(index: int) -> tuple[int, int]:
    return torch.cuda.get_device_capability(index)


def device_capability(device: torch.device | int | None = None) -> tuple[int, int] | None:
    """Compute capability ``(major, minor)`` of a CUDA device, or None without CUDA or under
    the interpreter."""
    if is_interpreter() or not torch.cuda.is_available():
        return None
    return _capability(_device_index(device))


def is_hopper(device: torch.device | int | None = None) -> bool:
    """True on compute capability 9.x (H100, H200)."""
    cap = device_capability(device)
    return cap is not None and cap[0] == 9


@functools.cache
def num_sms(index: int = 0) -> int:
    """Streaming multiprocessors on CUDA device ``index`` (1 without CUDA)."""
    if not torch.cuda.is_available():
        return 1
    return torch.cuda.get_device_properties(index).multi_processor_count


# Option names a launch takes besides the kernel's parameters (the compiled kernel for a
# call depends on them as on the constexprs).
_LAUNCH_OPTIONS = frozenset(
    ("num_warps", "num_stages", "num_ctas", "maxnreg", "launch_pdl", "launch_cooperative_grid")
)


# The key of an argument the launcher does not know how to key (a tensor descriptor, any
# other object): such a launch goes through Triton's and is not kept.
_UNKEYED = object()


@functools.cache
def _descriptor_types() -> tuple[type, ...]:
    """The host-side copy-engine descriptor classes: Triton's tensor descriptor and Gluon's
    for Hopper and Blackwell, where the installed Triton has them."""
    types = []
    try:
        from triton.tools.tensor_descriptor import TensorDescriptor

        types.append(TensorDescriptor)
    except ImportError:
        pass
    for module in ("hopper", "blackwell"):
        try:
            mod = __import__(f"triton.experimental.gluon.nvidia.{module}", fromlist=["_"])
        except ImportError:
            continue
        if isinstance(getattr(mod, "TensorDescriptor", None), type):
            types.append(mod.TensorDescriptor)
    return tuple(dict.fromkeys(types))


# Per (descriptor class, element type, rank, extra fields): the declared fields a descriptor
# made by the class itself holds besides its tensor, shape, strides and box (what
# :func:`make_descriptor` copies), or None where it must always be built by the class.
_DESCRIPTOR_FIELDS: dict[tuple, dict[str, object] | None] = {}
_OWN_FIELDS = frozenset(("base", "shape", "strides", "block_shape"))


def make_descriptor(
    cls: type, base: torch.Tensor, shape: list[int], strides: list[int],
    block_shape: list[int], **fields: object,
) -> Any:  # fmt: skip
    """``cls(base, shape, strides, block_shape, **fields)`` for a host copy-engine
    descriptor class (Triton's or Gluon's ``TensorDescriptor``), without its checks after
    the first of each ``(cls, element type, rank, fields)``: the caller has checked what they
    check (a 16-byte aligned base and strides, a unit last stride, no empty dimension, a box
    of powers of two). The class's own constructor validates in Python on every call,
    several µs of host time a descriptor, and an attention forward+backward builds up to a
    dozen. Later descriptors copy the first one's other declared fields (defaults, the
    layout) and set their own four. A class that is not a dataclass, or whose instances hold
    anything but their declared fields (state derived at construction), is always built by
    its constructor."""
    key = (cls, base.dtype, len(shape), tuple(fields.items()))
    rest = _DESCRIPTOR_FIELDS.get(key, False)
    if rest is False:
        desc = cls(base, shape, strides, block_shape, **fields)
        own = getattr(desc, "__dict__", None)
        dataclass = dataclasses.is_dataclass(cls)
        declared = {f.name for f in dataclasses.fields(cls)} if dataclass else set()
        plain = own is not None and set(own) == declared and declared >= _OWN_FIELDS
        _DESCRIPTOR_FIELDS[key] = (
            {k: v for k, v in own.items() if k not in _OWN_FIELDS} if plain else None
        )
        return desc
    if rest is None:
        return cls(base, shape, strides, block_shape, **fields)
    desc = object.__new__(cls)
    own = desc.__dict__
    own.update(rest)
    own["base"], own["shape"], own["strides"], own["block_shape"] = (
        base, shape, strides, block_shape,
    )  # fmt: skip
    return desc


def _arg_key(arg: object) -> object:
    """What the compiled kernel may depend on in a runtime argument: a tensor's dtype and
    16-byte alignment; an int's value class (1, a multiple of 16, 32- or 64-bit); the type of a
    float; None and bools by value; a copy-engine descriptor's (Triton's or Gluon's) element
    type, rank, box, padding and shared-memory layout (its address, sizes and strides go into
    the hardware descriptor built at each launch, not into the code). At least as fine as
    Triton's own specialisation, so two calls with equal keys take the same compiled kernel.
    Keys hold no reference to a tensor. Anything else: ``_UNKEYED``."""
    kind = type(arg)
    if kind is int:
        return (arg == 1, arg % 16 == 0, -0x80000000 <= arg <= 0x7FFFFFFF, arg >= 1 << 63)
    if kind is float:
        return float
    if isinstance(arg, torch.Tensor):
        return (arg.dtype, arg.data_ptr() % 16 == 0)
    if arg is None or kind is bool:
        return (kind, arg)
    if kind in _descriptor_types():
        block = tuple(arg.block_shape)
        layout = getattr(arg, "layout", None)
        tf32 = getattr(arg, "round_f32_to_tf32", None)
        return (kind, arg.base.dtype, len(arg.shape), block, layout, arg.padding, tf32)
    return _UNKEYED


def _hooks_installed() -> bool:
    """Whether a launch hook is set (profilers install them); Triton keeps empty hook chains
    when none is."""
    runtime = triton.knobs.runtime
    hooks = (runtime.launch_enter_hook, runtime.launch_exit_hook)
    return any(h is not None and bool(getattr(h, "calls", True)) for h in hooks)


class FastLauncher:
    """``launcher[grid](*args, **constexprs)``: launch a ``@triton.jit`` or ``@gluon.jit``
    kernel, or a ``triton.autotune`` wrapper of one, as ``kernel[grid](...)`` does, with less
    host work on repeated calls.

    The first call for each *specialisation key* goes through Triton's own launch (which
    compiles or loads the kernel, and autotunes) and keeps the compiled kernel, with the
    config the autotuner chose; later calls with the same key launch it directly (after the
    config's pre-hook). The key holds the current device, each runtime argument's
    :func:`_arg_key` (tensor dtype and 16-byte alignment, int divisibility by 16, equality
    to 1 and width, a descriptor's box) and the keyword arguments, so a call never reuses a
    kernel compiled for different alignment or divisibility, and it is at least as fine as
    the autotuner's key (its key arguments are constexprs, its dtypes are in ours). Runtime
    arguments are positional; keyword arguments are constexprs and launch options
    (``num_warps``, ...), hashable values; runtime arguments other than tensors, ints,
    floats, bools, None and copy-engine descriptors make the call go through Triton's launch.
    ``grid`` is a tuple or, as for Triton, a function of the arguments and constexprs.

    Triton's launch costs tens of microseconds of host time (binding and specialising every
    argument, a cache key built from a string of the options; the autotuner's key and
    dictionaries on top); a host-bound call, such as a small problem or a training step
    whose GPU work is short, pays it on every launch. Launches go through Triton's path
    under the interpreter, with a launch hook installed (profilers), or when keyword
    arguments are not constexprs or options.
    """

    def __init__(self, fn: Any) -> None:
        self.fn = fn
        # the compiled kernel's parameters are those of the jitted function; an autotuner
        # wraps one directly (wrappers that rewrite arguments, such as heuristics, are not
        # kept: their launches go through Triton's each time)
        tuned = isinstance(fn, triton.runtime.Autotuner)
        self._jit = fn.fn if tuned else fn
        self._tuned = tuned
        # key -> (compiled kernel, constexpr tail, autotuner config or None, its values)
        self._kernels: dict[tuple, tuple[Any, tuple, Any, dict | None]] = {}
        self._driver: Any = None

    def __getitem__(self, grid: Any) -> Callable[..., Any]:
        return functools.partial(self._launch, grid)

    @property
    def num_cached(self) -> int:
        """Compiled kernels kept for direct launches (one per specialisation key seen)."""
        return len(self._kernels)

    def bind(self, grid: tuple[int, ...], **kwargs: object) -> BoundLaunch:
        """A :class:`BoundLaunch` of this kernel over ``grid`` (a tuple) with the keyword
        arguments ``kwargs`` (constexprs and launch options)."""
        return BoundLaunch(self, grid, kwargs)

    def _launch(self, grid: Any, *args: object, **kwargs: object) -> Any:
        driver = self._driver
        if driver is None:
            if is_interpreter():  # the interpreter has no driver and nothing to keep
                return self.fn[grid](*args, **kwargs)
            driver = self._driver = triton.runtime.driver.active
        if _hooks_installed():
            return self.fn[grid](*args, **kwargs)
        device = driver.get_current_device()
        arg_keys = tuple(map(_arg_key, args))
        if _UNKEYED in arg_keys:
            return self.fn[grid](*args, **kwargs)
        key = (device, arg_keys, tuple(kwargs.items()))
        hit = self._kernels.get(key)
        if hit is None:
            return self._first_launch(key, grid, args, kwargs)
        kernel, tail, config, config_kwargs = hit
        if config is not None and (config.pre_hook is not None or callable(grid)):
            meta = {**self._named(args), **kwargs, **config_kwargs}
            if config.pre_hook is not None:
                config.pre_hook(meta)
            if callable(grid):
                grid = grid(meta)
        elif callable(grid):
            grid = grid({**self._named(args), **kwargs})
        g1 = grid[1] if len(grid) > 1 else 1
        g2 = grid[2] if len(grid) > 2 else 1
        stream = driver.get_current_stream(device)
        kernel.run(
            grid[0], g1, g2, stream, kernel.function, kernel.packed_metadata, None, None, None,
            *args, *tail,
        )  # fmt: skip
        return kernel

    def _kept(self, args: tuple, kwargs: dict) -> tuple | bool | None:
        """For :class:`BoundLaunch`, after a launch with ``args`` and ``kwargs``: (compiled
        kernel, constexpr tail, device, tensor checks) where the launcher kept that launch's
        kernel and its config has no pre-hook; False where it never will (not keepable, or a
        pre-hook); None where it may later (a launch hook was installed). The checks are
        ``(position, dtype, aligned)`` of each tensor argument (``aligned``: its address a
        multiple of 16)."""
        if self._driver is None or _hooks_installed():
            return None
        device = self._driver.get_current_device()
        arg_keys = tuple(map(_arg_key, args))
        hit = self._kernels.get((device, arg_keys, tuple(kwargs.items())))
        if hit is None or (hit[2] is not None and hit[2].pre_hook is not None):
            return False
        checks = tuple(
            (i, a.dtype, a.data_ptr() % 16 == 0)
            for i, a in enumerate(args)
            if isinstance(a, torch.Tensor)
        )
        return hit[0], hit[1], device, checks

    def _named(self, args: tuple) -> dict[str, object]:
        """The runtime arguments by parameter name (what pre-hooks and grid functions see)."""
        return dict(zip(self._jit.arg_names[: len(args)], args, strict=True))

    def _first_launch(self, key: tuple, grid: Any, args: tuple, kwargs: dict) -> Any:
        """Triton's launch (compiling, autotuning); keeps the kernel where it can."""
        kernel = self.fn[grid](*args, **kwargs)
        config = None
        constexprs = kwargs
        if self._tuned:
            config = self.fn.best_config
            constexprs = {**kwargs, **config.kwargs}
            if not isinstance(self._jit, triton.runtime.JITFunction):
                return kernel
        tail = self._constexpr_tail(len(args), constexprs)
        if tail is not None and all(
            hasattr(kernel, a) for a in ("run", "function", "packed_metadata")
        ):
            config_kwargs = None if config is None else config.all_kwargs()
            self._kernels[key] = (kernel, tail, config, config_kwargs)
        return kernel

    def _constexpr_tail(self, n_args: int, kwargs: dict[str, object]) -> tuple | None:
        """The values of the parameters after the positional ones, in order (the compiled
        kernel takes every parameter), or None when the direct launch does not apply: a
        runtime argument given by keyword or left to its default, or a keyword argument that
        is neither a constexpr nor an option."""
        params = getattr(self._jit, "params", None)
        if params is None:
            return None
        tail = []
        for param in params[n_args:]:
            if not param.is_constexpr:
                return None
            tail.append(kwargs.get(param.name, param.default))
        names = {p.name for p in params[n_args:]}
        if any(k not in names and k not in _LAUNCH_OPTIONS for k in kwargs):
            return None
        return tuple(tail)


class BoundLaunch:
    """``bound(*args)``: ``launcher[grid](*args, **kwargs)`` with the grid and the keyword
    arguments fixed, for a caller that keeps it (one per call signature: shapes, strides,
    dtypes, options) and launches one kernel with it again and again.

    Calls go through the launcher until it has kept the compiled kernel of one (Triton's
    launch, compilation, a config without a pre-hook); from then on a call launches that
    kernel directly, building no key, where the current device and each tensor argument's
    dtype are that call's, and each tensor aligned to 16 bytes then still is (else it goes
    through the launcher). The rest of what the kernel was specialised on is the caller's
    to hold fixed, unchecked: the value classes of its ints (1, multiples of 16, width),
    the boxes, element types and layouts of its descriptors, its floats, bools and Nones.
    That holds for arguments derived from the signature the caller keeps the bound launch
    for (sizes, strides, options). What it saves: the launcher's key, about half of a
    launch's host time (the other half is Triton's compiled launcher)."""

    __slots__ = ("_direct", "_grid", "_kwargs", "_launcher")

    def __init__(self, launcher: FastLauncher, grid: tuple[int, ...], kwargs: dict) -> None:
        if callable(grid) or not 1 <= len(grid) <= 3:
            raise TypeError(f"grid: expected a tuple of 1 to 3 ints, got {grid!r}")
        self._launcher = launcher
        self._grid = tuple(grid) + (1,) * (3 - len(grid))
        self._kwargs = kwargs
        # (kernel, tail, device, checks) once kept; None until then; False: never
        self._direct: tuple | bool | None = None

    def __call__(self, *args: object) -> Any:
        direct = self._direct
        if direct:
            kernel, tail, device, checks = direct
            driver = self._launcher._driver
            if driver.get_current_device() == device and not _hooks_installed():
                for i, dtype, aligned in checks:
                    t: Any = args[i]
                    if t.dtype is not dtype or (aligned and t.data_ptr() % 16):
                        break
                else:
                    x, y, z = self._grid
                    stream = driver.get_current_stream(device)
                    kernel.run(
                        x, y, z, stream, kernel.function, kernel.packed_metadata, None, None,
                        None, *args, *tail,
                    )  # fmt: skip
                    return kernel
            return self._launcher._launch(self._grid, *args, **self._kwargs)
        kernel = self._launcher._launch(self._grid, *args, **self._kwargs)
        if direct is None:
            self._direct = self._launcher._kept(args, self._kwargs)
        return kernel

    @property
    def is_direct(self) -> bool:
        """Whether calls launch the kept kernel directly (after a first kept launch)."""
        return bool(self._direct)


_LAUNCHERS: dict[int, FastLauncher] = {}


def fast_launcher(fn: Any) -> FastLauncher:
    """The :class:`FastLauncher` of kernel ``fn`` (one per kernel, made on first use; kernels
    are module-level objects that live as long as the process):
    ``fast_launcher(kernel)[grid](*args, **constexprs)``."""
    launcher = _LAUNCHERS.get(id(fn))
    if launcher is None or launcher.fn is not fn:
        launcher = _LAUNCHERS[id(fn)] = FastLauncher(fn)
    return launcher
