"""Input validation before launch.

Every failure raises ``TypeError`` (wrong kind or dtype) or ``ValueError`` (wrong value,
shape, device, layout) whose message names the argument, what was expected and what came.
None of these helpers copies or converts: a tensor written in place must be rejected,
never silently made contiguous.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch

INT_DTYPES = (torch.int32, torch.int64)
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _dtype_names(dtypes: Iterable[torch.dtype]) -> str:
    return ", ".join(str(d).replace("torch.", "") for d in dtypes)


def _shape_str(shape: Sequence[Any]) -> str:
    return "[" + ", ".join("*" if s is None else str(s) for s in shape) + "]"


def check_tensor(
    name: str,
    tensor: Any,
    *,
    shape: Sequence[int | None] | None = None,
    ndim: int | Sequence[int] | None = None,
    dtypes: Iterable[torch.dtype] | None = None,
    device: torch.device | str | None = None,
    contiguous: bool = False,
) -> torch.Tensor:
    """Check one tensor argument and return it unchanged.

    ``shape`` may hold None for a free dimension; ``ndim`` an int or a choice of ints;
    ``device`` compares type and index (``cuda`` matches ``cuda:0`` when current).
    """
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(tensor).__name__}")
    if dtypes is not None:
        dtypes = tuple(dtypes)
        if tensor.dtype not in dtypes:
            raise TypeError(
                f"{name}: expected dtype in ({_dtype_names(dtypes)}), got "
                f"{str(tensor.dtype).replace('torch.', '')}"
            )
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if tensor.dim() not in allowed:
            want = " or ".join(str(n) for n in allowed)
            raise ValueError(
                f"{name}: expected {want} dimensions, got {tensor.dim()} "
                f"(shape {list(tensor.shape)})"
            )
    if shape is not None:
        ok = tensor.dim() == len(shape) and all(
            want is None or want == got for want, got in zip(shape, tensor.shape, strict=True)
        )
        if not ok:
            raise ValueError(
                f"{name}: expected shape {_shape_str(shape)}, got {list(tensor.shape)}"
            )
    if device is not None and not same_device(
        tensor.device, device if isinstance(device, torch.device) else torch.device(device)
    ):
        raise ValueError(f"{name}: expected a tensor on {device}, got one on {tensor.device}")
    if contiguous and not tensor.is_contiguous():
        raise ValueError(
            f"{name}: expected a contiguous tensor (it is written in place and is never copied), "
            f"got strides {tuple(tensor.stride())} for shape {list(tensor.shape)}"
        )
    return tensor


def same_device(a: torch.device, b: torch.device) -> bool:
    """Device equality where an unindexed CUDA device means the current one."""
    if a == b:  # the common case, without asking CUDA for the current device
        return True
    if a.type != b.type:
        return False
    if a.type != "cuda":
        return True
    current = torch.cuda.current_device() if torch.cuda.is_available() else 0
    return (current if a.index is None else a.index) == (current if b.index is None else b.index)


def check_same_device(**tensors: torch.Tensor | None) -> torch.device:
    """All given tensors (None entries skipped) on one device; returns that device."""
    present = [(n, t) for n, t in tensors.items() if t is not None]
    if not present:
        raise ValueError("check_same_device: expected at least one tensor, got none")
    first_name, first = present[0]
    for name, t in present[1:]:
        if not same_device(t.device, first.device):
            raise ValueError(
                f"{name}: expected a tensor on {first.device} (the device of {first_name}), "
                f"got one on {t.device}"
            )
    return first.device


def check_same_dtype(**tensors: torch.Tensor | None) -> torch.dtype:
    """All given tensors (None entries skipped) of one dtype; returns that dtype."""
    present = [(n, t) for n, t in tensors.items() if t is not None]
    if not present:
        raise ValueError("check_same_dtype: expected at least one tensor, got none")
    first_name, first = present[0]
    for name, t in present[1:]:
        if t.dtype != first.dtype:
            raise TypeError(
                f"{name}: expected dtype {str(first.dtype).replace('torch.', '')} "
                f"(the dtype of {first_name}), got {str(t.dtype).replace('torch.', '')}"
            )
    return first.dtype


def check_int_tensor(name: str, tensor: Any, **kwargs: Any) -> torch.Tensor:
    """:func:`check_tensor` with ``dtypes=(int32, int64)``."""
    return check_tensor(name, tensor, dtypes=INT_DTYPES, **kwargs)


def check_positive(name: str, value: Any, *, allow_zero: bool = False) -> None:
    """A real number > 0 (or >= 0 with ``allow_zero``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name}: expected a number, got {type(value).__name__}")
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name}: expected a value {bound}, got {value}")


def check_int(
    name: str, value: Any, *, min_value: int | None = None, max_value: int | None = None
) -> int:
    """A Python int (not bool) within the given bounds."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name}: expected an int, got {type(value).__name__}")
    if min_value is not None and value < min_value:
        raise ValueError(f"{name}: expected a value >= {min_value}, got {value}")
    if max_value is not None and value > max_value:
        raise ValueError(f"{name}: expected a value <= {max_value}, got {value}")
    return value


def check_choice(name: str, value: Any, choices: Iterable[Any]) -> None:
    """``value`` is one of ``choices``."""
    choices = tuple(choices)
    if value not in choices:
        raise ValueError(
            f"{name}: expected one of {', '.join(repr(c) for c in choices)}, got {value!r}"
        )


def check_multiple(name: str, value: int, of_name: str, of_value: int) -> None:
    """``value`` is a positive multiple of ``of_value``."""
    if of_value <= 0 or value % of_value != 0 or value == 0:
        raise ValueError(f"{name}: expected a multiple of {of_name} = {of_value}, got {value}")
