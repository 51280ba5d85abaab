"""bench/bench_dispatch.py's command line: which cases and alternatives it would time
(checked without a GPU)."""

from __future__ import annotations

import re

import pytest


def test_defaults_time_every_case(bench_dispatch):
    options = bench_dispatch.parse_args([])
    assert options["parts"] == ["fwd", "bwd"]
    assert bench_dispatch.select_cases("fwd", options) == bench_dispatch.FORWARD_CASES
    assert bench_dispatch.select_cases("bwd", options) == bench_dispatch.BACKWARD_CASES


def test_filters_and_alternatives(bench_dispatch):
    argv = ["fwd", "--head-dim=128", "--seqlen=1024,16384", "--causal=yes"]
    options = bench_dispatch.parse_args([*argv, "--alternatives=gluon,gluon-o-stores,cudnn"])
    cases = bench_dispatch.select_cases("fwd", options)
    assert cases == [
        (128, True, 1024, ("gluon", "gluon-o-stores", "cudnn")),
        (128, True, 16384, ("gluon", "gluon-o-stores", "cudnn")),
    ]
    # without --alternatives each case keeps its own
    own = bench_dispatch.select_cases("fwd", bench_dispatch.parse_args(argv))
    assert [c[:3] for c in own] == [c[:3] for c in cases]
    assert own[0][3] == bench_dispatch._FWD_ALL


def test_other_tiles_join_the_backward_cases(bench_dispatch):
    options = bench_dispatch.parse_args(["bwd", "--head-dim=64", "--other-tiles"])
    for d, _, _, names in bench_dispatch.select_cases("bwd", options):
        assert d == 64
        assert set(bench_dispatch._OTHER_TILES[64]) <= set(names)
        assert names[-1] == "cudnn"


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["--rounds=0"], "--rounds=0"),
        (["--causal=maybe"], "--causal=maybe"),
        (["--seqlen=1k"], "--seqlen=1k"),
        (["--frobnicate"], "--frobnicate"),
        (["fwd", "--alternatives=split"], "['split']"),
    ],
)
def test_bad_arguments_are_named(bench_dispatch, argv, named):
    with pytest.raises(SystemExit, match=re.escape(named)):
        bench_dispatch.parse_args(argv)


def test_alternatives_set_their_tiles_and_step_settings_inside_the_block(bench_dispatch):
    """An alternative's step settings update ``attention._HOPPER_BWD_STEP`` (the other
    settings kept) and reach the kernels' constexprs; its tiles replace the defaults; both
    are restored afterwards."""
    from flash_attn_tri import attention

    step, tiles = dict(attention._HOPPER_BWD_STEP), dict(attention._HOPPER_BWD_TILES)
    with bench_dispatch._tiles("fused-2dq-late-dk"):
        expected = {**step, "TWO_DQ_BUFFERS_HEAD_DIMS": (64, 128), "LATE_DK": True}
        assert expected == attention._HOPPER_BWD_STEP
        constexprs = attention._hopper_bwd_launch("fused", 128, causal=False)[1]
        assert (constexprs["DQ_BUFFERS"], constexprs["LATE_DK"]) == (2, True)
        # the split kernels keep their one way of ending a step
        constexprs = attention._hopper_bwd_launch("dkdv", 64, causal=False)[1]
        assert (constexprs["DQ_BUFFERS"], constexprs["LATE_DK"]) == (1, False)
    # two dQ staging buffers: by default in the fused kernel at D = 64 only
    assert attention._hopper_bwd_launch("fused", 64, causal=False)[1]["DQ_BUFFERS"] == 2
    assert attention._hopper_bwd_launch("fused", 128, causal=False)[1]["DQ_BUFFERS"] == 1
    with bench_dispatch._tiles("fused-1dq"):
        assert attention._hopper_bwd_launch("fused", 64, causal=False)[1]["DQ_BUFFERS"] == 1
    # the statistics read after the wait for S: by default at D = 64 only
    assert attention._hopper_bwd_launch("dkdv", 64, causal=True)[1]["LATE_STATS"] is True
    assert attention._hopper_bwd_launch("fused", 128, causal=False)[1]["LATE_STATS"] is False
    with bench_dispatch._tiles("split-late-stats"):
        assert attention._hopper_bwd_launch("dkdv", 128, causal=True)[1]["LATE_STATS"] is True
    with bench_dispatch._tiles("fused-early-stats"):
        assert attention._hopper_bwd_launch("fused", 64, causal=False)[1]["LATE_STATS"] is False
    with bench_dispatch._tiles("fused-64rows"):
        assert attention._HOPPER_BWD_TILES[("fused", 64)] == (64, 128, 3)
        assert attention._hopper_bwd_launch("fused", 64, causal=False)[1]["BLOCK_M"] == 64
    assert step == attention._HOPPER_BWD_STEP
    assert tiles == attention._HOPPER_BWD_TILES
