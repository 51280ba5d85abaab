"""Launch helpers: interpreter detection, grid sizing inside CUDA's limits, autotune configs,
device capability queries."""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence

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
    if not 1 <= len(sizes) <= 3:
        raise ValueError(f"grid: expected 1 to 3 axes, got {len(sizes)}")
    for axis, (size, limit) in enumerate(zip(sizes, MAX_GRID[: len(sizes)], strict=True)):
        if not 0 <= size <= limit:
            raise ValueError(f"grid axis {axis}: expected 0 <= size <= {limit}, got {size}")
    return tuple(int(s) for s in sizes)


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
