"""FlashAttention-2 forward and backward: input checks, launches, torch custom ops with autograd,
and the flash_attn-compatible entry points.

The forward and backward are ``torch.library`` custom ops (``flash_attn_tri::fwd`` and
``flash_attn_tri::bwd``) with fake implementations and a registered autograd formula, so
``torch.compile(fullgraph=True)`` traces through them and CUDA graphs can capture them (no host
synchronisation: the dropout seed lives in a device tensor drawn from torch's generator).
"""

import functools
import math
import os
from typing import Any, NamedTuple

import torch
import triton
from triton.tools.tensor_descriptor import TensorDescriptor

from tri_shared.checks import (
    FLOAT_DTYPES,
    check_multiple,
    check_same_device,
    check_same_dtype,
    check_tensor,
)
from tri_shared.dots import ieee_dots
from tri_shared.launch import (
    BoundLaunch,
    autotune_configs,
    cdiv,
    fast_launcher,
    is_hopper,
    is_interpreter,
    make_descriptor,
    make_grid,
    next_power_of_2,
    num_sms,
)
from tri_shared.softmax import LOG2E

from .kernels import attention as _k

MAX_HEAD_DIM = 256

# ------------------------------------------------------------------------------------------
# launch configurations
# ------------------------------------------------------------------------------------------

# Autotuning on every new option combination costs compile time (tests compile dozens of
# variants); FLASH_ATTN_TRI_AUTOTUNE=0 keeps the first (hand-picked) config only.
_AUTOTUNE = os.environ.get("FLASH_ATTN_TRI_AUTOTUNE", "1") not in ("", "0")


def _configs(candidates: list[tuple[int, int, int, int]], pre_hook=None) -> list[triton.Config]:
    if is_interpreter():
        # small blocks in the interpreter: more loop steps and edge cases per test
        return [
            triton.Config(
                {"BLOCK_M": 32, "BLOCK_N": 16}, num_warps=4, num_stages=1, pre_hook=pre_hook
            )
        ]
    configs = [
        triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s, pre_hook=pre_hook)
        for bm, bn, w, s in candidates
    ]
    return autotune_configs(configs if _AUTOTUNE else configs[:1])


def _fwd_candidates(block_d: int) -> list[tuple[int, int, int, int]]:
    # (BLOCK_M, BLOCK_N, num_warps, num_stages); the first is the default without autotuning.
    # Measured per sequence-length class on an H200 (BENCHMARKS.md): 64 x 64 tiles win at
    # short lengths (up to 2048-4096 with tensor descriptors), 128-row tiles at long ones.
    if block_d <= 64:
        return [
            (128, 64, 4, 4),
            (64, 64, 4, 3),
            (128, 128, 4, 3),
            (128, 64, 4, 3),
            (128, 128, 8, 3),
        ]
    if block_d <= 128:
        return [
            (128, 128, 8, 3),
            (64, 64, 4, 3),
            (128, 64, 8, 3),
            (128, 64, 8, 4),
            (128, 128, 8, 2),
        ]
    return [(64, 64, 4, 2), (128, 64, 8, 2), (64, 32, 4, 2)]


def _dkdv_candidates(block_d: int) -> list[tuple[int, int, int, int]]:
    # BLOCK_M = query rows per step, BLOCK_N = keys owned by the program (the M side of the
    # transposed tiles). Every candidate is checked on the GPU, causal and not, for exact
    # gradients that repeat bitwise (test_gpu.py::test_every_backward_config).
    # The first ones with num_stages 2: under a causal mask at 1024-2048 keys the 3-stage
    # version is 1.07-1.4x slower (bench/sweep_configs.py, BENCHMARKS.md); without a mask
    # it is 1-3% faster.
    if block_d <= 64:
        return [(32, 128, 4, 2), (32, 128, 4, 3), (64, 64, 4, 3), (64, 128, 8, 3)]
    if block_d <= 128:
        return [(32, 64, 4, 2), (32, 64, 4, 3), (64, 128, 8, 2), (32, 128, 8, 2)]
    return [(32, 64, 4, 2), (16, 64, 4, 2), (32, 32, 4, 2)]


def _dq_candidates(block_d: int) -> list[tuple[int, int, int, int]]:
    # BLOCK_M = query rows owned by the program, BLOCK_N = keys per step (same GPU check).
    # Not at 128-wide heads: num_stages 2 with tensor descriptors, where ptxas (triton 3.6)
    # crashes.
    if block_d <= 64:
        # (64, 128, 4, 3): +2% backward at 16K keys without a mask (sweep, BENCHMARKS.md)
        return [(64, 64, 4, 3), (128, 32, 4, 3), (64, 32, 4, 3), (128, 64, 8, 3), (64, 128, 4, 3)]
    if block_d <= 128:
        return [(128, 64, 8, 3), (128, 32, 4, 3), (64, 64, 4, 3)]
    return [(64, 32, 4, 2), (64, 16, 4, 2), (32, 32, 4, 2)]


# Hopper, D = 64 forward without extras: the config per (causal, length class), each the
# fastest of the candidates and EXTRA (sweep_configs.py --extra) forced one at a time, twice,
# on an H100 (BENCHMARKS.md, session 19). The autotuner's own timing there is as noisy as the
# gaps between the leaders: it took 64 x 64 tiles at 4096-8192 keys without a mask, 7-9%
# slower than 128 x 128 (365 against 428 TFLOP/s in one whole-suite run).
_HOPPER_FWD_D64: dict[tuple[bool, int], tuple[int, int, int, int]] = {
    (False, 1024): (64, 64, 4, 3),
    (False, 2048): (64, 64, 4, 3),
    (False, 4096): (128, 128, 4, 3),
    (False, 8192): (128, 128, 4, 3),
    (False, 16384): (128, 64, 4, 4),
    (True, 1024): (64, 64, 4, 3),
    (True, 2048): (64, 64, 4, 3),
    (True, 4096): (128, 64, 4, 4),
    (True, 8192): (128, 64, 4, 4),
    (True, 16384): (128, 64, 4, 4),
}


# Hopper, D = 64 backward (the Triton kernels: since session 23 only calls the Gluon
# backward cannot take, such as unaligned strides or fp32; before, also causal calls below
# 4096 tokens): the dQ and dK/dV configs per (causal, length class), the fastest backward
# with that config forced and the other kernel autotuned, by the median of two rounds over
# the candidates and EXTRA, on an H100 (sweep_configs.py --extra, BENCHMARKS.md, session
# 21). The dK/dV configs spread 194-289 TFLOP/s at 1024 keys without a mask: an unlucky
# autotuner pick costs up to a third; dQ's leaders are within 1-2%. Length classes not
# listed are autotuned. Timed against the autotuner choosing afresh, on one H100
# (sweep_configs.py --against-autotune, 3 rounds, session 22): within 1.5% either way but dQ
# at 1024 keys without a mask, where the autotuner's 128 x 64 x 8 x 3 ran 5% faster than the
# pin: that pin was dropped.
_HOPPER_DQ_D64: dict[tuple[bool, int], tuple[int, int, int, int]] = {
    (False, 2048): (64, 128, 4, 3),
    (True, 1024): (64, 64, 4, 3),
    (True, 2048): (128, 64, 4, 3),
}
_HOPPER_DKDV_D64: dict[tuple[bool, int], tuple[int, int, int, int]] = {
    (False, 1024): (32, 128, 4, 3),
    (False, 2048): (32, 128, 4, 3),
    (True, 1024): (32, 128, 4, 2),
    (True, 2048): (32, 128, 4, 2),  # (64 x 64 x 4 x 2 as fast: 271 TFLOP/s each)
}
_HOPPER_D64_PINS = {"fwd": _HOPPER_FWD_D64, "dq": _HOPPER_DQ_D64, "dkdv": _HOPPER_DKDV_D64}


def _pinned_config(
    kernel: str, q: torch.Tensor, d: int, dv: int, varlen: bool, o: "_Opts", has_alibi: bool,
    seqlen: int,
) -> tuple[int, int, int, int] | None:  # fmt: skip
    """The config of ``kernel`` ("fwd", "dq" or "dkdv") pinned for this call
    (:data:`_HOPPER_D64_PINS`: Hopper, D = 64, fixed length, no mask or causal, no softcap,
    ALiBi or dropout, a listed length class), or None to autotune."""
    if d != 64 or dv != 64 or varlen or o.has_left or o.is_softcap or has_alibi:
        return None
    if o.dropout_p > 0 or (o.has_right and o.win_right != 0) or not is_hopper(q.device):
        return None
    return _HOPPER_D64_PINS[kernel].get((o.has_right, _length_class(seqlen)))


_KEY = ["HEAD_DIM", "HEAD_DIM_V", "IS_VARLEN", "HAS_LEFT", "HAS_RIGHT", "HAS_DROPOUT"]
_kernels: dict[tuple, object] = {}


def _length_class(seqlen: int) -> int:
    """Sequence lengths tuned apart: powers of two from 1024 to 16384 (the best tiles change
    with length, most for causal masks)."""
    return min(max(next_power_of_2(max(seqlen, 1)), 1024), 16384)


