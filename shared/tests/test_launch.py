"""Launch helpers."""

import pytest
import torch
import triton
import triton.language as tl

from tri_shared.launch import (
    MAX_GRID,
    autotune_configs,
    cdiv,
    device_capability,
    fast_launcher,
    is_hopper,
    is_interpreter,
    make_descriptor,
    make_grid,
    next_power_of_2,
)


@triton.jit
def _axpy_kernel(x_ptr, y_ptr, out_ptr, alpha, n, BLOCK: tl.constexpr, NEGATE: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    x = tl.load(x_ptr + offs, mask=mask)
    y = tl.load(y_ptr + offs, mask=mask)
    out = alpha * x + y
    if NEGATE:
        out = -out
    tl.store(out_ptr + offs, out, mask=mask)


def _axpy(x, y, alpha, negate=False):
    out = torch.full_like(x, float("nan"))
    n = x.numel()
    fast_launcher(_axpy_kernel)[make_grid(cdiv(n, 64))](
        x, y, out, alpha, n, BLOCK=64, NEGATE=negate, num_warps=1
    )
    return out


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
    # three axes (the common case, checked first): each bound of each axis
    assert make_grid(0, 0, 0) == (0, 0, 0)
    assert all(type(size) is int for size in make_grid(True, 2, 3))
    for bad, axis in (((2**31, 1, 1), 0), ((1, 65536, 1), 1), ((1, 1, 65536), 2),
                      ((-1, 1, 1), 0), ((1, -1, 1), 1), ((1, 1, -1), 2)):  # fmt: skip
        with pytest.raises(ValueError, match=f"grid axis {axis}"):
            make_grid(*bad)


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


def test_fast_launcher_matches_the_formula_and_reuses_kernels_only_for_equal_keys(device):
    """Direct launches (GPU) give what Triton's launch gives, for aligned and unaligned views
    and sizes with and without the divisibility Triton specialises on; under the
    interpreter every launch goes through Triton and nothing is kept."""
    launcher = fast_launcher(_axpy_kernel)
    assert fast_launcher(_axpy_kernel) is launcher
    base = torch.arange(300, dtype=torch.float32, device=device)
    other = torch.linspace(-1.0, 1.0, 300, device=device)
    cases = [
        (0, 256, False),  # aligned pointers, n divisible by 16
        (0, 256, False),  # the same key again: a direct launch on a GPU
        (1, 256, False),  # pointers off 16-byte alignment: another key
        (0, 250, False),  # n not divisible by 16
        (3, 17, True),  # another constexpr
        (0, 1, False),  # n == 1 (Triton makes it a constant)
    ]
    for start, n, negate in cases:
        x, y = base[start : start + n], other[start : start + n]
        want = 2.5 * x + y
        torch.testing.assert_close(_axpy(x, y, 2.5, negate), -want if negate else want)
    if is_interpreter():
        assert launcher.num_cached == 0
    else:
        assert launcher.num_cached == 5  # six calls, one repeated key


def test_fast_launcher_callable_grids_on_kept_kernels(device):
    """A grid function reading a runtime argument and one reading only a constexpr, each
    called twice: the second call of a key launches the kept kernel (on a GPU) over the
    grid the function gives."""
    launcher = fast_launcher(_axpy_kernel)
    grids = (  # (the interpreter passes scalars as tensors: int())
        lambda meta: (cdiv(int(meta["n"]), meta["BLOCK"]),),
        lambda meta: (cdiv(1000, meta["BLOCK"]),),
    )
    for grid in grids:
        for _ in range(2):
            x = torch.randn(1000, device=device)
            y = torch.randn(1000, device=device)
            out = torch.full_like(x, float("nan"))
            launcher[grid](x, y, out, 0.5, 1000, BLOCK=32, NEGATE=False, num_warps=1)
            torch.testing.assert_close(out, 0.5 * x + y)


def test_bound_launch_goes_direct_after_a_kept_launch_and_checks_tensors(device):
    """A bound launch gives what the launcher gives; on a GPU it launches the kept kernel
    directly from its second call, and a tensor off the alignment or of a dtype the first
    call did not have goes through the launcher (another kernel, the right result); under
    the interpreter every call goes through Triton's launch."""
    bound = fast_launcher(_axpy_kernel).bind(make_grid(cdiv(256, 64)), BLOCK=64, NEGATE=False)
    base = torch.linspace(-2.0, 2.0, 300, device=device)
    for start, dtype in ((0, torch.float32), (16, torch.float32), (1, torch.float32),
                         (0, torch.float16), (0, torch.float32)):  # fmt: skip
        x = base[start : start + 256].to(dtype)
        y = torch.ones(256, device=device, dtype=dtype)
        out = torch.full_like(x, float("nan"))
        bound(x, y, out, 0.5, 256)
        torch.testing.assert_close(out, 0.5 * x + y)
        assert bound.is_direct == (not is_interpreter())
    with pytest.raises(TypeError, match="grid"):
        fast_launcher(_axpy_kernel).bind(lambda meta: (1,), BLOCK=64, NEGATE=False)


def test_fast_launcher_falls_back_for_runtime_keyword_arguments(device):
    """A runtime argument passed by keyword cannot be keyed: every such launch goes
    through Triton's own."""
    launcher = fast_launcher(_axpy_kernel)
    before = launcher.num_cached
    x = torch.ones(40, device=device)
    y = torch.full((40,), 2.0, device=device)
    for _ in range(2):
        out = torch.empty_like(x)
        launcher[(1,)](x, y, out, 3.0, n=40, BLOCK=64, NEGATE=False)
        torch.testing.assert_close(out, torch.full_like(x, 5.0))
    assert launcher.num_cached == before


def test_fast_launcher_keys_hold_no_tensor_and_skip_unknown_arguments():
    """Keys are built from dtypes, alignment and value classes only; an argument of an
    unknown type (e.g. a tensor descriptor) is not keyed, so such calls are never kept."""
    from tri_shared.launch import _UNKEYED, _arg_key

    x = torch.zeros(8)
    assert _arg_key(x) == (torch.float32, x.data_ptr() % 16 == 0)
    assert _arg_key(x[1:]) == (torch.float32, False)
    assert _arg_key(1) != _arg_key(17) != _arg_key(32) != _arg_key(2**40)
    assert _arg_key(2.0) == _arg_key(3.5)
    assert _arg_key(None) == (type(None), None)
    assert _arg_key(True) != _arg_key(False)
    assert _arg_key(object()) is _UNKEYED


def test_fast_launcher_keys_gluon_descriptors_by_what_the_code_depends_on():
    """A Gluon copy-engine descriptor is keyed by its element type, box and layout (what
    Triton specialises the kernel on), not by the address, sizes or strides of its tensor,
    which go into the hardware descriptor at each launch."""
    hopper = pytest.importorskip("triton.experimental.gluon.nvidia.hopper")
    from triton.experimental.gluon import language as gl

    from tri_shared.launch import _UNKEYED, _arg_key

    layout = gl.NVMMASharedLayout(swizzle_byte_width=128, element_bitwidth=16, rank=3)

    def desc(batch, seqlen, block_rows, dtype=torch.float16):
        t = torch.empty(batch * seqlen * 256, dtype=dtype)
        shape, strides = [batch, seqlen, 256], [seqlen * 256, 256, 1]
        return hopper.TensorDescriptor(t, shape, strides, [1, block_rows, 128], layout)

    key = _arg_key(desc(2, 64, 64))
    assert key is not _UNKEYED
    assert _arg_key(desc(3, 1000, 64)) == key  # other sizes: the same compiled kernel
    assert _arg_key(desc(2, 64, 32)) != key  # another box
    assert _arg_key(desc(2, 64, 64, torch.bfloat16)) != key  # another element type


def test_fast_launcher_keys_triton_descriptors_by_box_and_element_type():
    """Triton's own tensor descriptor is keyed like Gluon's: element type, rank, box and
    padding, not the tensor's address, sizes or strides."""
    from triton.tools.tensor_descriptor import TensorDescriptor

    from tri_shared.launch import _UNKEYED, _arg_key

    def desc(rows, block_rows, dtype=torch.float16):
        t = torch.empty(rows, 64, dtype=dtype)
        return TensorDescriptor(t, [rows, 64], [64, 1], [block_rows, 64])

    key = _arg_key(desc(128, 32))
    assert key is not _UNKEYED
    assert _arg_key(desc(1000, 32)) == key
    assert _arg_key(desc(128, 16)) != key
    assert _arg_key(desc(128, 32, torch.bfloat16)) != key


def _fields(desc) -> dict:
    return {k: (id(v) if isinstance(v, torch.Tensor) else v) for k, v in vars(desc).items()}


def test_make_descriptor_equals_the_class_constructor():
    """Triton's and Gluon's descriptors made by ``make_descriptor`` hold what their
    constructors make of the same arguments, the first through the constructor (which checks
    it), later ones without, and each with its own lists."""
    from triton.tools.tensor_descriptor import TensorDescriptor

    from tri_shared import launch

    cases = [(TensorDescriptor, {})]
    try:
        from triton.experimental.gluon import language as gl
        from triton.experimental.gluon.nvidia.hopper import TensorDescriptor as BoxDescriptor
    except ImportError:  # a Triton without Gluon: Triton's descriptor only
        pass
    else:
        layout = gl.NVMMASharedLayout(swizzle_byte_width=128, element_bitwidth=16, rank=2)
        cases.append((BoxDescriptor, {"layout": layout}))
    for cls, fields in cases:
        for rows, box in ((64, 32), (1000, 16), (48, 64)):
            t = torch.empty(rows, 64, dtype=torch.float16)
            shape, strides, block = [rows, 64], [64, 1], [box, 64]
            made = make_descriptor(cls, t, shape, strides, block, **fields)
            assert type(made) is cls
            assert made.base is t
            assert _fields(made) == _fields(cls(t, shape, strides, block, **fields))
        # the installed Triton's descriptors are plain dataclasses: later ones are copies
        assert launch._DESCRIPTOR_FIELDS[cls, torch.float16, 2, tuple(fields.items())] is not None
        # a later descriptor's lists are its own: a pre-hook that sets one box sets no other
        a = make_descriptor(cls, t, [48, 64], [64, 1], [16, 64], **fields)
        b = make_descriptor(cls, t, [48, 64], [64, 1], [16, 64], **fields)
        a.block_shape = [32, 64]
        assert b.block_shape == [16, 64]


def test_make_descriptor_checks_the_first_of_each_kind():
    """The first descriptor of a (class, fields) is the class's own, with its checks."""
    from triton.tools.tensor_descriptor import TensorDescriptor

    class Checked(TensorDescriptor):  # a class of its own: no descriptor of it made before
        pass

    t = torch.empty(64, 64, dtype=torch.float16)
    with pytest.raises(AssertionError, match="16-byte aligned"):
        make_descriptor(Checked, t[:, 1:], [64, 63], [64, 1], [16, 64])


def test_make_descriptor_builds_classes_with_derived_state_each_time():
    """A descriptor class that keeps state derived at construction is never copied: every
    descriptor of it comes from its constructor."""
    from triton.tools.tensor_descriptor import TensorDescriptor

    class Derived(TensorDescriptor):
        def __post_init__(self):
            super().__post_init__()
            self.rows = self.shape[0]  # not a declared field

    for rows in (64, 48, 1000):
        t = torch.empty(rows, 64, dtype=torch.float16)
        assert make_descriptor(Derived, t, [rows, 64], [64, 1], [16, 64]).rows == rows


_hook_blocks: list[int] = []


def _record_block(nargs: dict) -> None:
    _hook_blocks.append(nargs["BLOCK"])


@triton.autotune(
    configs=autotune_configs(
        [triton.Config({"BLOCK": b}, num_warps=1, pre_hook=_record_block) for b in (32, 128)]
    ),
    key=["NEGATE"],
)
@triton.jit
def _tuned_axpy_kernel(x_ptr, y_ptr, out_ptr, alpha, n, NEGATE: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    out = alpha * tl.load(x_ptr + offs, mask=mask) + tl.load(y_ptr + offs, mask=mask)
    if NEGATE:
        out = -out
    tl.store(out_ptr + offs, out, mask=mask)


def test_fast_launcher_keeps_the_autotuned_config_and_runs_its_pre_hook(device):
    """An autotuned kernel: the first call of a key autotunes through Triton; later calls
    launch the kernel of the chosen config directly, after its pre-hook, over the grid
    computed from that config (sizes that change between calls of one key included)."""
    launcher = fast_launcher(_tuned_axpy_kernel)
    before = launcher.num_cached
    for n in (1000, 1000, 4000, 320):  # 1000 and 4000 share a key; 320 = 16·20 does not
        grid = lambda meta, n=n: (cdiv(n, meta["BLOCK"]),)
        x = torch.randn(n, device=device)
        y = torch.randn(n, device=device)
        out = torch.full_like(x, float("nan"))
        _hook_blocks.clear()
        launcher[grid](x, y, out, 0.5, n, NEGATE=False)
        torch.testing.assert_close(out, 0.5 * x + y)
        assert _hook_blocks, "the config's pre-hook ran"
    if is_interpreter():
        assert launcher.num_cached == 0
    else:
        chosen = _tuned_axpy_kernel.best_config.kwargs["BLOCK"]
        assert _hook_blocks[-1] == chosen
        assert launcher.num_cached == before + 2
