"""bench/trace_backward.py: the clock marks still find their places in the Gluon backward's
source, and the summary reads them (checked without a GPU; the traced kernels themselves
run on a Hopper GPU)."""

from __future__ import annotations

import pytest
import torch


def test_every_mark_finds_its_place(trace_backward):
    source = trace_backward.instrumented_source()
    # 4 marks in each of the two consumers, the definition, and the absolute import
    assert source.count("_mark(trace_ptr, WG, ") == 8
    assert source.count("def _mark(trace_ptr, role, event):") == 1
    assert "from .attention_hopper import" not in source
    assert source.count("trace_ptr, q_smem,") == 6  # 2 definitions, 4 partitions
    compile(source, "attention_hopper_bwd_traced.py", "exec")


def test_a_place_that_moved_is_named(trace_backward):
    source = trace_backward._kernel_path().read_text()
    moved = source.replace("    total = group * n_steps\n", "    total = n_steps * group\n")
    with pytest.raises(ValueError, match=r"trace_backward: .*total = group \* n_steps.*found 0"):
        trace_backward.instrumented_source(moved)


def test_summarise_reads_phases_and_gaps(trace_backward):
    # 6 programs on 2 multiprocessors, 3 each one after the other: phases of 100, 300 and
    # 50 cycles (warpgroup 1 ends 20 later), 40 cycles between a program's end and the
    # next one's start; a seventh program left no marks (it is left out).
    marks = torch.zeros(7, 2, trace_backward.SLOTS, dtype=torch.int64)
    for program in range(6):
        sm, turn = program % 2, program // 2
        start = 1000 + turn * (450 + 20 + 40)
        for wg in (0, 1):
            marks[program, wg, :4] = torch.tensor([start, start + 100, start + 400, start + 450])
            marks[program, wg, trace_backward.SM_SLOT] = sm
        marks[program, 1, 3] += 20
    rows = trace_backward.summarise(marks, steps=10)
    assert [row["warpgroup"] for row in rows] == [0, 1]
    assert [rows[0][name] for name in trace_backward.PHASES] == [100, 300, 50]
    assert rows[1]["stores"] == 70
    assert rows[0]["loop / step"] == 30
    assert all(row["programs"] == 6 for row in rows)
    assert all(row["gap between programs"] == 40 for row in rows)


def test_unexpected_arguments_are_named(trace_backward, monkeypatch):
    monkeypatch.setattr("sys.argv", ["trace_backward.py", "--kind=both"])
    with pytest.raises(SystemExit, match="unexpected argument '--kind=both'"):
        trace_backward.main()


def test_kinds_are_the_gluon_backward_alternatives(trace_backward):
    """``--kind`` takes bench_dispatch's split and fused alternatives (their tiles and
    settings), not the Triton or cuDNN ones."""
    kinds = trace_backward._kinds()
    assert {"split", "fused", "fused-late-dk", "fused-64rows", "split-64"} <= set(kinds)
    assert "triton" not in kinds and "cudnn" not in kinds
