"""Helpers for tests: relative error, an assert that says where it failed, NaN poisoning,
seeded random inputs."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """‖actual − expected‖ / ‖expected‖ in float64 (‖·‖ the Frobenius norm).

    NaN anywhere gives NaN; an all-zero ``expected`` gives the absolute norm of the difference.
    """
    a = actual.detach().to(torch.float64)
    e = expected.detach().to(device=a.device, dtype=torch.float64)
    if a.shape != e.shape:
        raise ValueError(f"rel_err: shapes differ, {list(a.shape)} vs {list(e.shape)}")
    diff = torch.linalg.vector_norm(a - e).item()
    ref = torch.linalg.vector_norm(e).item()
    return diff / ref if ref > 0 else diff


def assert_close(
    actual: torch.Tensor, expected: torch.Tensor, *, max_rel_err: float, name: str = "output"
) -> float:
    """Fail unless ``rel_err(actual, expected) <= max_rel_err`` and ``actual`` is finite
    where ``expected`` is.

    The message gives the relative error, the largest absolute error and its index.
    Returns the relative error.
    """
    if actual.shape != expected.shape:
        raise AssertionError(
            f"{name}: shape {list(actual.shape)} != expected {list(expected.shape)}"
        )
    a = actual.detach().to(torch.float64)
    e = expected.detach().to(device=a.device, dtype=torch.float64)
    bad = ~torch.isfinite(a) & torch.isfinite(e)
    if bad.any():
        where = tuple(int(i) for i in torch.nonzero(bad)[0])
        raise AssertionError(
            f"{name}: {int(bad.sum())} non-finite values where the reference is finite, "
            f"first at {where}: {a[where].item()} (expected {e[where].item()})"
        )
    finite = torch.isfinite(e)
    a, e = torch.where(finite, a, 0.0), torch.where(finite, e, 0.0)
    err = rel_err(a, e)
    if not err <= max_rel_err:
        diff = (a - e).abs()
        flat = int(torch.argmax(diff))
        where = tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), diff.shape))
        raise AssertionError(
            f"{name}: relative error {err:.3e} > {max_rel_err:.1e}; max abs error "
            f"{diff.max().item():.3e} at {where} (got {a[where].item():.6g}, "
            f"expected {e[where].item():.6g})"
        )
    return err


def poison(tensor: torch.Tensor) -> torch.Tensor:
    """Fill a floating tensor with NaN (integer tensors with -1) in place and return it, so
    that any element a kernel fails to write shows up."""
    if tensor.is_floating_point():
        return tensor.fill_(float("nan"))
    return tensor.fill_(-1)


def generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A torch.Generator on ``device`` seeded with ``seed``."""
    g = torch.Generator(device=device)
    g.manual_seed(seed)
    return g


def randn(
    shape: Sequence[int],
    *,
    seed: int,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    scale: float = 1.0,
    shift: float = 0.0,
) -> torch.Tensor:
    """Normal samples ``shift + scale * N(0, 1)`` drawn in fp32 on ``device``, cast to ``dtype``."""
    g = generator(seed, device)
    x = torch.randn(tuple(shape), generator=g, device=device, dtype=torch.float32)
    return (x * scale + shift).to(dtype)


def rand(
    shape: Sequence[int],
    *,
    seed: int,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    low: float = 0.0,
    high: float = 1.0,
) -> torch.Tensor:
    """Uniform samples in ``[low, high)`` drawn in fp32 on ``device``, cast to ``dtype``."""
    g = generator(seed, device)
    x = torch.rand(tuple(shape), generator=g, device=device, dtype=torch.float32)
    return (x * (high - low) + low).to(dtype)


def randint(
    low: int,
    high: int,
    shape: Sequence[int],
    *,
    seed: int,
    dtype: torch.dtype = torch.int64,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Integers in ``[low, high)``."""
    g = generator(seed, device)
    return torch.randint(low, high, tuple(shape), generator=g, device=device, dtype=dtype)


def randperm(
    n: int, *, seed: int, dtype: torch.dtype = torch.int64, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """A random permutation of ``range(n)`` (for distinct slot indices)."""
    g = generator(seed, device)
    return torch.randperm(n, generator=g, device=device).to(dtype)
