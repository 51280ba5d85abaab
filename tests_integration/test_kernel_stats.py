"""Kernels compiled for Hopper (sm_90a) offline, through ``tools/kernel_stats.py``: the
compiled code keeps the properties the speed work established (no spills, no 64-bit address
arithmetic per gathered row), and constexpr paths the interpreter cannot check compile."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# the Gluon backward under the step settings bench_dispatch.py times (attention._HOPPER_BWD_STEP)
GLUON_BWD_SETTINGS = [
    "flash-attn-dkdv-hopper-d64-early-stats", "flash-attn-dkdv-hopper-d64-rounded-p",
    "flash-attn-fused-hopper-d64-2dq-late-dk", "flash-attn-fused-hopper-d128-late-stats",
]  # fmt: skip


@pytest.fixture(scope="module")
def stats() -> dict[str, dict]:
    # A process of its own: the test session runs kernels through the interpreter
    # (TRITON_INTERPRET=1 without a GPU), where nothing is compiled.
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join(
        str(ROOT / p)
        for p in ("shared/src", "packages/indexer-loss/src", "packages/flash-attn-tri/src")
    )
    recipes = [
        "sparse-indexer-loss", "sparse-indexer-target", "sparse-indexer-loss-wide-keys",
        "sparse-indexer-loss-hopper", "sparse-indexer-target-hopper",
        "sparse-indexer-loss-hopper-wide-keys",
        "flash-attn-fwd-d64", "flash-attn-fwd-d128",
        "flash-attn-fwd-hopper-d64", "flash-attn-fwd-hopper-d128",
        "flash-attn-fwd-hopper-d128-o-stores",
        "flash-attn-dkdv-hopper-d64", "flash-attn-dkdv-hopper-d128",
        "flash-attn-dq-hopper-d64", "flash-attn-dq-hopper-d128",
        "flash-attn-fused-hopper-d64", "flash-attn-fused-hopper-d128",
        *GLUON_BWD_SETTINGS, "flash-attn-fused-hopper-d128-consumer-regs200",
        "flash-attn-fused-hopper-d64-no-mask",
    ]  # fmt: skip
    run = subprocess.run(
        [sys.executable, str(ROOT / "tools/kernel_stats.py"), "--json", *recipes],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    records = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    return {r["recipe"]: r for r in records}


@pytest.mark.parametrize(
    ("recipe", "loops"), [("sparse-indexer-loss", 3), ("sparse-indexer-target", 2)]
)
def test_sparse_indexer_forward_compiles_lean(stats, recipe, loops):
    st = stats[recipe]
    assert st["spill_bytes"] == 0
    assert 0 < st["registers"] <= 255
    # sweep 0 (loss only), sweep 1, sweep 2; the two sweeps run their matmuls on wgmma
    assert len(st["loops"]) == loops
    assert all(mix.get("HGMMA", 0) > 0 for mix in st["loops"][-2:])


def test_sparse_indexer_wide_keys_path_compiles(stats):
    # keys spanning 2^31 elements take 64-bit offsets; the CPU tests run that path through
    # the interpreter, which does not type-check constexpr branches as the compiler does
    assert stats["sparse-indexer-loss-wide-keys"]["spill_bytes"] == 0
    # the Gluon kernel's 64-bit path: the producer's copies, nothing spilled inside its loops
    st = stats["sparse-indexer-loss-hopper-wide-keys"]
    passes = [
        mix
        for mix, innermost in zip(st["loops"], st["innermost"], strict=True)
        if innermost and mix.get("LDGSTS", 0) > 0
    ]
    assert len(passes) == 3
    assert all(mix.get("STL", 0) == 0 for mix in passes)


def test_32_bit_key_offsets_cost_less_integer_work(stats):
    # The usual path keeps the gathered rows' offsets in 32-bit: fewer 64-bit multiplies and
    # fewer integer multiply-adds in the two sweeps than the 64-bit path (with triton 3.6 the
    # 64-bit path had 59 mul.lo.s64 against 11, and was 8% slower on an H200).
    narrow, wide = stats["sparse-indexer-loss"], stats["sparse-indexer-loss-wide-keys"]
    assert narrow["mul_lo_s64"] < wide["mul_lo_s64"]

    def imad(st):
        return sum(mix.get("IMAD", 0) for mix in st["loops"][-2:])

    assert imad(narrow) < imad(wide)


@pytest.mark.parametrize("recipe", ["sparse-indexer-loss-hopper", "sparse-indexer-target-hopper"])
def test_gluon_sparse_indexer_splits_gathers_from_matmuls(stats, recipe):
    # The Gluon kernel exists for this: a producer warpgroup gathers the keys. In the
    # consumer, sweep 1 (and its exact redo) takes the query from registers, so that the
    # wgmma reads only the keys from shared memory; in sweep 2 the exponentials are issued
    # while the next block's wgmma is in flight. The Triton kernel waits on each wgmma first
    # (0 here).
    st, triton_kernel = stats[recipe], stats[recipe.removesuffix("-hopper")]
    # warp specialisation also compiles to dispatch loops around the partitions' own loops
    keep = st["innermost"]
    inner = [mix for mix, innermost in zip(st["loops"], keep, strict=True) if innermost]
    under = [n for n, innermost in zip(st["mufu_under_wgmma"], keep, strict=True) if innermost]
    rs = [n for n, innermost in zip(st["wgmma_a_in_registers"], keep, strict=True) if innermost]
    # the consumer's sweeps: sweep 1 against a fixed reference, sweep 1 with an online
    # maximum (for the rows the first one cannot take), sweep 2; the producer's three passes
    sweeps = [i for i, mix in enumerate(inner) if mix.get("HGMMA", 0) > 0]
    passes = [i for i, mix in enumerate(inner) if mix.get("LDGSTS", 0) > 0]
    assert len(sweeps) == 3
    assert len(passes) == 3
    assert not set(sweeps) & set(passes)  # the matmul loops issue no copies
    for i in sweeps:
        # one 64-key block of 8 k-steps (D = 128) and at most two barriers per iteration
        assert inner[i]["HGMMA"] == 8
        assert inner[i].get("BAR", 0) <= 2
    assert [rs[i] for i in sweeps] == [8, 8, 0]
    assert under[sweeps[2]] > 0
    # the usual sweep 1 takes no maximum per block: nothing its exponentials wait for
    assert inner[sweeps[0]].get("FMNMX", 0) == 0
    assert inner[sweeps[1]].get("FMNMX", 0) > 0
    assert sum(under) > sum(triton_kernel["mufu_under_wgmma"])
    # occupancy is what the launch is tuned for: 64 registers a thread at launch over the
    # two warpgroups (setmaxnreg moves most of the producer's to the consumer) and under
    # 56 KiB of shared memory keep four programs on an SM. ptxas spills nothing with the GPU
    # machine's Triton (3.6) nor with 3.9 (up to 24 B before the query moved to registers in
    # sweep 1), and nothing in these loops in any case.
    assert st["registers"] <= 64
    assert st["shared_bytes"] < 56 * 1024
    assert st["spill_bytes"] <= 64
    assert all(inner[i].get("STL", 0) == 0 for i in sweeps + passes)


@pytest.mark.parametrize("recipe", ["flash-attn-fwd-d64", "flash-attn-fwd-d128"])
def test_flash_attention_forward_compiles_without_spills(stats, recipe):
    # the default forward configs keep everything in registers (the backward's defaults do
    # spill a little: `just kernel-stats` reports it, BENCHMARKS.md has the figures)
    st = stats[recipe]
    assert st["spill_bytes"] == 0
    assert 0 < st["registers"] <= 255
    assert any(mix.get("HGMMA", 0) > 0 for mix in st["loops"])


def _gluon_attention_loops(st: dict) -> list[tuple[dict, int, int]]:
    """A Gluon attention kernel's innermost loops that issue wgmma, as (instruction mix,
    MUFU issued under an in-flight wgmma, wgmma with A in registers), after the checks all
    of them share: 12 warps at 168 registers a thread at launch, setmaxnreg 240 for each
    consumer warpgroup and 24 for the producer, shared memory within 227 KiB, and an
    unmasked and a masked loop for each consumer warpgroup."""
    assert st["registers"] <= 168
    assert st["shared_bytes"] <= 227 * 1024
    assert 240 in st["setmaxnreg"] and 24 in st["setmaxnreg"]
    loops = [
        (mix, under, rs)
        for mix, under, rs, innermost in zip(
            st["loops"],
            st["mufu_under_wgmma"],
            st["wgmma_a_in_registers"],
            st["innermost"],
            strict=True,
        )
        if innermost and mix.get("HGMMA", 0) > 0
    ]
    assert len(loops) >= 4
    return loops


@pytest.mark.parametrize(
    ("recipe", "head_dim"), [("flash-attn-fwd-hopper-d64", 64), ("flash-attn-fwd-hopper-d128", 128)]
)
def test_gluon_attention_forward_compiles_as_designed(stats, recipe, head_dim):
    # The Gluon forward for Hopper (the default at D = 128): 12 warps at 168 registers a
    # thread at launch, setmaxnreg gives each consumer warpgroup 240 and the producer 24,
    # nothing spills in the loops over key blocks; each consumer's step issues the scores
    # (D / 16 wgmma) and P·V (BLOCK_N / 16 = 8, P from registers) back to back, and the
    # unmasked loop has no mask.
    st = stats[recipe]
    assert st["spill_bytes"] <= 64  # around the tiles: see the next test
    loops = _gluon_attention_loops(st)
    for mix, _, _ in loops:
        assert mix.get("LDL", 0) + mix.get("STL", 0) == 0
    mix, _, rs = loops[0]
    assert mix.get("FSEL", 0) <= 8  # no mask in the unmasked loop: only the per-row guards
    assert mix["HGMMA"] == head_dim // 16 + 8
    assert rs == 8
    assert mix["MUFU"] >= 64  # 64 scores a thread a step, and the rescale factors


def test_gluon_attention_forward_output_through_the_copy_engine(stats):
    # The Gluon forward writes its output through the copy engine (O_VIA_TMA, the
    # default): one bulk store a tile (and the wait for the previous one), no STG of the
    # output; the coordinates of the store cost a few registers, so a few bytes spill
    # around the tiles (8 with triton 3.6, 40 with 3.9), never inside the loops over key
    # blocks. With plain stores nothing spills, and 68 STG remain.
    st = stats["flash-attn-fwd-hopper-d128"]
    assert st["opcodes"].get("UTMASTG") == 2  # one a consumer warpgroup
    assert st["opcodes"].get("STG", 0) <= 4  # the log-sum-exp's
    assert st["opcodes"].get("STSM", 0) >= 8  # registers to shared memory by stmatrix
    plain = stats["flash-attn-fwd-hopper-d128-o-stores"]
    assert plain["spill_bytes"] == 0
    assert "UTMASTG" not in plain["opcodes"]
    assert plain["opcodes"].get("STG", 0) >= 64


@pytest.mark.parametrize(
    ("recipe", "head_dim", "fused"),
    [
        ("flash-attn-dkdv-hopper-d64", 64, False),
        ("flash-attn-dkdv-hopper-d128", 128, False),
        ("flash-attn-fused-hopper-d128", 128, True),
    ],
)
def test_gluon_dkdv_compiles_as_designed(stats, recipe, head_dim, fused):
    # The Gluon dK/dV kernel (the split backward with the dQ kernel, or fused): the
    # consumers' setmaxnreg 240 and the producer's 24; per query block of BLOCK_M rows
    # (attention._HOPPER_BWD_TILES: 64 at D = 128, 128 at D = 64) and warpgroup the
    # unmasked loop issues S^T and dP^T (D / 16 wgmma each) and dV, dK (BLOCK_M / 16 each,
    # the left operand from registers), with every exponential under an in-flight wgmma
    # (dP^T's). Each query block's row statistics (lse·log2 e, delta) arrive with Q and dO
    # through the copy engine and are read from shared memory straight into the score
    # tiles' columns: no layout conversions (their warpgroup barriers and the registers
    # they held cost up to 612 B of spills before). At D = 64 the statistics are read after
    # the wait for S (LATE_STATS), and nothing spills (the recipes compile the causal
    # kernels; 84 B with them read before it, triton 3.6 and 3.9); D = 128: 0 B with 3.6,
    # 48 B with 3.9 (0-1 in the unmasked loop).
    # Fused: dK's dS^T comes from shared memory instead, and dQ for half of D over both
    # warpgroups' keys adds BLOCK_M / 8 wgmma; dQ·scale goes to shared memory and out as
    # one bulk reduction of the copy engine a step (no per-thread atomics). Its spills are
    # recorded, not designed: 216 B at D = 128 with triton 3.6, 1024 B with 3.9. (The fused
    # kernel at D = 64 is taken without a mask only: its own test below.)
    from flash_attn_tri.attention import _HOPPER_BWD_TILES

    block_m = _HOPPER_BWD_TILES[("fused" if fused else "dkdv", head_dim)][0]
    st = stats[recipe]
    if fused:
        assert st["spill_bytes"] <= 1280
    else:
        assert st["spill_bytes"] <= 128
    loops = _gluon_attention_loops(st)
    unmasked = [(mix, under, rs) for mix, under, rs in loops if mix.get("FSEL", 0) == 0]
    assert unmasked
    for mix, under, rs in unmasked:
        assert mix["HGMMA"] == 2 * (head_dim // 16) + 2 * (block_m // 16) + (
            block_m // 8 if fused else 0
        )
        assert rs == (block_m // 16 if fused else 2 * (block_m // 16))
        assert mix.get("REDG", 0) == 0
        assert mix.get("UTMAREDG", 0) == (1 if fused else 0)
        assert under == mix["MUFU"] == block_m // 2  # 64 keys × BLOCK_M scores, 128 threads
        if not fused:
            assert mix.get("LDL", 0) + mix.get("STL", 0) <= (4 if block_m == 64 else 16)
            # no statistics spread through shared memory (that took 4 barriers a step)
            assert mix.get("BAR", 0) <= 2


@pytest.mark.parametrize(
    ("recipe", "head_dim"),
    [("flash-attn-dq-hopper-d64", 64), ("flash-attn-dq-hopper-d128", 128)],
)
def test_gluon_dq_compiles_as_designed(stats, recipe, head_dim):
    # The Gluon dQ kernel: nothing spills; per key block of BLOCK_N (attention.
    # _HOPPER_BWD_TILES: 64 at D = 128, 128 at D = 64) and warpgroup the unmasked loop
    # issues S and dP (D / 16 wgmma each) and dQ += dS·K (BLOCK_N / 16, dS from registers),
    # BLOCK_N / 2 exponentials a thread.
    from flash_attn_tri.attention import _HOPPER_BWD_TILES

    block_n = _HOPPER_BWD_TILES[("dq", head_dim)][1]
    st = stats[recipe]
    assert st["spill_bytes"] == 0
    loops = _gluon_attention_loops(st)
    unmasked = [(mix, rs) for mix, _, rs in loops if mix.get("FSEL", 0) == 0]
    assert unmasked
    for mix, rs in unmasked:
        assert mix["HGMMA"] == 2 * (head_dim // 16) + block_n // 16
        assert rs == block_n // 16
        assert mix["MUFU"] == block_n // 2


@pytest.mark.parametrize(
    "recipe",
    [
        "flash-attn-fwd-hopper-d64", "flash-attn-fwd-hopper-d128", "flash-attn-dq-hopper-d64",
        "flash-attn-dq-hopper-d128", "flash-attn-dkdv-hopper-d64", "flash-attn-dkdv-hopper-d128",
        "flash-attn-fused-hopper-d64", "flash-attn-fused-hopper-d128", *GLUON_BWD_SETTINGS,
    ],
)  # fmt: skip
def test_gluon_attention_wgmma_stays_asynchronous(stats, recipe):
    # ptxas serialises every wgmma of a kernel (each waited for before the next issues)
    # when registers run short or when other instructions read the accumulator of a wgmma
    # in flight (an accumulator carried between loop iterations did that: a dQ matmul left
    # running into the next step, session 26); it says so only in a "Potential Performance
    # Loss" note
    st = stats[recipe]
    assert st["wgmma_serialized"] == [], st["wgmma_serialized"]
    _gluon_attention_loops(st)


def test_serialised_wgmma_is_reported(stats):
    # the control of the test above: the D = 128 fused kernel's consumers held to 200
    # registers a thread (setmaxnreg; they are given 240) spill 724 B and ptxas serialises
    # the kernel's wgmma
    reasons = stats["flash-attn-fused-hopper-d128-consumer-regs200"]["wgmma_serialized"]
    assert reasons == ["due to insufficient register resources"]


def test_gluon_backward_statistics_read_after_the_wait_for_s_spill_nothing(stats):
    # LATE_STATS (on at D = 64): the dK/dV kernel's statistics vector is not held across the
    # wait for S, and ptxas spills nothing; with the statistics read before the wait it
    # spills (84 B, triton 3.6 and 3.9)
    assert stats["flash-attn-dkdv-hopper-d64"]["spill_bytes"] == 0
    assert stats["flash-attn-dkdv-hopper-d64-early-stats"]["spill_bytes"] > 0


def test_gluon_fused_backward_at_d64_keeps_its_loops_in_registers(stats):
    # The fused kernel as D = 64 without a mask takes it (128-row query blocks, LATE_STATS,
    # two dQ staging buffers): with triton 3.6 (the GPU machines') ptxas spills 152 B,
    # mostly around the loops, with 0-3 spill loads or stores a step (20-31 with the
    # statistics read before the wait for S); with 3.9, 136 B and 11-15 a step of ~700
    # instructions
    st = stats["flash-attn-fused-hopper-d64-no-mask"]
    assert st["spill_bytes"] <= 256
    assert st["wgmma_serialized"] == []
    loops = [
        (mix, under)
        for mix, under, innermost in zip(
            st["loops"], st["mufu_under_wgmma"], st["innermost"], strict=True
        )
        if innermost and mix.get("HGMMA", 0) > 0
    ]
    assert len(loops) == 2  # one for each consumer warpgroup, none masked
    for mix, under in loops:
        assert mix.get("LDL", 0) + mix.get("STL", 0) <= 16
        assert mix["HGMMA"] == 2 * (64 // 16) + 2 * (128 // 16) + 128 // 8
        assert mix.get("UTMAREDG", 0) == 1
        assert under == mix["MUFU"] == 64
