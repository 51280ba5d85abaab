"""Gluon names that moved between Triton releases, resolved once for the installed Triton.

Gluon (``triton.experimental.gluon``) is Triton's lower-level language, still experimental:
Triton 3.6 spells ``thread_barrier`` and ``async_copy_global_to_shared`` what later
releases call ``barrier`` and ``async_load``. Kernel modules written in Gluon import these
instead of resolving them each on their own. Import this module only where Gluon exists
(triton >= 3.5); the packages import their Gluon kernels lazily for that reason.
"""

from __future__ import annotations

from triton._C.libtriton import ir
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language._core import builtin
from triton.experimental.gluon.language.nvidia.ampere import async_copy
from triton.experimental.gluon.language.nvidia.hopper import tma

__all__ = [
    "block_barrier",
    "cp_async_load",
    "smem_reinterpret",
    "tma_load",
    "tma_reduce_add",
    "tma_store",
    "tma_store_wait",
]

# a barrier across the warps of the running partition (or the whole program)
block_barrier = getattr(gl, "thread_barrier", None) or gl.barrier
# a copy-engine (TMA) load of one box of a tensor descriptor into shared memory
tma_load = getattr(tma, "async_load", None) or tma.async_copy_global_to_shared
# a cp.async gather of a tensor of pointers into shared memory
cp_async_load = getattr(async_copy, "async_load", None) or async_copy.async_copy_global_to_shared
# a copy-engine (TMA) store of a tile in shared memory into one box of a tensor descriptor
# (asynchronous: ``tma_store_wait`` before the tile is written again)
tma_store = getattr(tma, "async_store", None) or tma.async_copy_shared_to_global
# wait until at most ``pendings`` of this thread's copy-engine stores (and reductions) are
# still reading their shared memory
tma_store_wait = tma.store_wait


@builtin
def _tma_reduce_add(tensor_desc, coord, src, _semantic=None):
    """A copy-engine (TMA) reduction: add the tile ``src`` in shared memory into the box of
    ``tensor_desc`` at ``coord``, element by element, in global memory (one bulk operation,
    asynchronous: ``tma_store_wait`` before ``src`` is written again). Triton 3.6 builds
    the operation but has no Gluon name for it."""
    coord = _semantic._convert_to_ir_values(coord, require_i64=False)
    _semantic.builder.create_async_tma_reduce(
        ir.DESCRIPTOR_REDUCE_KIND.ADD, tensor_desc.handle, coord, src.handle
    )


tma_reduce_add = getattr(tma, "async_atomic_add", None) or _tma_reduce_add


@builtin
def smem_reinterpret(smem, dtype, shape, layout, _semantic=None):
    """The shared memory ``smem`` seen as another ``dtype``, ``shape`` and ``layout`` (the
    same bytes): ``_reinterpret`` in Triton 3.6, ``reinterpret`` later."""
    view = getattr(type(smem), "reinterpret", None) or type(smem)._reinterpret
    return view(smem, dtype, shape, layout, _semantic=_semantic)