def _kernel(name: str, block_d: int, seqlen: int, pinned: tuple[int, int, int, int] | None = None):
    """The autotuned wrapper of kernel ``name`` for one head-dim class and one length class
    (built once; the compiled kernels are shared, each wrapper keeps its own choice);
    ``pinned``: that config only, instead of the candidates."""
    dclass = 64 if block_d <= 64 else 128 if block_d <= 128 else 256
    key = (name, dclass, _length_class(seqlen), pinned)
    if key not in _kernels:
        fn, cands, hook = {
            "fwd": (_k._fwd_kernel, _fwd_candidates, _FWD_BOXES),
            "dkdv": (_k._bwd_dkdv_kernel, _dkdv_candidates, _DKDV_BOXES),
            "dq": (_k._bwd_dq_kernel, _dq_candidates, _DQ_BOXES),
        }[name]
        configs = _configs([pinned] if pinned is not None else cands(dclass), hook)
        _kernels[key] = triton.autotune(configs=configs, key=_KEY)(fn)
    return _kernels[key]


# ------------------------------------------------------------------------------------------
# launches
# ------------------------------------------------------------------------------------------


def _descriptor(t: torch.Tensor) -> TensorDescriptor | None:
    """A tensor descriptor over a fixed-length ``[batch, seqlen, heads, dim]`` tensor, or None
    where the hardware copy engine cannot address it (strides and base must be 16-byte
    aligned, no dimension empty). Its box is set per launch config by :func:`_boxes`."""
    size = t.element_size()
    if t.dim() != 4 or t.numel() == 0 or t.stride(-1) != 1 or t.data_ptr() % 16:
        return None
    if any(st * size % 16 for st in t.stride()[:-1]):
        return None
    return make_descriptor(TensorDescriptor, t, list(t.shape), list(t.stride()), [1, 16, 1, 16])


def _descriptors(*tensors: torch.Tensor) -> list[TensorDescriptor] | None:
    """Descriptors for every tensor, or None if any cannot have one."""
    descs = [_descriptor(t) for t in tensors]
    return None if any(d is None for d in descs) else descs


def _boxes(**boxes: tuple[str, str]):
    """Autotune pre-hook: descriptor argument ``name`` gets the box ``[1, rows, 1, cols]``
    where ``(rows, cols)`` name the config's block sizes (``boxes[name]``)."""

    def hook(nargs: dict) -> None:
        if nargs["USE_DESC"]:
            for name, (rows, cols) in boxes.items():
                nargs[name].block_shape = [1, nargs[rows], 1, nargs[cols]]

    return hook


# the blocks each kernel moves through descriptors: forward Q/O rows per program, K/V per step;
# dK/dV pass q/dO per step; dQ pass k/v per step
_FWD_BOXES = _boxes(
    Q=("BLOCK_M", "BLOCK_D"), Out=("BLOCK_M", "BLOCK_DV"), K=("BLOCK_N", "BLOCK_D"),
    V=("BLOCK_N", "BLOCK_DV"),
)  # fmt: skip
_DKDV_BOXES = _boxes(Q_DESC=("BLOCK_M", "BLOCK_D"), DO_DESC=("BLOCK_M", "BLOCK_DV"))
_DQ_BOXES = _boxes(K_DESC=("BLOCK_N", "BLOCK_D"), V_DESC=("BLOCK_N", "BLOCK_DV"))


def _strides3(t: torch.Tensor, varlen: bool) -> tuple[int, int, int]:
    """(batch, seq, head) strides; batch stride 0 for packed varlen tensors."""
    if varlen:
        return 0, t.stride(0), t.stride(1)
    return t.stride(0), t.stride(1), t.stride(2)


def _lse_strides(lse: torch.Tensor, varlen: bool) -> tuple[int, int]:
    if varlen:  # [heads, total_q]
        return 0, lse.stride(0)
    return lse.stride(0), lse.stride(1)  # [batch, heads, seqlen_q]


class _Opts:
    """Scalars derived once from the user's options, shared by forward and backward."""

    def __init__(
        self,
        head_dim: int,
        softmax_scale: float,
        window_left: int,
        window_right: int,
        softcap: float,
        dropout_p: float,
    ) -> None:
        self.sm_scale = softmax_scale
        self.qk_scale2 = softmax_scale * LOG2E.value
        self.is_softcap = softcap > 0
        # tanh(scale·qk / cap) = 1 - 2 / (exp2(qk · 2·log2e·scale/cap) + 1); logit = cap·tanh
        self.softcap_in = 2.0 * LOG2E.value * softmax_scale / softcap if softcap > 0 else 0.0
        self.softcap_out2 = softcap * LOG2E.value
        self.has_left = window_left >= 0
        self.has_right = window_right >= 0
        self.win_left = max(window_left, 0)
        self.win_right = max(window_right, 0)
        self.dropout_p = dropout_p
        self.dropout_scale = 1.0 / (1.0 - dropout_p) if dropout_p > 0 else 1.0


def _geometry(q, k, v, cu_seqlens_q, max_seqlen_q, max_seqlen_k):
    varlen = cu_seqlens_q is not None
    if varlen:
        batch = cu_seqlens_q.shape[0] - 1
        heads, heads_k = q.shape[1], k.shape[1]
        seqlen_q, seqlen_k = max_seqlen_q, max_seqlen_k
    else:
        batch, seqlen_q, heads = q.shape[0], q.shape[1], q.shape[2]
        seqlen_k, heads_k = k.shape[1], k.shape[2]
    return varlen, batch, heads, heads_k, seqlen_q, seqlen_k


def _alibi_args(alibi_slopes: torch.Tensor | None, q: torch.Tensor) -> tuple:
    if alibi_slopes is None:
        return q, 0, 0, False  # any pointer: never read
    if alibi_slopes.dim() == 1:
        return alibi_slopes, 0, alibi_slopes.stride(0), True
    return alibi_slopes, alibi_slopes.stride(0), alibi_slopes.stride(1), True


def _gluon_forward_wanted(head_dim: int) -> bool:
    """Whether a call the Gluon forward for Hopper can take should go to it: yes at D = 128,
    causal or not, at every length; at D = 64 the Triton kernel measured faster
    (BENCHMARKS.md). ``FLASH_ATTN_TRI_GLUON=1`` says yes to every call it can take (D = 64
    or 128), ``=0`` says no."""
    switch = os.environ.get("FLASH_ATTN_TRI_GLUON", "auto")
    if switch in ("0", "1"):
        return switch == "1" and head_dim in (64, 128)
    return head_dim == 128


def _gluon_eligible(tensors, varlen: bool, o: _Opts, has_alibi: bool, seqlen_k: int) -> bool:
    """What the Gluon kernels for Hopper need of a call: a Hopper GPU, fixed-length
    fp16/bf16 tensors with one head dim D (q's, also v's), no window other than causal, no
    softcap, ALiBi or dropout, a positive scale, and rows of ``heads · D`` contiguous,
    16-byte aligned elements (copy-engine boxes)."""
    q = tensors[0]
    d = q.shape[-1]
    if varlen or not q.is_cuda or not is_hopper(q.device):
        return False
    if q.dtype not in (torch.float16, torch.bfloat16) or o.sm_scale <= 0 or seqlen_k == 0:
        return False
    if o.is_softcap or has_alibi or o.dropout_p > 0 or o.has_left:
        return False
    if o.has_right and o.win_right != 0:  # causal is the window (-1, 0)
        return False
    for t in tensors:
        if t.dim() != 4 or t.shape[3] != d:
            return False
        stride_b, stride_s, stride_h, stride_d = t.stride()  # (one call: this runs per launch)
        if stride_d != 1 or stride_h != d or stride_b % 8 or stride_s % 8 or t.data_ptr() % 16:
            return False
    return _gluon_available()


@functools.cache
def _gluon_available() -> bool:
    """Whether the installed Triton has Gluon (3.5 and later) for the Hopper kernels."""
    try:
        from .kernels import attention_hopper  # noqa: F401
    except ImportError:
        return False
    return True


@functools.cache
def _hopper_kernels() -> tuple[Any, Any]:
    """The modules of the Gluon forward and backward for Hopper, imported on first use (they
    need Triton with Gluon; an import statement on every launch costs host time)."""
    from .kernels import attention_hopper, attention_hopper_bwd

    return attention_hopper, attention_hopper_bwd


def _gluon_forward_eligible(q, k, v, varlen: bool, o: _Opts, has_alibi: bool) -> bool:
    """Whether the Gluon forward for Hopper (``kernels/attention_hopper.py``) takes this call:
    :func:`_gluon_forward_wanted` and :func:`_gluon_eligible`."""
    if not _gluon_forward_wanted(q.shape[-1]):
        return False
    return _gluon_eligible((q, k, v), varlen, o, has_alibi, k.shape[1])


