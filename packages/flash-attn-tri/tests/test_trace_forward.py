"""bench/trace_forward.py: the clock marks still find their places in the Gluon forward's
source (checked without a GPU; the traced kernel itself runs on a Hopper GPU)."""

from __future__ import annotations

import pytest


def test_every_mark_finds_its_place(trace_forward):
    source = trace_forward.instrumented_source()
    # 10 marks: 5 in the producer's tile loop, 5 in a consumer's; and the definition
    assert source.count("_mark(trace_ptr, ") == 11
    assert source.count("_mark(trace_ptr, 2, tile, ") == 5
    assert source.count("_mark(trace_ptr, WG, tile, ") == 5
    compile(source, "attention_hopper_traced.py", "exec")


def test_a_place_that_moved_is_named(trace_forward):
    source = trace_forward._kernel_path().read_text()
    moved = source.replace("  last = ring + n_blocks - 1\n", "  last = n_blocks + ring - 1\n")
    with pytest.raises(ValueError, match=r"last = ring \+ n_blocks - 1.*found 0"):
        trace_forward.instrumented_source(moved)
