"""tri_shared.gluon resolves each renamed Gluon builtin to the installed Triton's spelling."""

import pytest

gl = pytest.importorskip("triton.experimental.gluon.language")


def test_names_resolve_to_the_installed_spelling():
    from triton.experimental.gluon.language.nvidia.ampere import async_copy
    from triton.experimental.gluon.language.nvidia.hopper import tma

    from tri_shared import gluon

    assert gluon.block_barrier is getattr(gl, "thread_barrier", getattr(gl, "barrier", None))
    assert gluon.tma_load is getattr(
        tma, "async_load", getattr(tma, "async_copy_global_to_shared", None)
    )
    assert gluon.cp_async_load is getattr(
        async_copy, "async_load", getattr(async_copy, "async_copy_global_to_shared", None)
    )
    assert all(callable(f) for f in (gluon.block_barrier, gluon.tma_load, gluon.cp_async_load))