def _gluon_backward_wanted(
    head_dim: int, causal: bool, seqlen: int, deterministic: bool
) -> str | None:
    """Which Gluon backward for Hopper (``kernels/attention_hopper_bwd.py``) a call it can
    take should go to, as measured against the Triton kernels and each other (BENCHMARKS.md;
    ``seqlen`` the longer of the query and key lengths):

    - D = 128, causal: ``"split"`` (a dQ kernel beside the dK/dV kernel);
    - D = 128 without a mask: ``"fused"`` (the dK/dV kernel adding dQ up too);
    - D = 64 without a mask: ``"fused"`` from 2048 tokens (on 128-row query blocks: 3% faster
      than the split kernels at 2048, 5-9% from 4096), ``"split"`` below (1-2% faster at
      1024);
    - D = 64, causal: ``"split"`` (the fused kernel 3-10% slower up to 2048 tokens and
      within 1.5% of it from 4096).

    ``"fused"`` sums dQ in fp32 in whatever order the copy engine's reductions land, so its
    rounding varies run to run: ``deterministic`` takes ``"split"`` instead.
    ``FLASH_ATTN_TRI_GLUON_BWD=0`` says None always; ``=1`` says ``"split"`` to every call
    it can take (D = 64 or 128); ``=fused`` says ``"fused"`` to those (``"split"`` when
    ``deterministic``)."""
    switch = os.environ.get("FLASH_ATTN_TRI_GLUON_BWD", "auto")
    if switch in ("0", "1", "fused"):
        if switch == "0" or head_dim not in (64, 128):
            return None
        return "fused" if switch == "fused" and not deterministic else "split"
    if head_dim == 128:
        return "split" if causal or deterministic else "fused"
    if head_dim == 64:
        return "fused" if not causal and seqlen >= 2048 and not deterministic else "split"
    return None


def _gluon_backward_kind(
    q, k, v, dout, out, varlen: bool, o: _Opts, has_alibi: bool, deterministic: bool,
    seqlen: int,
) -> str | None:  # fmt: skip
    """The Gluon backward that takes this call (:func:`_gluon_backward_wanted`, where
    :func:`_gluon_eligible`), or None; ``seqlen`` the longer of the query and key lengths."""
    kind = _gluon_backward_wanted(q.shape[-1], o.has_right, seqlen, deterministic)
    if kind is None or not _gluon_eligible((q, k, v, dout, out), varlen, o, has_alibi, k.shape[1]):
        return None
    return kind


@functools.cache
def _swizzled_layout(element_bits: int, rank: int):
    """The 128-byte swizzled shared-memory layout of copy-engine boxes (made once: building
    a layout object costs host time on every launch otherwise)."""
    from triton.experimental.gluon import language as gl

    return gl.NVMMASharedLayout(swizzle_byte_width=128, element_bitwidth=element_bits, rank=rank)


@functools.cache
def _box_descriptor_class() -> type:
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor as BoxDescriptor

    return BoxDescriptor


def _box_descriptor(t: torch.Tensor, rows: int, made: dict | None = None):
    """A copy-engine descriptor over ``t`` ``[batch, seqlen, heads, D]`` seen as
    ``[batch, seqlen, heads · D]``, with boxes of ``rows`` rows of one head (128-byte
    swizzled; rows past the sequence arrive as zeros). ``t`` is one :func:`_gluon_eligible`
    checked. ``made``: descriptors already made for this call, by ``(id(t), rows)`` (the two
    kernels of a backward read the same boxes), taken from and added to."""
    if made is not None:
        desc = made.get((id(t), rows))
        if desc is None:
            desc = made[id(t), rows] = _box_descriptor(t, rows)
        return desc
    batch, seqlen, heads, d = t.shape
    return make_descriptor(
        _box_descriptor_class(), t, [batch, seqlen, heads * d], [t.stride(0), t.stride(1), 1],
        [1, rows, d], layout=_swizzled_layout(16, 3),
    )  # fmt: skip


