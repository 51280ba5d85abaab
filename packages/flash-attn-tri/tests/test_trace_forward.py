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


def test_summarise_reads_the_consumer_marks(trace_forward):
    # Two programs of TILES tiles; each consumer tile writes one mark per phase start and
    # one at its end (the other slots of the 8 stay 0), 10 cycles a phase, then a gap of
    # 7 to the next tile. Program 1 ran out of tiles after 5: those without a next tile
    # are left out, as is every program's first (cold) tile.
    import torch

    tiles, phases = trace_forward.TILES, len(trace_forward.PHASES)
    marks = torch.zeros(2, 3, tiles, 8, dtype=torch.int64)
    for program, n_tiles in ((0, tiles), (1, 5)):
        for wg in (0, 1):
            for tile in range(n_tiles):
                start = 1000 + tile * (10 * phases + 7)
                for event in range(phases + 1):
                    marks[program, wg, tile, event] = start + 10 * event
    rows = trace_forward.summarise(marks, pair=False)
    assert [row["warpgroup"] for row in rows] == [0, 1]
    for row in rows:
        # program 0: tiles 1 .. TILES - 2; program 1: tiles 1 .. 3 (tile 4 has no next)
        assert row["n"] == (tiles - 2) + 3
        assert [row[name] for name in trace_forward.PHASES] == [10] * phases
        assert row["gap"] == 7
        assert row["total"] == 10 * phases + 7
    pairs = trace_forward.summarise(marks, pair=True)
    assert [(row["warpgroup"], row["tiles"]) for row in pairs] == [
        (0, "long"), (0, "short"), (1, "long"), (1, "short"),
    ]  # fmt: skip


def test_unexpected_arguments_are_named(trace_forward, monkeypatch):
    monkeypatch.setattr("sys.argv", ["trace_forward.py", "--head-dim=96"])
    with pytest.raises(SystemExit, match=r"unexpected argument '--head-dim=96'.*--o-stores"):
        trace_forward.main()
