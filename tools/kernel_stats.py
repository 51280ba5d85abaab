"""Compile a Triton kernel for Hopper (sm_90a) on any machine, no GPU needed, and report what
the hardware will run: registers, spills, shared memory, and the instruction mix of each loop
in the SASS.

    uv run python tools/kernel_stats.py [recipe ...] [--json]   (recipes: see RECIPES)

Read it before and after a kernel change: per-gathered-row 64-bit address arithmetic,
spills, or barriers inside the loops show up here without spending GPU time (the indexer
loss's 32-bit key offsets were found this way). Timings still come from a GPU run.
The compiler is the Triton of the environment (the workspace's may be newer than the GPU
machine's, and the counts differ between versions): compare counts from one version only.
``tests_integration/test_kernel_stats.py`` runs the recipes and checks what they report.
New recipes: a function that builds the signature and constexprs of one launch and calls
:func:`compile_sm90`.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

_BIN = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"


@dataclass
class KernelStats:
    """What ptxas and the SASS of one compiled kernel say. ``spill_bytes``: the spill stores
    plus spill loads that ``ptxas -v`` reports (0 when everything stays in registers)."""

    registers: int
    spill_bytes: int
    shared_bytes: int
    ptx: str
    sass: str
    loops: list[collections.Counter] = field(default_factory=list)
    # per loop: MUFU instructions issued while a wgmma is in flight (between an HGMMA and
    # the WARPGROUP.DEPBAR that waits for it): exponentials overlapping the tensor cores
    mufu_under_wgmma: list[int] = field(default_factory=list)
    # per loop: wgmma instructions that take their left operand from registers (the others
    # read both operands from shared memory)
    wgmma_a_in_registers: list[int] = field(default_factory=list)
    # per loop: no other loop lies inside it (a warp-specialised kernel's dispatch also shows
    # up as loops that span the partitions' own loops)
    innermost: list[bool] = field(default_factory=list)
    # the register counts a warp-specialised kernel's partitions set (setmaxnreg), in order
    setmaxnreg: list[int] = field(default_factory=list)
    # why ptxas serialises the kernel's wgmma (each one waited for before the next issues),
    # as its "Potential Performance Loss" notes say (C7510-C7515); empty when it does not
    wgmma_serialized: list[str] = field(default_factory=list)

    def ptx_count(self, opcode: str) -> int:
        """Occurrences of a PTX opcode (e.g. ``mul.lo.s64``) in the whole kernel."""
        return len(re.findall(rf"^\s*{re.escape(opcode)}\b", self.ptx, flags=re.MULTILINE))

    def opcodes(self) -> collections.Counter:
        """SASS opcode counts over the whole kernel, loops or not (``UTMASTG``, ``STG``:
        the opcode without its modifiers, predicates dropped)."""
        pattern = r"^\s+/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_]*)"
        return collections.Counter(re.findall(pattern, self.sass, re.MULTILINE))


def compile_sm90(
    fn,
    signature: dict[str, str],
    constexprs: dict[str, object],
    *,
    divisible: Iterable[str] = (),
    num_warps: int = 4,
    num_stages: int = 3,
    maxnreg: int | None = None,
) -> KernelStats:
    """Compile ``fn`` for sm_90a. ``signature`` maps every argument to a Triton type
    (``"*bf16"``, ``"i32"``, ``"fp32"``, ``"constexpr"``); ``constexprs`` gives the constexpr
    values; ``divisible`` names the arguments the launcher would mark divisible by 16
    (pointers and strides that are), which changes vectorisation and pipelining. Gluon
    kernels (``triton.experimental.gluon.jit``) compile the same way."""
    names = list(fn.arg_names)
    missing = [n for n in names if n not in signature]
    if missing:
        raise ValueError(f"signature: no type for {missing}")
    unknown = [n for n in divisible if n not in names]
    if unknown:
        raise ValueError(f"divisible: expected argument names of {fn.__name__}, got {unknown}")
    attrs = {(names.index(n),): [["tt.divisibility", 16]] for n in divisible}
    if type(fn).__module__.startswith("triton.experimental.gluon"):
        from triton.experimental.gluon._runtime import GluonASTSource

        src = GluonASTSource(fn, signature, constexprs=constexprs, attrs=attrs)
    else:
        src = ASTSource(fn, signature, constexprs=constexprs, attrs=attrs)
    kernel = triton.compile(
        src,
        target=GPUTarget("cuda", 90, 32),
        options={"num_warps": num_warps, "num_stages": num_stages, "maxnreg": maxnreg},
    )
    ptx = kernel.asm["ptx"]
    with tempfile.TemporaryDirectory() as tmp:
        ptx_path, cubin_path = Path(tmp) / "k.ptx", Path(tmp) / "k.cubin"
        ptx_path.write_text(ptx)
        cubin_path.write_bytes(kernel.asm["cubin"])
        ptxas = _run("ptxas", "-arch=sm_90a", "-v", str(ptx_path), "-o", "/dev/null").stderr
        sass = _run("nvdisasm", "-c", str(cubin_path)).stdout
    loops = _loop_mix(sass)
    regs = re.search(r"Used (\d+) registers", ptxas)
    spills = [int(x) for x in re.findall(r"(\d+) bytes spill (?:stores|loads)", ptxas)]
    return KernelStats(
        registers=int(regs.group(1)) if regs else -1,
        spill_bytes=sum(spills),
        shared_bytes=int(kernel.metadata.shared),
        ptx=ptx,
        sass=sass,
        loops=[mix for mix, _, _, _ in loops],
        mufu_under_wgmma=[overlap for _, overlap, _, _ in loops],
        innermost=[inner for _, _, inner, _ in loops],
        wgmma_a_in_registers=[rs for _, _, _, rs in loops],
        setmaxnreg=[
            int(n, 16) for n in re.findall(r"USETMAXREG\.\S+ (?:U?P\w+, )?0x([0-9a-f]+)", sass)
        ],
        wgmma_serialized=re.findall(
            r"wgmma\.mma_async instructions are serialized (due to .*?) (?:for|in) the function",
            ptxas,
        ),
    )


def _run(tool: str, *args: str) -> subprocess.CompletedProcess:
    """One of the CUDA tools that ship with Triton; ptxas is the one Triton itself uses for
    sm_90 (a wheel can carry several, and an older one rejects newer PTX)."""
    path = _BIN / tool
    if tool == "ptxas":
        try:
            from triton.backends.nvidia.compiler import get_ptxas

            path = Path(get_ptxas(90).path)
        except (ImportError, AttributeError, TypeError):
            pass
    return subprocess.run([str(path), *args], capture_output=True, text=True, check=True)


def _loop_mix(sass: str) -> list[tuple[collections.Counter, int, bool, int]]:
    """Opcode counts of each loop body (the instructions between a label and a later branch
    back to it), with the number of MUFU instructions issued while a wgmma is in flight,
    whether the loop is innermost (no other loop's body lies inside its own) and the number
    of wgmma instructions with the left operand in registers (``HGMMA... Rd, Ra, gdesc``)."""
    code: list[tuple[int, str]] = []
    label_at: dict[str, int] = {}
    pending: list[str] = []
    for line in sass.splitlines():
        label = re.match(r"\s*(\.L_x_\d+):", line)
        if label:
            pending.append(label.group(1))
            continue
        ins = re.match(r"\s+/\*([0-9a-f]{4,})\*/\s+(.*?);", line)
        if ins:
            addr = int(ins.group(1), 16)
            for name in pending:
                label_at[name] = addr
            pending = []
            code.append((addr, ins.group(2)))
    loops = []
    spans = [
        (label_at[m.group(1)], addr)
        for addr, text in code
        if (m := re.search(r"BRA\b.*?(\.L_x_\d+)", text))
        and label_at.get(m.group(1), addr + 1) < addr
    ]
    for start, end in spans:
        body = [t for a, t in code if start <= a <= end]
        ops = [re.sub(r"^@!?U?P\w+\s+", "", t).split()[0] for t in body]
        # wgmma groups in flight: HGMMAs issue one group, the one marked ``gsb0`` closes
        # it, and ``WARPGROUP.DEPBAR.LE gsb0, N`` waits until at most N groups remain
        groups, open_group, overlap = 0, False, 0
        for op, text in zip(ops, body, strict=True):
            if op.startswith("HGMMA"):
                open_group = "gsb0" not in text
                groups += not open_group
            elif op.startswith("WARPGROUP.DEPBAR"):
                left = re.search(r"gsb0,\s*0x([0-9a-f]+)", text)
                groups = min(groups, int(left.group(1), 16) if left else 0)
            elif op.startswith("MUFU") and (groups or open_group):
                overlap += 1
        inner = not any(start <= a and b <= end and (a, b) != (start, end) for a, b in spans)
        in_registers = sum(bool(re.search(r"HGMMA\S*\s+R\d+,\s*R\d+,", t)) for t in body)
        mix = collections.Counter(op.split(".")[0] for op in ops)
        loops.append((mix, overlap, inner, in_registers))
    return loops


def _indexer_launch(fn, constexprs: dict[str, object]) -> tuple[dict[str, str], list[str]]:
    """Signature and divisible arguments of a sparse indexer-loss forward (Triton or Gluon)
    launched on bf16 query/key/index_score, int32 indices and contiguous tensors; the unit
    strides become constexprs (added to ``constexprs``), as the launcher specialises them."""
    signature = {}
    for name in fn.arg_names:
        if name in ("q_ptr", "k_ptr", "x_ptr"):
            signature[name] = "*bf16"
        elif name in ("idx_ptr", "nvalid_ptr"):
            signature[name] = "*i32"
        elif name.endswith("_ptr"):
            signature[name] = "*fp32"
        elif name in ("qk_scale", "eps"):
            signature[name] = "fp32"
        elif name in ("stride_qd", "stride_kd", "stride_xk", "stride_ik"):
            signature[name], constexprs[name] = "constexpr", 1
        elif name in constexprs:
            signature[name] = "constexpr"
        else:
            signature[name] = "i32"
    divisible = [n for n in fn.arg_names if n.endswith("_ptr")] + [
        n for n in (
            "stride_qb", "stride_qh", "stride_qs", "stride_kb", "stride_kl", "stride_xb",
            "stride_xs", "stride_ib", "stride_is", "S", "L", "TOPK",
        ) if n in fn.arg_names
    ]  # fmt: skip
    return signature, divisible


def sparse_indexer_forward(compute_loss: bool = True, wide_keys: bool = False) -> KernelStats:
    """The sparse indexer-loss forward as launched at H = 64, D = 128, topk = 2048 (bf16)."""
    from indexer_loss.kernels.sparse import sparse_indexer_fwd_kernel as fn

    constexprs: dict[str, object] = {
        "HEAD_DIM": 128, "BLOCK_H": 64, "BLOCK_D": 128, "ONE_HEAD_BLOCK": True, "IEEE": False,
        "STORE_P": not compute_loss, "STORE_DIFF": compute_loss, "COMPUTE_LOSS": compute_loss,
        "BLOCK_K": 128, "BLOCK_X": 2048, "KT1": False, "KT2": True, "WIDE_KEYS": wide_keys,
    }  # fmt: skip
    signature, divisible = _indexer_launch(fn, constexprs)
    return compile_sm90(fn, signature, constexprs, divisible=divisible, num_stages=2)


def sparse_indexer_forward_hopper(
    compute_loss: bool = True, wide_keys: bool = False
) -> KernelStats:
    """The Gluon (sm_90) sparse indexer target kernel as launched at H = 64, D = 128,
    topk = 2048 (bf16), with the launch options of ``indexer_loss.sparse``; with
    ``compute_loss`` it marks invalid entries for the loss kernel that follows."""
    from indexer_loss.sparse import _hopper_launch

    fn, constexprs, options = _hopper_launch(64, 128, 2048, wide_keys=wide_keys)
    constexprs.update(MARK_INVALID=compute_loss)
    signature, divisible = _indexer_launch(fn, constexprs)
    return compile_sm90(fn, signature, constexprs, divisible=divisible, **options)


def flash_attention(kernel: str, head_dim: int) -> KernelStats:
    """One flash-attn-tri kernel (``"fwd"``, ``"dkdv"`` or ``"dq"``) as the bench launches it:
    bf16, fixed length through tensor descriptors, causal, its default launch config (the
    first candidate)."""
    from flash_attn_tri import attention
    from flash_attn_tri.kernels import attention as kernels

    fn = {
        "fwd": kernels._fwd_kernel,
        "dkdv": kernels._bwd_dkdv_kernel,
        "dq": kernels._bwd_dq_kernel,
    }[kernel]
    block_m, block_n, warps, stages = getattr(attention, f"_{kernel}_candidates")(head_dim)[0]
    # descriptor arguments and the rows of their boxes (columns are the head dim)
    boxes = {
        "fwd": {"Q": block_m, "Out": block_m, "K": block_n, "V": block_n},
        "dkdv": {"Q_DESC": block_m, "DO_DESC": block_m},
        "dq": {"K_DESC": block_n, "V_DESC": block_n},
    }[kernel]
    constexprs: dict[str, object] = {}
    constexprs.update(
        HEAD_DIM=head_dim, HEAD_DIM_V=head_dim, BLOCK_D=head_dim, BLOCK_DV=head_dim,
        BLOCK_M=block_m, BLOCK_N=block_n, IS_VARLEN=False, HAS_LEFT=False, HAS_RIGHT=True,
        IS_SOFTCAP=False, HAS_ALIBI=False, HAS_DROPOUT=False, IEEE=False, USE_DESC=True,
        SCALE_POSITIVE=True,
    )  # fmt: skip
    constexprs = {n: v for n, v in constexprs.items() if n in fn.arg_names}
    floats = ("sm_scale", "qk_scale2", "softcap_in", "softcap_out2", "dropout_p", "dropout_scale")
    signature = {}
    for name in fn.arg_names:
        if name in constexprs:
            signature[name] = "constexpr"
        elif name in boxes:
            signature[name] = f"tensordesc<bf16[1, {boxes[name]}, 1, {head_dim}]>"
        elif name in ("LSE", "DELTA"):
            signature[name] = "*fp32"
        elif name in ("CU_Q", "CU_K"):
            signature[name] = "*i32"
        elif name == "RNG":
            signature[name] = "*i64"
        elif name in floats:
            signature[name] = "fp32"
        elif name.startswith(("stride_", "seqlen_", "win_")) or name in ("n_heads", "group"):
            signature[name] = "i32"
        else:  # the other tensors: inputs, outputs, gradients, ALiBi slopes
            signature[name] = "*bf16"
    divisible = [n for n, t in signature.items() if t.startswith("*")]
    return compile_sm90(
        fn, signature, constexprs, divisible=divisible, num_warps=warps, num_stages=stages
    )


def _compile_gluon_attention(launch, head_dim: int, rows: dict[str, int]) -> KernelStats:
    """Compile a Gluon attention kernel of ``flash_attn_tri`` from its ``(kernel, constexprs,
    options)`` as the package would launch it: bf16, fixed length, descriptors named in
    ``rows`` with boxes of that many rows (128-byte swizzled), fp32 ``lse_ptr`` and
    ``stats_ptr``, boxes of both row statistics of BLOCK_M rows (unswizzled), fp32 scales,
    i32 sizes and strides; pointers and strides marked divisible by 16 but ``stride_lh``
    (heads · seqlen_q fp32 elements in general)."""
    from triton.experimental.gluon import language as gl

    fn, constexprs, options = launch
    layout = gl.NVMMASharedLayout(swizzle_byte_width=128, element_bitwidth=16, rank=3)
    layout32 = gl.NVMMASharedLayout(swizzle_byte_width=128, element_bitwidth=32, rank=2)
    constexprs = dict(constexprs)
    signature = {}
    for name in fn.arg_names:
        if name == "dq_desc" and constexprs.get("FUSED_DQ") and constexprs.get("DQ_VIA_TMA"):
            # the fused backward's fp32 dQ accumulator: a box of each warpgroup's dQ tile
            box = f"{constexprs['BLOCK_M']}, {head_dim // 2}"
            signature[name] = f"tensordesc<fp32[{box}],{layout32!r}>"
        elif name == "dq_desc":
            constexprs[name] = None
            signature[name] = "constexpr"
        elif name in constexprs:
            signature[name] = "constexpr"
        elif name in rows:
            signature[name] = f"tensordesc<bf16[1, {rows[name]}, {head_dim}],{layout!r}>"
        elif name == "stats_desc":  # the row statistics: both of a query block
            plain = gl.NVMMASharedLayout(swizzle_byte_width=0, element_bitwidth=32, rank=2)
            signature[name] = f"tensordesc<fp32[2, {constexprs['BLOCK_M']}],{plain!r}>"
        elif name in ("lse_ptr", "stats_ptr") or (name == "dq_ptr" and constexprs.get("FUSED_DQ")):
            signature[name] = "*fp32"
        elif name.endswith("_ptr"):
            signature[name] = "*bf16"
        elif name in ("qk_scale2", "sm_scale"):
            signature[name] = "fp32"
        else:
            signature[name] = "i32"
    divisible = [n for n in fn.arg_names if n.endswith("_ptr") or n.startswith("stride_")]
    if "stride_lh" in divisible:
        divisible.remove("stride_lh")
    return compile_sm90(fn, signature, constexprs, divisible=divisible, **options)


def flash_attention_hopper(
    head_dim: int, causal: bool = True, o_via_tma: bool | None = None
) -> KernelStats:
    """The Gluon (sm_90) attention forward as ``flash_attn_tri`` would launch it (under a
    causal mask, on units of two query blocks); ``o_via_tma``: the output path in place of
    the default (``attention._HOPPER_FWD_O_VIA_TMA``)."""
    from flash_attn_tri import attention

    launch = attention._hopper_fwd_launch(head_dim, causal, pair=causal)
    if o_via_tma is not None:
        launch = (launch[0], {**launch[1], "O_VIA_TMA": o_via_tma}, launch[2])
    constexprs = launch[1]
    # half the rows for each consumer warpgroup
    rows = {"q_desc": constexprs["BLOCK_M"] // 2, "o_desc": constexprs["BLOCK_M"] // 2}
    rows |= {"k_desc": constexprs["BLOCK_N"], "v_desc": constexprs["BLOCK_N"]}
    return _compile_gluon_attention(launch, head_dim, rows)


def flash_attention_bwd_hopper(
    kernel: str, head_dim: int, causal: bool = True, **settings: Any
) -> KernelStats:
    """One of the Gluon (sm_90) backward kernels (``kernel``: ``dq``, ``dkdv`` or ``fused``,
    the dK/dV kernel adding dQ up) as ``flash_attn_tri`` would launch it; ``settings``:
    constexprs to change (``DQ_BUFFERS``, ``LATE_DK``, ``LATE_STATS``, ...)."""
    from flash_attn_tri import attention

    launch = attention._hopper_bwd_launch(kernel, head_dim, causal)
    launch = (launch[0], {**launch[1], **settings}, launch[2])
    q_rows, k_rows = launch[1]["BLOCK_M"], launch[1]["BLOCK_N"]
    if kernel == "dq":  # the rows of a program are split between the two consumers
        q_rows //= 2
    else:  # the keys are
        k_rows //= 2
    rows = {"q_desc": q_rows, "do_desc": q_rows, "o_desc": q_rows}
    rows |= {"k_desc": k_rows, "v_desc": k_rows}
    return _compile_gluon_attention(launch, head_dim, rows)


RECIPES = {
    "sparse-indexer-loss": lambda: sparse_indexer_forward(compute_loss=True),
    "sparse-indexer-target": lambda: sparse_indexer_forward(compute_loss=False),
    "sparse-indexer-loss-wide-keys": lambda: sparse_indexer_forward(wide_keys=True),
    "sparse-indexer-loss-hopper": lambda: sparse_indexer_forward_hopper(compute_loss=True),
    "sparse-indexer-target-hopper": lambda: sparse_indexer_forward_hopper(compute_loss=False),
    "sparse-indexer-loss-hopper-wide-keys": lambda: sparse_indexer_forward_hopper(wide_keys=True),
    "flash-attn-fwd-hopper-d64": lambda: flash_attention_hopper(64),
    "flash-attn-fwd-hopper-d128": lambda: flash_attention_hopper(128),
    "flash-attn-fwd-hopper-d128-o-stores": lambda: flash_attention_hopper(128, o_via_tma=False),
    **{
        f"flash-attn-{kernel}-hopper-d{d}": (
            lambda kernel=kernel, d=d: flash_attention_bwd_hopper(kernel, d)
        )
        for kernel in ("dq", "dkdv", "fused")
        for d in (64, 128)
    },
    # the step settings of attention._HOPPER_BWD_STEP (the first three for the fused kernel)
    **{
        f"flash-attn-{kernel}-hopper-d{d}-{variant}": (
            lambda kernel=kernel, d=d, settings=settings: flash_attention_bwd_hopper(
                kernel, d, **settings
            )
        )
        for d in (64, 128)
        for kernel, variant, settings in (
            ("fused", "1dq", {"DQ_BUFFERS": 1}),
            ("fused", "2dq", {"DQ_BUFFERS": 2}),
            ("fused", "late-dk", {"LATE_DK": True}),
            ("fused", "2dq-late-dk", {"DQ_BUFFERS": 2, "LATE_DK": True}),
            *(
                (kernel, name, settings)
                for kernel in ("dkdv", "fused")
                for name, settings in (
                    ("rounded-p", {"ROUNDED_P": True}),
                    ("late-stats", {"LATE_STATS": True}),
                    ("early-stats", {"LATE_STATS": False}),
                )
            ),
        )
    },
    # the fused kernel as D = 64 takes it (without a mask; the recipes above compile the
    # causal kernels)
    "flash-attn-fused-hopper-d64-no-mask": lambda: flash_attention_bwd_hopper(
        "fused", 64, causal=False
    ),
    # the fused kernel with its consumer warpgroups held to 200 registers (240 launched): too
    # few, and ptxas serialises its wgmma (the control of the check that none is serialised)
    "flash-attn-fused-hopper-d128-consumer-regs200": lambda: flash_attention_bwd_hopper(
        "fused", 128, CONSUMER_REGS=200
    ),
    **{
        f"flash-attn-{kernel}-d{d}": (lambda kernel=kernel, d=d: flash_attention(kernel, d))
        for kernel in ("fwd", "dkdv", "dq")
        for d in (64, 128)
    },
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe", nargs="*", help=f"any of {', '.join(RECIPES)} (default all)")
    parser.add_argument("--json", action="store_true", help="one JSON record per recipe")
    args = parser.parse_args()
    unknown = [r for r in args.recipe if r not in RECIPES]
    if unknown:
        parser.error(f"recipe: expected one of {sorted(RECIPES)}, got {unknown}")
    if os.environ.get("TRITON_INTERPRET") == "1":
        parser.error("TRITON_INTERPRET=1: kernels are interpreted, there is nothing to compile")
    for name in args.recipe or RECIPES:
        st = RECIPES[name]()
        if args.json:
            record = {
                "recipe": name,
                "registers": st.registers,
                "spill_bytes": st.spill_bytes,
                "shared_bytes": st.shared_bytes,
                "mul_lo_s64": st.ptx_count("mul.lo.s64"),
                "loops": [dict(mix) for mix in st.loops],
                "mufu_under_wgmma": st.mufu_under_wgmma,
                "innermost": st.innermost,
                "wgmma_a_in_registers": st.wgmma_a_in_registers,
                "setmaxnreg": st.setmaxnreg,
                "wgmma_serialized": st.wgmma_serialized,
                "opcodes": dict(st.opcodes()),
            }
            print(json.dumps(record))
            continue
        print(
            f"{name}: {st.registers} registers, {st.spill_bytes} B spilled, "
            f"{st.shared_bytes} B shared, {st.ptx_count('mul.lo.s64')} mul.lo.s64 in the PTX"
        )
        for reason in st.wgmma_serialized:
            print(f"  wgmma serialised by ptxas {reason}")
        for i, mix in enumerate(st.loops):
            top = ", ".join(f"{op} {n}" for op, n in mix.most_common(10))
            under = st.mufu_under_wgmma[i]
            overlap = f"; {under} MUFU while a wgmma is in flight" if under else ""
            if st.wgmma_a_in_registers[i]:
                overlap += f"; {st.wgmma_a_in_registers[i]} wgmma with A in registers"
            print(f"  loop {i}: {sum(mix.values())} instructions ({top}){overlap}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