def _accumulator_descriptor(dq_accum: torch.Tensor, rows: int):
    """A copy-engine descriptor over the fused backward's fp32 dQ accumulator
    ``[batch, rows_padded, heads, D]`` seen as ``[batch · rows_padded, heads · D]``, with
    boxes of ``rows`` rows and half of D (each consumer warpgroup's dQ tile; 128-byte
    swizzled)."""
    batch, padded, heads, d = dq_accum.shape
    return make_descriptor(
        _box_descriptor_class(), dq_accum, [batch * padded, heads * d], [heads * d, 1],
        [rows, d // 2], layout=_swizzled_layout(32, 2),
    )  # fmt: skip


def _gluon_forward_schedule(tiles: int, causal: bool, seqlen_k: int, sms: int) -> tuple[bool, bool]:
    """How the Gluon forward shares its ``tiles`` (query blocks × heads × batch) out over
    the GPU's ``sms`` multiprocessors: ``(pair, persistent)``. ``pair``: under a causal
    mask, each unit of work holds a long and a short query block, so that every unit sees
    about as many keys (only past one tile a multiprocessor: below that, pairing halves
    the programs). ``persistent``: one program a multiprocessor, each taking unit after
    unit and loading the next tile while it finishes the current one; up to 8192 keys,
    where a tile's start and end weigh most (BENCHMARKS.md: D = 128 causal S = 1024, 332
    → 375 TFLOP/s). Past that, one program a unit, which measured 2-5% faster at 16384.
    ``FLASH_ATTN_TRI_GLUON_SCHEDULE`` = ``tiles`` (one tile a program), ``pairs`` (one unit
    a program) or ``persistent`` overrides the rule."""
    switch = os.environ.get("FLASH_ATTN_TRI_GLUON_SCHEDULE", "auto")
    if switch not in ("auto", "tiles", "pairs", "persistent"):
        raise ValueError(
            "FLASH_ATTN_TRI_GLUON_SCHEDULE: expected 'auto', 'tiles', 'pairs' or 'persistent', "
            f"got {switch!r}"
        )
    pair = switch != "tiles" and causal and tiles > sms
    persistent = switch == "persistent" or (switch == "auto" and seqlen_k <= 8192)
    return pair, persistent


class _ForwardPlan(NamedTuple):
    """The Gluon forward of one call signature (:func:`_plan_key`): its bound launch, the
    rows of its Q/O and K/V boxes, whether O goes out through the copy engine, and its
    scalar arguments (sizes, scale and the strides of the outputs ``_forward_impl``
    allocates)."""

    launch: BoundLaunch
    rows_q: int
    rows_k: int
    o_via_tma: bool
    out_shape: tuple[int, ...]
    lse_shape: tuple[int, ...]
    scalars: tuple


def _gluon_forward_plan(q, k, out, lse, qk_scale2: float, causal: bool) -> _ForwardPlan:
    """The plan of a Gluon forward of ``q``, ``k`` into ``out``, ``lse`` (of the shapes and
    strides every call of the signature allocates)."""
    batch, seqlen_q, heads, d = q.shape
    seqlen_k, heads_k = k.shape[1], k.shape[2]
    n_m = cdiv(seqlen_q, _HOPPER_FWD_BLOCK_M)
    sms = num_sms(q.device.index)
    pair, persistent = _gluon_forward_schedule(n_m * heads * batch, causal, seqlen_k, sms)
    fn, constexprs, options = _hopper_fwd_launch(d, causal, pair)
    n_units = (cdiv(n_m, 2) if pair else n_m) * heads * batch
    grid = make_grid(min(n_units, sms) if persistent else n_units)
    scalars = (
        seqlen_q, seqlen_k, heads, heads // heads_k, n_units, qk_scale2, out.stride(0),
        out.stride(1), out.stride(2), lse.stride(0), lse.stride(1),
    )  # fmt: skip
    return _ForwardPlan(
        fast_launcher(fn).bind(grid, **constexprs, **options), constexprs["BLOCK_M"] // 2,
        constexprs["BLOCK_N"], constexprs["O_VIA_TMA"], tuple(out.shape), tuple(lse.shape),
        scalars,
    )  # fmt: skip


def _gluon_forward(q, k, v, out, lse, plan: _ForwardPlan) -> None:
    """Launch the Gluon forward for Hopper into ``out`` and ``lse``
    (:func:`_gluon_forward_plan`)."""
    q_desc = _box_descriptor(q, plan.rows_q)
    # the output's descriptor, where it goes out through the copy engine (else any one)
    o_desc = _box_descriptor(out, plan.rows_q) if plan.o_via_tma else q_desc
    k_desc, v_desc = _box_descriptor(k, plan.rows_k), _box_descriptor(v, plan.rows_k)
    plan.launch(q_desc, k_desc, v_desc, o_desc, out, lse, *plan.scalars)


def _gluon_row_stats(q: torch.Tensor, block_m: int, device=None) -> torch.Tensor:
    """The Gluon backward's row statistics ``[batch, heads, 2, rows]`` fp32 (uninitialised,
    on ``device``, q's by default): lse·log2 e and delta = rowsum(O · dO) of each query
    row, ``rows`` the query length padded to whole blocks of ``block_m`` rows (the writing
    kernel's; the padding holds +inf and 0). The dK/dV kernel reads them with the copy
    engine, beside Q and dO."""
    batch, seqlen_q, heads, _ = q.shape
    rows = cdiv(seqlen_q, block_m) * block_m
    device = q.device if device is None else device
    return torch.empty(batch, heads, 2, rows, device=device, dtype=torch.float32)


@functools.cache
def _plain_layout(element_bits: int, rank: int):
    """The unswizzled shared-memory layout of copy-engine boxes (made once)."""
    from triton.experimental.gluon import language as gl

    return gl.NVMMASharedLayout(swizzle_byte_width=0, element_bitwidth=element_bits, rank=rank)


def _row_stats_descriptor(stats: torch.Tensor, block_m: int):
    """A copy-engine descriptor over the row statistics (:func:`_gluon_row_stats`) seen as
    ``[batch · heads · 2, rows]``, with boxes of both statistics of ``block_m`` rows."""
    batch, heads, _, rows = stats.shape
    return make_descriptor(
        _box_descriptor_class(), stats, [batch * heads * 2, rows], [rows, 1], [2, block_m],
        layout=_plain_layout(32, 2),
    )  # fmt: skip


class _KernelPlan(NamedTuple):
    """One Gluon backward kernel of one call signature: its bound launch, the rows of its
    query-side and key-side boxes, its query block (how the row statistics are padded) and
    its scalar arguments (sizes, scales and the strides of what ``_backward_impl``
    allocates)."""

    launch: BoundLaunch
    rows_q: int
    rows_k: int
    block_m: int
    scalars: tuple


class _BackwardPlan(NamedTuple):
    """The Gluon backward of one call signature (:func:`_plan_key`): ``"split"`` (``first``
    the dQ kernel, ``second`` the dK/dV kernel) or ``"fused"`` (``first`` the kernel that
    writes the row statistics and zeroes the dQ accumulator, ``second`` the dK/dV kernel
    adding dQ into it)."""

    kind: str
    first: _KernelPlan
    second: _KernelPlan


def _gluon_dq_plan(q, k, lse, dq, o: _Opts, causal: bool) -> _KernelPlan:
    """The plan of the Gluon dQ kernel for ``q``, ``k``, ``lse`` and ``dq``."""
    batch, seqlen_q, heads, d = q.shape
    seqlen_k, heads_k = k.shape[1], k.shape[2]
    fn, constexprs, options = _hopper_bwd_launch("dq", d, causal)
    block_m = constexprs["BLOCK_M"]
    grid = make_grid(cdiv(seqlen_q, block_m), heads, batch)
    scalars = (
        seqlen_q, seqlen_k, heads // heads_k, o.qk_scale2, o.sm_scale, dq.stride(0),
        dq.stride(1), dq.stride(2), lse.stride(0), lse.stride(1),
    )  # fmt: skip
    launch = fast_launcher(fn).bind(grid, **constexprs, **options)
    return _KernelPlan(launch, block_m // 2, constexprs["BLOCK_N"], block_m, scalars)


def _gluon_dq(q, k, v, dout, out, lse, dq, plan: _KernelPlan, made: dict | None = None):
    """Launch the Gluon dQ kernel for Hopper into ``dq`` (laid out like ``q``;
    :func:`_gluon_dq_plan`); returns the row statistics it stores for the dK/dV kernel
    (:func:`_gluon_row_stats`). ``made`` as for :func:`_box_descriptor`."""
    stats = _gluon_row_stats(q, plan.block_m)
    rows_q, rows_k = plan.rows_q, plan.rows_k
    plan.launch(
        _box_descriptor(q, rows_q, made), _box_descriptor(k, rows_k, made),
        _box_descriptor(v, rows_k, made), _box_descriptor(dout, rows_q, made),
        _box_descriptor(out, rows_q, made), dq, lse, stats, *plan.scalars,
    )  # fmt: skip
    return stats


def _gluon_dkdv_plan(q, k, dk, o: _Opts, causal: bool, dq_accum=None) -> _KernelPlan:
    """The plan of the Gluon dK/dV kernel for ``q``, ``k`` into ``dk`` (and ``dv``, laid
    out alike); with ``dq_accum`` (:func:`_gluon_dq_accumulator`) the fused kernel."""
    batch, seqlen_q, heads, d = q.shape
    seqlen_k, heads_k = k.shape[1], k.shape[2]
    fused = dq_accum is not None
    fn, constexprs, options = _hopper_bwd_launch("fused" if fused else "dkdv", d, causal)
    acc = dq_accum if fused else dk  # (not read without FUSED_DQ)
    grid = make_grid(cdiv(seqlen_k, constexprs["BLOCK_N"]), heads_k, batch)
    scalars = (
        seqlen_q, seqlen_k, heads // heads_k, o.qk_scale2, o.sm_scale, dk.stride(0),
        dk.stride(1), dk.stride(2), acc.stride(0), acc.stride(1), acc.stride(2),
    )  # fmt: skip
    launch = fast_launcher(fn).bind(grid, **constexprs, **options)
    rows_q = constexprs["BLOCK_M"]
    return _KernelPlan(launch, rows_q, constexprs["BLOCK_N"] // 2, rows_q, scalars)


def _gluon_dkdv(
    q, k, v, dout, stats, dk, dv, plan: _KernelPlan, dq_accum=None, made: dict | None = None
) -> None:
    """Launch the Gluon dK/dV kernel for Hopper into ``dk`` and ``dv`` (laid out like
    ``k``; :func:`_gluon_dkdv_plan`); ``stats``: the row statistics
    (:func:`_gluon_row_stats`, padded to whole query blocks of this kernel). With
    ``dq_accum`` (fp32, laid out like ``q`` with rows padded to whole query blocks,
    zeroed; a plan made with it) the kernel also adds dQ·scale into it, as bulk reductions
    of the copy engine. ``made`` as for :func:`_box_descriptor`."""
    rows_q, rows_k = plan.rows_q, plan.rows_k
    if stats.shape[-1] % rows_q:
        raise ValueError(f"stats: expected rows padded to whole {rows_q}, got {stats.shape}")
    fused = dq_accum is not None
    acc = dq_accum if fused else dk
    # (the fused kernel adds dQ through the copy engine: DQ_VIA_TMA)
    acc_desc = _accumulator_descriptor(dq_accum, rows_q) if fused else None
    plan.launch(
        _box_descriptor(q, rows_q, made), _box_descriptor(k, rows_k, made),
        _box_descriptor(v, rows_k, made), _box_descriptor(dout, rows_q, made),
        _row_stats_descriptor(stats, rows_q), dk, dv, acc, acc_desc, *plan.scalars,
    )  # fmt: skip


def _gluon_dq_accumulator_plan(q, out, dout, lse) -> _KernelPlan:
    """The plan of the kernel that writes the fused backward's row statistics and zeroes its
    dQ accumulator (:func:`_gluon_dq_accumulator`)."""
    batch, seqlen_q, heads, d = q.shape
    block_m = _HOPPER_BWD_TILES[("fused", d)][0]
    # the accumulator and the statistics as the call will have them (only their shapes and
    # strides are read here: no memory)
    dq_accum, stats = _gluon_dq_accumulator_tensors(q, block_m, device="meta")
    grid = make_grid(stats.shape[-1] // block_m, heads, batch)
    scalars = (
        seqlen_q, *_strides3(out, False), *_strides3(dout, False), *_lse_strides(lse, False),
        *_strides3(dq_accum, False),
    )  # fmt: skip
    launch = fast_launcher(_k._bwd_preprocess_kernel).bind(
        grid, HEAD_DIM=d, BLOCK_M=block_m, num_warps=4
    )
    return _KernelPlan(launch, block_m, block_m, block_m, scalars)


def _gluon_dq_accumulator_tensors(
    q, block_m: int, device=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The fused Gluon backward's fp32 dQ accumulator ``[batch, rows, heads, D]`` and row
    statistics (:func:`_gluon_row_stats`), uninitialised on ``device`` (q's by default),
    both with rows padded to whole query blocks of ``block_m`` rows (the dK/dV kernel's:
    no reduction box of one sequence spills into the next)."""
    batch, _, heads, d = q.shape
    stats = _gluon_row_stats(q, block_m, device)
    dq_accum = torch.empty(
        batch, stats.shape[-1], heads, d, device=stats.device, dtype=torch.float32
    )
    return dq_accum, stats


def _gluon_dq_accumulator(
    q, out, dout, lse, plan: _KernelPlan
) -> tuple[torch.Tensor, torch.Tensor]:
    """For the fused Gluon backward: the dQ accumulator, zeroed, and the row statistics
    (:func:`_gluon_dq_accumulator_tensors`); one launch
    (:func:`_gluon_dq_accumulator_plan`)."""
    dq_accum, stats = _gluon_dq_accumulator_tensors(q, plan.block_m)
    plan.launch(out, dout, lse, stats, dq_accum, *plan.scalars)
    return dq_accum, stats


def _gluon_fused_backward(q, k, v, dout, out, lse, dq, dk, dv, plan: _BackwardPlan) -> None:
    """The fused Gluon backward for Hopper: the row statistics and the dQ accumulator, the
    dK/dV kernel adding dQ·scale into it, then dQ in q's dtype."""
    dq_accum, stats = _gluon_dq_accumulator(q, out, dout, lse, plan.first)
    _gluon_dkdv(q, k, v, dout, stats, dk, dv, plan.second, dq_accum)
    dq.copy_(dq_accum[:, : q.shape[1]])


def _gluon_split_backward(q, k, v, dout, out, lse, dq, dk, dv, plan: _BackwardPlan) -> None:
    """The split Gluon backward for Hopper: the dQ kernel (which stores the row
    statistics), then the dK/dV kernel."""
    made = {}  # both kernels take q, k, v and dO in boxes of 64 rows
    stats = _gluon_dq(q, k, v, dout, out, lse, dq, plan.first, made)
    _gluon_dkdv(q, k, v, dout, stats, dk, dv, plan.second, made=made)


def _gluon_backward(q, k, v, dout, out, lse, dq, dk, dv, plan: _BackwardPlan) -> None:
    """The Gluon backward for Hopper of ``plan`` into ``dq``, ``dk`` and ``dv``."""
    run = _gluon_fused_backward if plan.kind == "fused" else _gluon_split_backward
    run(q, k, v, dout, out, lse, dq, dk, dv, plan)


def _gluon_backward_plan(
    kind: str, q, k, dout, out, lse, dq, dk, o: _Opts, causal: bool
) -> _BackwardPlan:
    """The plan of a Gluon backward of ``kind`` (``"split"`` or ``"fused"``) into ``dq``
    and ``dk`` (``dv`` laid out like ``dk``)."""
    if kind == "split":
        return _BackwardPlan(
            kind, _gluon_dq_plan(q, k, lse, dq, o, causal), _gluon_dkdv_plan(q, k, dk, o, causal)
        )
    first = _gluon_dq_accumulator_plan(q, out, dout, lse)
    dq_accum, _ = _gluon_dq_accumulator_tensors(q, first.block_m, device="meta")
    return _BackwardPlan(kind, first, _gluon_dkdv_plan(q, k, dk, o, causal, dq_accum))


# The Gluon backward's tiles per (kernel, D): (BLOCK_M, BLOCK_N, NUM_STAGES). dQ: BLOCK_M
# query rows a program (half for each consumer warpgroup), key blocks of BLOCK_N; dK/dV and
# fused: BLOCK_N keys a program (half each), query blocks of BLOCK_M; NUM_STAGES slots of
# the streamed blocks. Shared memory at D = 128: dQ 160 KiB (Q, dO, O and two K, V slots),
# dK/dV 136 KiB (two Q, dO slots, K, V, and one 8 KiB dSᵀ buffer it leaves unused), fused
# 192 KiB (four dSᵀ buffers and each consumer's 16 KiB fp32 dQ tile).
# At D = 64 the split kernels stream 128-wide blocks (twice the D = 128 tiles' N of the
# score matmuls): 6-16% faster backward than with 64-wide ones at 1024-16384 tokens without
# a mask (H100, bench_dispatch.py, BENCHMARKS.md, session 22); the fused kernel takes
# 128-row query blocks in two slots (6-8% faster than 64-row blocks in three slots from
# 4096 tokens without a mask, session 23; it spills 152 B with LATE_STATS and two dQ
# buffers, offline with triton 3.6).
_HOPPER_BWD_TILES: dict[tuple[str, int], tuple[int, int, int]] = {
    ("dq", 128): (128, 64, 2),
    ("dkdv", 128): (64, 128, 2),
    ("fused", 128): (64, 128, 2),
    ("dq", 64): (128, 128, 2),
    ("dkdv", 64): (128, 128, 2),
    ("fused", 64): (128, 128, 2),
}

# How the dK/dV and fused kernels run a step, by constexpr; the alternatives to these
# defaults are bench_dispatch's "fused-1dq", "fused-late-dk", "split-rounded-p", ...
# (BENCHMARKS.md, sessions 26-28):
# - TWO_DQ_BUFFERS_HEAD_DIMS (fused): the head dims at which dQ tiles are staged for the
#   bulk reductions in two buffers a consumer warpgroup rather than one (DQ_BUFFERS), so a
#   step need not wait for the previous step's reduction to have read its buffer (16 KiB
#   more shared memory at D = 64, 32 KiB at D = 128). At D = 64 the backward measured 2-4%
#   faster with two (H100, session 28, at 2048-16384 tokens without a mask); D = 128 not
#   timed;
# - LATE_DK (fused): dK's matmul issued after dQ's, running while the dQ tile goes out;
# - ROUNDED_P: dSᵀ from Pᵀ as rounded to the input type for dV's matmul rather than from
#   its fp32 registers (which are then free);
# - LATE_STATS_HEAD_DIMS: the head dims at which the block's lse·log2 e is read from
#   shared memory after the wait for S rather than before (not held across the wait; the
#   same gradients bit for bit). At D = 64 the dK/dV kernel's spills go 56-84 → 0 B and
#   the 128-row fused kernel's 352 → 120 B (offline, triton 3.6), and the split backward
#   measured 1-7% faster (H100, session 27); at D = 128 the split one within ±3%, the fused
#   one not timed yet.
_HOPPER_BWD_STEP: dict[str, Any] = {
    "TWO_DQ_BUFFERS_HEAD_DIMS": (64,),
    "LATE_DK": False,
    "ROUNDED_P": False,
    "LATE_STATS_HEAD_DIMS": (64,),
}


def _hopper_bwd_launch(
    kernel: str, head_dim: int, causal: bool
) -> tuple[Any, dict[str, Any], dict[str, int]]:
    """(kernel, constexprs, launch options) of a Gluon backward kernel: ``kernel`` is
    ``"dq"``, ``"dkdv"`` or ``"fused"`` (the dK/dV kernel adding dQ too), with the tiles of
    :data:`_HOPPER_BWD_TILES`."""
    bwd = _hopper_kernels()[1]
    fn = bwd.flash_bwd_dq_hopper_kernel if kernel == "dq" else bwd.flash_bwd_dkdv_hopper_kernel
    block_m, block_n, num_stages = _HOPPER_BWD_TILES[(kernel, head_dim)]
    constexprs = {
        "HEAD_DIM": head_dim,
        "BLOCK_M": block_m,
        "BLOCK_N": block_n,
        "NUM_STAGES": num_stages,
        "CAUSAL": causal,
        "CONSUMER_REGS": 240,
        "PRODUCER_REGS": 24,
    }
    if kernel != "dq":
        constexprs["FUSED_DQ"] = kernel == "fused"
        # dQ tiles go to the accumulator as bulk reductions of the copy engine (from shared
        # memory, 32 KiB more of it) rather than as atomics from registers
        constexprs["DQ_VIA_TMA"] = kernel == "fused"
        fused = kernel == "fused"
        step = _HOPPER_BWD_STEP
        two_dq = fused and head_dim in step["TWO_DQ_BUFFERS_HEAD_DIMS"]
        constexprs["DQ_BUFFERS"] = 2 if two_dq else 1
        constexprs["LATE_DK"] = fused and step["LATE_DK"]
        constexprs["ROUNDED_P"] = step["ROUNDED_P"]
        constexprs["LATE_STATS"] = head_dim in step["LATE_STATS_HEAD_DIMS"]
    # as the forward: 12 warps at 168 registers, setmaxnreg 240 / 240 / 24
    return fn, constexprs, {"num_warps": 4, "maxnreg": 168}


# query rows of a Gluon forward tile: 64 for each of the two consumer warpgroups
_HOPPER_FWD_BLOCK_M = 128
# whether the Gluon forward writes its output through the copy engine (from the tile's
# query buffer) rather than with plain stores from registers (bench_dispatch
# "gluon-o-stores"): 5-13% faster at 1024-2048 tokens (BENCHMARKS.md, session 25)
_HOPPER_FWD_O_VIA_TMA = True


def _hopper_fwd_launch(
    head_dim: int, causal: bool, pair: bool = False
) -> tuple[Any, dict[str, Any], dict[str, int]]:
    """(kernel, constexprs, launch options) of the Gluon forward for Hopper; ``pair``: two
    query blocks a unit of work (:func:`_gluon_forward_schedule`)."""
    constexprs = {
        "HEAD_DIM": head_dim,
        "BLOCK_M": _HOPPER_FWD_BLOCK_M,
        "BLOCK_N": 128,
        # shared memory: two query tiles of each consumer warpgroup and NUM_STAGES K and
        # V tiles (192 KiB at D = 128)
        "NUM_STAGES": 2 if head_dim > 64 else 3,
        "CAUSAL": causal,
        "PINGPONG": True,
        "PAIR": pair,
        "O_VIA_TMA": _HOPPER_FWD_O_VIA_TMA,
        "CONSUMER_REGS": 240,
        "PRODUCER_REGS": 24,
    }
    # 12 warps (two consumer warpgroups and the producer's) at 168 registers a thread fill
    # the register file; setmaxnreg then gives the consumers 240 and the producer 24
    fn = _hopper_kernels()[0].flash_fwd_hopper_kernel
    return fn, constexprs, {"num_warps": 4, "maxnreg": 168}


# ------------------------------------------------------------------------------------------
# plans: what a call signature launches, decided once
# ------------------------------------------------------------------------------------------

# The Gluon forwards' and backwards' plans by call signature (:func:`_plan_key`), None for a
# fixed-length signature they do not take. A repeated call goes straight to its
# allocations, descriptors and launches: no eligibility checks, no dispatch, and bound
# launches that build no launcher key (about a third of the host time of a D = 128 causal
# forward+backward at 1024 tokens, which the host bounds; BENCHMARKS.md). The key holds
# what the decisions read (tensors' shapes, strides, dtypes, devices and 16-byte alignment,
# the options, the environment switches and the module's settings), so a changed setting
# takes a new plan; code that replaces one of the module's functions (tests) clears them.
_PLANS: dict[tuple, Any] = {}
_MAX_PLANS = 4096  # signatures kept before all are dropped (shapes that never repeat)
_UNSEEN = object()


def _plan_key(kind: str, options: tuple, tensors: tuple[torch.Tensor, ...]) -> tuple:
    """The signature of a call for :data:`_PLANS`: ``kind`` ("fwd", "bwd"), its options,
    the switches and settings its dispatch reads, and each tensor's shape, strides, dtype,
    device and 16-byte alignment."""
    env = os.environ
    settings = (
        env.get("FLASH_ATTN_TRI_GLUON"), env.get("FLASH_ATTN_TRI_GLUON_BWD"),
        env.get("FLASH_ATTN_TRI_GLUON_SCHEDULE"), _HOPPER_FWD_O_VIA_TMA, _HOPPER_FWD_BLOCK_M,
        tuple(_HOPPER_BWD_STEP.items()), tuple(_HOPPER_BWD_TILES.items()),
    )  # fmt: skip
    signature = tuple(
        (t.shape, t.stride(), t.dtype, t.device, t.data_ptr() % 16 == 0) for t in tensors
    )
    return kind, options, settings, signature


def _keep_plan(key: tuple, plan: Any) -> None:
    if len(_PLANS) >= _MAX_PLANS:
        _PLANS.clear()
    _PLANS[key] = plan


def _forward_impl(
    q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, softmax_scale,
    window_left, window_right, softcap, alibi_slopes, dropout_p, rng_state,
):  # fmt: skip
    key = plan = None
    # (varlen calls and the head dims the Gluon forward is not for need no key)
    if cu_seqlens_q is None and _gluon_forward_wanted(q.shape[-1]):
        options = (softmax_scale, window_left, window_right, softcap, alibi_slopes is None,
                   dropout_p)  # fmt: skip
        key = _plan_key("fwd", options, (q, k, v))
        plan = _PLANS.get(key, _UNSEEN)
        if plan is not None and plan is not _UNSEEN:
            out = torch.empty(plan.out_shape, dtype=q.dtype, device=q.device)
            lse = torch.empty(plan.lse_shape, dtype=torch.float32, device=q.device)
            _gluon_forward(q, k, v, out, lse, plan)
            return out, lse
    varlen, batch, heads, heads_k, seqlen_q, seqlen_k = _geometry(
        q, k, v, cu_seqlens_q, max_seqlen_q, max_seqlen_k
    )
    d, dv = q.shape[-1], v.shape[-1]
    out = torch.empty((*q.shape[:-1], dv), dtype=q.dtype, device=q.device)
    if varlen:
        lse = torch.empty((heads, q.shape[0]), dtype=torch.float32, device=q.device)
    else:
        lse = torch.empty((batch, heads, seqlen_q), dtype=torch.float32, device=q.device)
    if out.numel() == 0 or batch == 0 or seqlen_q == 0:
        return out, lse
    o = _Opts(d, softmax_scale, window_left, window_right, softcap, dropout_p)
    slopes, s_ab, s_ah, has_alibi = _alibi_args(alibi_slopes, q)
    block_d, block_dv = next_power_of_2(max(d, 16)), next_power_of_2(max(dv, 16))
    has_dropout = dropout_p > 0
    rng = rng_state if has_dropout else q
    cu_q = cu_seqlens_q if varlen else q
    cu_k = cu_seqlens_k if varlen else q
    if plan is _UNSEEN:
        plan = None
        if _gluon_forward_eligible(q, k, v, varlen, o, has_alibi):
            plan = _gluon_forward_plan(q, k, out, lse, o.qk_scale2, causal=o.has_right)
        _keep_plan(key, plan)
    if plan is not None:
        _gluon_forward(q, k, v, out, lse, plan)
        return out, lse
    seqlen = max(seqlen_q, seqlen_k)
    pinned = _pinned_config("fwd", q, d, dv, varlen, o, has_alibi, seqlen)
    kern = _kernel("fwd", max(block_d, block_dv), seqlen, pinned)
    grid = lambda meta: make_grid(cdiv(seqlen_q, meta["BLOCK_M"]), heads, batch)
    # fixed-length inputs go through tensor descriptors (copy-engine loads, zero fill past the
    # ends); varlen sequences would read across their neighbours' rows, so they use pointers
    descs = None
    if not varlen:
        descs = _descriptors(q, k, v, out)
    q_arg, k_arg, v_arg, o_arg = descs if descs is not None else (q, k, v, out)
    fast_launcher(kern)[grid](
        q_arg, k_arg, v_arg, o_arg, lse, cu_q, cu_k, slopes, rng,
        *_strides3(q, varlen), *_strides3(k, varlen), *_strides3(v, varlen),
        *_strides3(out, varlen), *_lse_strides(lse, varlen), s_ab, s_ah,
        seqlen_q, seqlen_k, heads, heads // heads_k,
        o.qk_scale2, o.softcap_in, o.softcap_out2, o.win_left, o.win_right,
        o.dropout_p, o.dropout_scale,
        HEAD_DIM=d, HEAD_DIM_V=dv, BLOCK_D=block_d, BLOCK_DV=block_dv, IS_VARLEN=varlen,
        HAS_LEFT=o.has_left, HAS_RIGHT=o.has_right, IS_SOFTCAP=o.is_softcap,
        HAS_ALIBI=has_alibi, HAS_DROPOUT=has_dropout, IEEE=ieee_dots(q.dtype),
        USE_DESC=descs is not None, SCALE_POSITIVE=softmax_scale > 0,
    )  # fmt: skip
    return out, lse


def _backward_impl(
    dout, q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
    softmax_scale, window_left, window_right, softcap, alibi_slopes, dropout_p, rng_state,
    deterministic,
):  # fmt: skip
    if dout.stride(-1) != 1:
        dout = dout.contiguous()  # read-only: a copy loses nothing
    dq = torch.empty_like(q, memory_format=torch.contiguous_format)
    dk = torch.empty_like(k, memory_format=torch.contiguous_format)
    dv = torch.empty_like(v, memory_format=torch.contiguous_format)
    key = plan = None
    # (varlen calls and the head dims of no Gluon backward need no key)
    if cu_seqlens_q is None and q.shape[-1] in (64, 128):
        options = (softmax_scale, window_left, window_right, softcap, alibi_slopes is None,
                   dropout_p, deterministic)  # fmt: skip
        key = _plan_key("bwd", options, (q, k, v, dout, out, lse))
        plan = _PLANS.get(key, _UNSEEN)
        if plan is not None and plan is not _UNSEEN:
            _gluon_backward(q, k, v, dout, out, lse, dq, dk, dv, plan)
            return dq, dk, dv
    varlen, batch, heads, heads_k, seqlen_q, seqlen_k = _geometry(
        q, k, v, cu_seqlens_q, max_seqlen_q, max_seqlen_k
    )
    d, dv_dim = q.shape[-1], v.shape[-1]
    if batch == 0 or q.numel() == 0 or k.numel() == 0:
        return dq.zero_(), dk.zero_(), dv.zero_()
    if seqlen_k == 0 or seqlen_q == 0:
        return dq.zero_(), dk.zero_(), dv.zero_()
    o = _Opts(d, softmax_scale, window_left, window_right, softcap, dropout_p)
    slopes, s_ab, s_ah, has_alibi = _alibi_args(alibi_slopes, q)
    block_d, block_dv = next_power_of_2(max(d, 16)), next_power_of_2(max(dv_dim, 16))
    has_dropout = dropout_p > 0
    rng = rng_state if has_dropout else q
    cu_q = cu_seqlens_q if varlen else q
    cu_k = cu_seqlens_k if varlen else q
    # (the Gluon kernels first: they need none of the Triton kernels' arguments below)
    if plan is _UNSEEN:
        kind = _gluon_backward_kind(
            q, k, v, dout, out, varlen, o, has_alibi, deterministic, max(seqlen_q, seqlen_k)
        )
        plan = None
        if kind is not None:
            plan = _gluon_backward_plan(kind, q, k, dout, out, lse, dq, dk, o, o.has_right)
        _keep_plan(key, plan)
    if plan is not None:
        _gluon_backward(q, k, v, dout, out, lse, dq, dk, dv, plan)
        return dq, dk, dv
    # rowsum(O · dO) per query row: written by the dQ kernel, read by the dK/dV kernel
    delta = torch.empty_like(lse)
    common = (
        *_lse_strides(lse, varlen), s_ab, s_ah, seqlen_q, seqlen_k, heads, heads // heads_k,
        o.sm_scale, o.qk_scale2, o.softcap_in, o.softcap_out2, o.win_left, o.win_right,
        o.dropout_p, o.dropout_scale,
    )  # fmt: skip
    consts = {
        "HEAD_DIM": d, "HEAD_DIM_V": dv_dim, "BLOCK_D": block_d, "BLOCK_DV": block_dv,
        "IS_VARLEN": varlen, "HAS_LEFT": o.has_left, "HAS_RIGHT": o.has_right,
        "IS_SOFTCAP": o.is_softcap, "HAS_ALIBI": has_alibi, "HAS_DROPOUT": has_dropout,
        "IEEE": ieee_dots(q.dtype),
    }  # fmt: skip
    # fixed-length inputs: the blocks each inner loop streams come through tensor descriptors
    # (up to 128-wide heads: with 256-wide blocks ptxas 12.x from triton 3.6 crashes on them)
    use_desc = not varlen and max(block_d, block_dv) <= 128
    q_side = _descriptors(q, dout) if use_desc else None
    k_side = _descriptors(k, v) if use_desc else None
    # dQ first: it computes delta, which dK/dV needs
    q_grid = lambda meta: make_grid(cdiv(seqlen_q, meta["BLOCK_M"]), heads, batch)
    seqlen = max(seqlen_q, seqlen_k)
    dq_pin = _pinned_config("dq", q, d, dv_dim, varlen, o, has_alibi, seqlen)
    dq_kernel = _kernel("dq", max(block_d, block_dv), seqlen, dq_pin)
    fast_launcher(dq_kernel)[q_grid](
        q, k, v, dout, out, lse, delta, dq, cu_q, cu_k, slopes, rng,
        *(k_side if k_side is not None else (k, v)),
        *_strides3(q, varlen), *_strides3(k, varlen), *_strides3(v, varlen),
        *_strides3(dout, varlen), *_strides3(out, varlen), *_strides3(dq, varlen), *common,
        **consts,
        USE_DESC=k_side is not None,
    )  # fmt: skip
    kv_grid = lambda meta: make_grid(cdiv(seqlen_k, meta["BLOCK_N"]), heads_k, batch)
    dkdv_pin = _pinned_config("dkdv", q, d, dv_dim, varlen, o, has_alibi, seqlen)
    dkdv_kernel = _kernel("dkdv", max(block_d, block_dv), seqlen, dkdv_pin)
    fast_launcher(dkdv_kernel)[kv_grid](
        q, k, v, dout, lse, delta, dk, dv, cu_q, cu_k, slopes, rng,
        *(q_side if q_side is not None else (q, dout)),
        *_strides3(q, varlen), *_strides3(k, varlen), *_strides3(v, varlen),
        *_strides3(dout, varlen), *_strides3(dk, varlen), *_strides3(dv, varlen),
        *common, **consts, USE_DESC=q_side is not None,
    )  # fmt: skip
    return dq, dk, dv


# ------------------------------------------------------------------------------------------
# custom ops
# ------------------------------------------------------------------------------------------


@torch.library.custom_op("flash_attn_tri::fwd", mutates_args=(), device_types=None)
def _fwd_op(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens_q: torch.Tensor | None,
    cu_seqlens_k: torch.Tensor | None,
    max_seqlen_q: int,
    max_seqlen_k: int,
    softmax_scale: float,
    window_left: int,
    window_right: int,
    softcap: float,
    alibi_slopes: torch.Tensor | None,
    dropout_p: float,
    rng_state: torch.Tensor | None,
    deterministic: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    # (``deterministic`` is for the backward: an input here so autograd saves it)
    return _forward_impl(
        q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, softmax_scale,
        window_left, window_right, softcap, alibi_slopes, dropout_p, rng_state,
    )  # fmt: skip


@_fwd_op.register_fake
def _fwd_fake(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, *args):
    out = q.new_empty((*q.shape[:-1], v.shape[-1]))
    if cu_seqlens_q is not None:
        lse = q.new_empty((q.shape[1], q.shape[0]), dtype=torch.float32)
    else:
        lse = q.new_empty((q.shape[0], q.shape[2], q.shape[1]), dtype=torch.float32)
    return out, lse


@torch.library.custom_op("flash_attn_tri::bwd", mutates_args=(), device_types=None)
def _bwd_op(
    dout: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    cu_seqlens_q: torch.Tensor | None,
    cu_seqlens_k: torch.Tensor | None,
    max_seqlen_q: int,
    max_seqlen_k: int,
    softmax_scale: float,
    window_left: int,
    window_right: int,
    softcap: float,
    alibi_slopes: torch.Tensor | None,
    dropout_p: float,
    rng_state: torch.Tensor | None,
    deterministic: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _backward_impl(
        dout, q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
        softmax_scale, window_left, window_right, softcap, alibi_slopes, dropout_p, rng_state,
        deterministic,
    )  # fmt: skip


@_bwd_op.register_fake
def _bwd_fake(dout, q, k, v, *args):
    return (
        torch.empty_like(q, memory_format=torch.contiguous_format),
        torch.empty_like(k, memory_format=torch.contiguous_format),
        torch.empty_like(v, memory_format=torch.contiguous_format),
    )


def _setup_context(ctx, inputs, output):
    (q, k, v, cu_q, cu_k, max_q, max_k, scale, left, right, softcap, slopes, p, rng,
     deterministic) = inputs  # fmt: skip
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, cu_q, cu_k, slopes, rng)
    ctx.args = (max_q, max_k, scale, left, right, softcap, p, deterministic)


def _input_grads(ctx, dout, backward_fn):
    """The gradients of the forward's 15 inputs from what ``_setup_context`` saved, through
    ``backward_fn`` (the custom op or the implementation behind it)."""
    q, k, v, out, lse, cu_q, cu_k, slopes, rng = ctx.saved_tensors
    max_q, max_k, scale, left, right, softcap, p, deterministic = ctx.args
    dq, dk, dv = backward_fn(
        dout, q, k, v, out, lse, cu_q, cu_k, max_q, max_k, scale, left, right, softcap,
        slopes, p, rng, deterministic,
    )  # fmt: skip
    return (dq, dk, dv) + (None,) * 12


def _backward(ctx, dout, dlse):
    # dlse is ignored: like flash_attn, the log-sum-exp output carries no gradient
    return _input_grads(ctx, dout, _bwd_op)


_fwd_op.register_autograd(_backward, setup_context=_setup_context)


class _EagerAttention(torch.autograd.Function):
    """The same forward and backward as the custom ops, for eager calls. The custom-op layer
    costs about 0.5 ms of host time per forward+backward (torch 2.11, measured on the H200
    machine), more than the kernels themselves take at 1024-token causal shapes;
    torch.compile still traces the custom ops (see ``_run``)."""

    @staticmethod
    def forward(ctx, q, k, v, cu_q, cu_k, max_q, max_k, scale, left, right, softcap, slopes, p,
                rng, deterministic):  # fmt: skip
        out, lse = _forward_impl(
            q, k, v, cu_q, cu_k, max_q, max_k, scale, left, right, softcap, slopes, p, rng
        )
        ctx.mark_non_differentiable(lse)
        _setup_context(ctx, (q, k, v, cu_q, cu_k, max_q, max_k, scale, left, right, softcap,
                             slopes, p, rng, deterministic), (out, lse))  # fmt: skip
        return out, lse

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dout, dlse):
        return _input_grads(ctx, dout, _backward_impl)


# ------------------------------------------------------------------------------------------
# checks and public entry points
# ------------------------------------------------------------------------------------------


def _draw_rng_state(device: torch.device) -> torch.Tensor:
    """Seed and salt (int64 ``[2]``) for the dropout stream, drawn on ``device`` from torch's
    generator: no host sync, and CUDA graph replays draw fresh values."""
    return torch.randint(0, 2**31 - 1, (2,), device=device, dtype=torch.int64)


def _check_common(
    q, k, v, dropout_p, softmax_scale, window_size, softcap, alibi_slopes, batch, heads
):
    for name, t in (("q", q), ("k", k), ("v", v)):
        check_tensor(name, t, dtypes=FLOAT_DTYPES)
    check_same_dtype(q=q, k=k, v=v)
    check_same_device(q=q, k=k, v=v)
    if not is_interpreter() and q.device.type != "cuda":
        # compiled Triton kernels only run on the GPU; the interpreter runs on CPU tensors
        raise ValueError(f"q: expected a CUDA tensor, got one on {q.device}")
    d = q.shape[-1]
    if k.shape[-1] != d:
        raise ValueError(f"k: expected head dim {d} (the head dim of q), got {k.shape[-1]}")
    for name, dim in (("q", d), ("v", v.shape[-1])):
        if not 1 <= dim <= MAX_HEAD_DIM:
            raise ValueError(f"{name}: expected a head dim between 1 and {MAX_HEAD_DIM}, got {dim}")
    heads_k = k.shape[-2]
    if v.shape[-2] != heads_k:
        raise ValueError(f"v: expected {heads_k} heads (the heads of k), got {v.shape[-2]}")
    check_multiple("q", heads, "the number of key heads", heads_k)
    if isinstance(dropout_p, bool) or not isinstance(dropout_p, (int, float)):
        raise TypeError(f"dropout_p: expected a float, got {type(dropout_p).__name__}")
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"dropout_p: expected a value in [0, 1), got {dropout_p}")
    if softmax_scale is not None and not isinstance(softmax_scale, (int, float)):
        raise TypeError(f"softmax_scale: expected a float, got {type(softmax_scale).__name__}")
    if not isinstance(window_size, (tuple, list)) or len(window_size) != 2:
        raise ValueError(f"window_size: expected a pair (left, right), got {window_size!r}")
    for w in window_size:
        if isinstance(w, bool) or not isinstance(w, int):
            raise TypeError(f"window_size: expected ints, got {window_size!r}")
        if w < -1:
            raise ValueError(f"window_size: expected values >= -1, got {tuple(window_size)}")
    if isinstance(softcap, bool) or not isinstance(softcap, (int, float)) or softcap < 0:
        raise ValueError(f"softcap: expected a number >= 0, got {softcap!r}")
    if alibi_slopes is not None:
        check_tensor("alibi_slopes", alibi_slopes, dtypes=(torch.float32,))
        check_same_device(q=q, alibi_slopes=alibi_slopes)
        if tuple(alibi_slopes.shape) not in ((heads,), (batch, heads)):
            raise ValueError(
                f"alibi_slopes: expected shape [{heads}] or [{batch}, {heads}], "
                f"got {list(alibi_slopes.shape)}"
            )
    return d


def _last_dim_contiguous(t: torch.Tensor) -> torch.Tensor:
    # inputs are only read: copying a strided one loses nothing
    return t if t.stride(-1) == 1 else t.contiguous()


def _window(causal: bool, window_size) -> tuple[int, int]:
    left, right = int(window_size[0]), int(window_size[1])
    if causal:
        right = 0
    return left, right


def _run(q, k, v, cu_q, cu_k, max_q, max_k, dropout_p, softmax_scale, causal, window_size,
         softcap, alibi_slopes, deterministic, return_attn_probs):  # fmt: skip
    d = q.shape[-1]
    scale = float(softmax_scale) if softmax_scale is not None else 1.0 / math.sqrt(d)
    left, right = _window(causal, window_size)
    rng = _draw_rng_state(q.device) if dropout_p > 0 else None
    q, k, v = (_last_dim_contiguous(t) for t in (q, k, v))
    # under torch.compile the custom ops (traced, no graph break); in eager mode the direct
    # autograd.Function, without the custom-op layer's host overhead
    attention = _fwd_op if torch.compiler.is_compiling() else _EagerAttention.apply
    out, lse = attention(
        q, k, v, cu_q, cu_k, int(max_q), int(max_k), scale, left, right, float(softcap),
        alibi_slopes, float(dropout_p), rng, bool(deterministic),
    )  # fmt: skip
    if return_attn_probs:
        return out, lse, None
    return out


def flash_attn_func(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    dropout_p: float = 0.0,
    softmax_scale: float | None = None,
    causal: bool = False,
    window_size: tuple[int, int] = (-1, -1),
    softcap: float = 0.0,
    alibi_slopes: torch.Tensor | None = None,
    deterministic: bool = False,
    return_attn_probs: bool = False,
):
    """Exact attention, FlashAttention-2 algorithm; drop-in for ``flash_attn.flash_attn_func``.

    ``q`` ``[batch, seqlen_q, heads, d]``, ``k`` ``[batch, seqlen_k, heads_k, d]``, ``v``
    ``[batch, seqlen_k, heads_k, dv]`` (fp16, bf16 or fp32, one dtype; ``heads`` a multiple of
    ``heads_k``; ``d``, ``dv`` ≤ 256). Causal masking and the window ``(left, right)`` are
    aligned to the bottom-right; ``softcap`` > 0 caps logits with ``softcap·tanh(·/softcap)``;
    ``alibi_slopes`` fp32 ``[heads]`` or ``[batch, heads]``. Returns ``out``
    ``[batch, seqlen_q, heads, dv]``, or ``(out, softmax_lse [batch, heads, seqlen_q] fp32,
    None)`` with ``return_attn_probs``. ``deterministic=True`` makes the gradients bitwise
    identical run to run: only the fused backward for Hopper (by default at D = 128 without a
    mask) sums dQ in an order that varies, and it steps aside for the atomic-free kernels
    then.
    """
    check_tensor("q", q, ndim=4)
    check_tensor("k", k, ndim=4)
    check_tensor("v", v, ndim=4)
    batch, seqlen_q, heads = q.shape[0], q.shape[1], q.shape[2]
    _check_common(
        q, k, v, dropout_p, softmax_scale, window_size, softcap, alibi_slopes, batch, heads
    )
    if k.shape[0] != batch or v.shape[0] != batch:
        raise ValueError(
            f"k: expected batch {batch} (the batch of q), got k {k.shape[0]}, v {v.shape[0]}"
        )
    if v.shape[1] != k.shape[1]:
        raise ValueError(f"v: expected seqlen {k.shape[1]} (the seqlen of k), got {v.shape[1]}")
    return _run(q, k, v, None, None, seqlen_q, k.shape[1], dropout_p, softmax_scale, causal,
                window_size, softcap, alibi_slopes, deterministic,
                return_attn_probs)  # fmt: skip


def flash_attn_varlen_func(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor,
    max_seqlen_q: int,
    max_seqlen_k: int,
    dropout_p: float = 0.0,
    softmax_scale: float | None = None,
    causal: bool = False,
    window_size: tuple[int, int] = (-1, -1),
    softcap: float = 0.0,
    alibi_slopes: torch.Tensor | None = None,
    deterministic: bool = False,
    return_attn_probs: bool = False,
):
    """:func:`flash_attn_func` over packed sequences; drop-in for
    ``flash_attn.flash_attn_varlen_func``.

    ``q`` ``[total_q, heads, d]``, ``k``/``v`` ``[total_k, heads_k, d / dv]``; int32
    ``cu_seqlens_q``/``cu_seqlens_k`` ``[batch + 1]`` (start offsets, last = total);
    ``max_seqlen_q``/``max_seqlen_k`` at least the longest sequence (not checked: that would
    sync). Returns ``out [total_q, heads, dv]`` or ``(out, softmax_lse [heads, total_q], None)``.
    """
    check_tensor("q", q, ndim=3)
    check_tensor("k", k, ndim=3)
    check_tensor("v", v, ndim=3)
    check_tensor("cu_seqlens_q", cu_seqlens_q, ndim=1, dtypes=(torch.int32,))
    check_tensor("cu_seqlens_k", cu_seqlens_k, ndim=1, dtypes=(torch.int32,))
    check_same_device(q=q, cu_seqlens_q=cu_seqlens_q, cu_seqlens_k=cu_seqlens_k)
    batch = cu_seqlens_q.shape[0] - 1
    if batch < 0:
        raise ValueError("cu_seqlens_q: expected at least one entry (batch + 1), got 0")
    if cu_seqlens_k.shape[0] != batch + 1:
        raise ValueError(
            f"cu_seqlens_k: expected length {batch + 1} (the length of cu_seqlens_q), "
            f"got {cu_seqlens_k.shape[0]}"
        )
    for name, val in (("max_seqlen_q", max_seqlen_q), ("max_seqlen_k", max_seqlen_k)):
        if isinstance(val, bool) or not isinstance(val, int) or val < 0:
            raise ValueError(f"{name}: expected an int >= 0, got {val!r}")
    heads = q.shape[1]
    _check_common(
        q, k, v, dropout_p, softmax_scale, window_size, softcap, alibi_slopes, batch, heads
    )
    if v.shape[0] != k.shape[0]:
        raise ValueError(f"v: expected {k.shape[0]} tokens (the tokens of k), got {v.shape[0]}")
    cu_q = cu_seqlens_q if cu_seqlens_q.is_contiguous() else cu_seqlens_q.contiguous()
    cu_k = cu_seqlens_k if cu_seqlens_k.is_contiguous() else cu_seqlens_k.contiguous()
    return _run(q, k, v, cu_q, cu_k, max_seqlen_q, max_seqlen_k, dropout_p, softmax_scale,
                causal, window_size, softcap, alibi_slopes, deterministic,
                return_attn_probs)  # fmt: skip


def flash_attn_qkvpacked_func(
    qkv: torch.Tensor,
    dropout_p: float = 0.0,
    softmax_scale: float | None = None,
    causal: bool = False,
    window_size: tuple[int, int] = (-1, -1),
    softcap: float = 0.0,
    alibi_slopes: torch.Tensor | None = None,
    deterministic: bool = False,
    return_attn_probs: bool = False,
):
    """:func:`flash_attn_func` with ``qkv`` ``[batch, seqlen, 3, heads, d]`` (views, no copy)."""
    check_tensor("qkv", qkv, ndim=5)
    if qkv.shape[2] != 3:
        raise ValueError(f"qkv: expected size 3 in dimension 2, got {list(qkv.shape)}")
    return flash_attn_func(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2], dropout_p, softmax_scale,
                           causal, window_size, softcap, alibi_slopes, deterministic,
                           return_attn_probs)  # fmt: skip


def flash_attn_kvpacked_func(
    q: torch.Tensor,
    kv: torch.Tensor,
    dropout_p: float = 0.0,
    softmax_scale: float | None = None,
    causal: bool = False,
    window_size: tuple[int, int] = (-1, -1),
    softcap: float = 0.0,
    alibi_slopes: torch.Tensor | None = None,
    deterministic: bool = False,
    return_attn_probs: bool = False,
):
    """:func:`flash_attn_func` with ``kv`` ``[batch, seqlen_k, 2, heads_k, d]`` (views)."""
    check_tensor("kv", kv, ndim=5)
    if kv.shape[2] != 2:
        raise ValueError(f"kv: expected size 2 in dimension 2, got {list(kv.shape)}")
    return flash_attn_func(q, kv[:, :, 0], kv[:, :, 1], dropout_p, softmax_scale, causal,
                           window_size, softcap, alibi_slopes, deterministic,
                           return_attn_probs)  # fmt: skip


def _dropout_mask(
    rng_state: torch.Tensor,
    batch: int,
    heads: int,
    max_seqlen_q: int,
    max_seqlen_k: int,
    dropout_p: float,
) -> torch.Tensor:
    """Internal, for tests: the keep mask (bool ``[batch, heads, max_seqlen_q, max_seqlen_k]``)
    the kernels draw for ``rng_state`` (see :func:`_draw_rng_state`). Sequence ``b`` of a varlen
    call uses the top-left ``[seqlen_q_b, seqlen_k_b]`` corner of ``mask[b]``."""
    keep = torch.empty(
        (batch, heads, max_seqlen_q, max_seqlen_k), dtype=torch.int8, device=rng_state.device
    )
    if keep.numel() == 0:
        return keep.bool()
    bm, bn = 32, 64
    _k._dropout_mask_kernel[make_grid(cdiv(max_seqlen_q, bm), heads, batch)](
        keep, rng_state, heads, max_seqlen_q, max_seqlen_k, float(dropout_p), BLOCK_M=bm, BLOCK_N=bn
    )
    return keep.bool()
