"""Gluon names that moved between Triton releases, resolved once for the installed Triton.

Gluon (``triton.experimental.gluon``) is Triton's lower-level language, still experimental:
Triton 3.6 spells ``thread_barrier`` and ``async_copy_global_to_shared`` what later
releases call ``barrier`` and ``async_load``. Kernel modules written in Gluon import these
instead of resolving them each on their own. Import this module only where Gluon exists
(triton >= 3.5); the packages import their Gluon kernels lazily for that reason.
"""

from __future__ import annotations

from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.ampere import async_copy
from triton.experimental.gluon.language.nvidia.hopper import tma

__all__ = ["block_barrier", "cp_async_load", "tma_load"]

# a barrier across the warps of the running partition (or the whole program)
block_barrier = getattr(gl, "thread_barrier", None) or gl.barrier
# a copy-engine (TMA) load of one box of a tensor descriptor into shared memory
tma_load = getattr(tma, "async_load", None) or tma.async_copy_global_to_shared
# a cp.async gather of a tensor of pointers into shared memory
cp_async_load = getattr(async_copy, "async_load", None) or async_copy.async_copy_global_to_shared
