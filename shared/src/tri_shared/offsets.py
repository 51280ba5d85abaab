"""Block offsets, masks and pointers for 1-D and 2-D tiles.

Row offsets are promoted to int64 before they multiply a stride: ``slot * HV * K * V``
passes 2**31 long before memory runs out (4096 state slots at HV=32, K=V=128).
"""

import triton
import triton.language as tl


@triton.jit
def wide(x):
    """``x`` as int64, for an index about to multiply a large stride."""
    return x.to(tl.int64)


@triton.jit
def block_range(start, BLOCK: tl.constexpr, limit):
    """Offsets ``start + arange(BLOCK)`` and the mask ``offsets < limit``."""
    offs = start + tl.arange(0, BLOCK)
    return offs, offs < limit


@triton.jit
def block_offsets_1d(pid, BLOCK: tl.constexpr, limit):
    """Offsets of the ``pid``-th block of ``BLOCK`` elements and its bounds mask."""
    return block_range(pid * BLOCK, BLOCK, limit)


@triton.jit
def block_offsets_2d(
    start_m, start_n, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, limit_m, limit_n
):
    """Row and column offsets of a ``[BLOCK_M, BLOCK_N]`` tile and its 2-D bounds mask."""
    offs_m, mask_m = block_range(start_m, BLOCK_M, limit_m)
    offs_n, mask_n = block_range(start_n, BLOCK_N, limit_n)
    return offs_m, offs_n, mask_m[:, None] & mask_n[None, :]


@triton.jit
def tile_pointers(base, offs_m, offs_n, stride_m, stride_n):
    """Pointers ``base + m * stride_m + n * stride_n`` for a 2-D tile, in 64-bit arithmetic."""
    return base + wide(offs_m)[:, None] * stride_m + wide(offs_n)[None, :] * stride_n
