"""Launch helpers."""

import pytest
import triton

from tri_shared.launch import (
    MAX_GRID,
    autotune_configs,
    cdiv,
    device_capability,
    is_hopper,
    is_interpreter,
    make_grid,
    next_power_of_2,
)


def test_cdiv_and_next_power_of_2():
    assert [cdiv(a, 4) for a in (0, 1, 4, 5)] == [0, 1, 1, 2]
    assert [next_power_of_2(n) for n in (0, 1, 2, 3, 40, 64, 65)] == [1, 1, 2, 4, 64, 64, 128]


def test_make_grid_accepts_limits_and_names_the_axis_beyond():
    assert make_grid(2**31 - 1, 65535, 65535) == MAX_GRID
    assert make_grid(70000 * 32, 2) == (70000 * 32, 2)
    with pytest.raises(ValueError, match="grid axis 1"):
        make_grid(1, 65536)
    with pytest.raises(ValueError, match="grid axis 0"):
        make_grid(2**31)
    with pytest.raises(ValueError, match="1 to 3 axes"):
        make_grid(1, 1, 1, 1)


def test_autotune_configs(on_gpu):
    configs = [triton.Config({"B": 16}), triton.Config({"B": 32})]
    assert len(autotune_configs(configs)) == (2 if on_gpu else 1)
    with pytest.raises(ValueError, match="configs"):
        autotune_configs([])


def test_mode_queries(on_gpu):
    assert is_interpreter() == (not on_gpu)
    if on_gpu:
        assert device_capability() is not None
    else:
        assert device_capability() is None and not is_hopper()
