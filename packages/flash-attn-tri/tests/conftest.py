"""Fixtures of the flash-attn-tri tests: a checker that runs the kernel forward and backward
and compares both with the reference under the FlashAttention error rule."""

import importlib.util
import os
from pathlib import Path

# Tests compile many option variants: one hand-picked config each instead of autotuning.
os.environ.setdefault("FLASH_ATTN_TRI_AUTOTUNE", "0")

import pytest
import torch

from flash_attn_tri.reference import attention_ref
from tri_shared.testing import assert_close, rel_err

# Floors under the FlashAttention rule, for cases where PyTorch in the input dtype happens to
# be almost exact (short rows): fp32 1e-5 (1e-3 where the GPU's tf32 is involved is not the
# case here: fp32 dots are IEEE), fp16 2e-3, bf16 1e-2.
FLOORS = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}


def _check(name, actual, expected_f64, pytorch_lowp, factor):
    """FlashAttention rule: error vs the fp64 reference at most ``factor`` × the error of the
    same computation done by PyTorch in the input dtype (or the dtype floor, if larger)."""
    dtype = actual.dtype
    limit = FLOORS[dtype]
    if dtype != torch.float32:
        limit = max(limit, factor * rel_err(pytorch_lowp, expected_f64))
    if not expected_f64.any():
        # An exactly-zero result (dq with a one-key window: the softmax gradient cancels).
        # The relative error is undefined; the kernel's cancellation leaves rounding of
        # the O(1) terms it subtracts, so hold its RMS to the same limit instead.
        rms = actual.detach().double().pow(2).mean().sqrt().item()
        assert rms <= limit, f"{name}: RMS {rms:.3e} > {limit:.1e} where the result is 0"
        return
    assert_close(actual, expected_f64, max_rel_err=limit, name=name)


@pytest.fixture(autouse=True)
def _fresh_plans():
    """Each test starts and ends without plans (``attention._PLANS``): tests replace module
    functions the plans were made under (``is_hopper``, ``num_sms``, launch recorders)."""
    from flash_attn_tri import attention

    attention._PLANS.clear()
    yield
    attention._PLANS.clear()


@pytest.fixture
def check_grads():
    """``check_grads(outs, refs_f64, refs_lowp, inputs, grad_out)``: compare outputs (2×)
    and the gradients of ``inputs`` (3×) with the fp64 and input-dtype references."""

    def run(out, ref64, reflow, inputs, grad_out, names=("dq", "dk", "dv")):
        _check("out", out, ref64, reflow, 2.0)
        grads = torch.autograd.grad(out, inputs, grad_out)
        g64 = torch.autograd.grad(ref64, inputs, grad_out.double())
        glow = torch.autograd.grad(reflow, inputs, grad_out)
        for n, g, r, lo in zip(names, grads, g64, glow, strict=True):
            _check(n, g, r, lo, 3.0)
        return grads

    return run


@pytest.fixture
def check_against_reference(check_grads):
    """``check_against_reference(out, q, k, v, grad_out, inputs=None, names=..., **opts)``:
    the reference from q, k, v (``attention_ref`` with ``opts``) in fp64 and in q's dtype,
    then :func:`check_grads` of ``out`` and of the gradients of ``inputs`` (q, k, v unless
    given) under ``grad_out``; returns the gradients."""

    def run(out, q, k, v, grad_out, inputs=None, names=("dq", "dk", "dv"), **opts):
        ref64, _ = attention_ref(
            q.double(), k.double(), v.double(), compute_dtype=torch.float64, **opts
        )
        reflow, _ = attention_ref(q, k, v, compute_dtype=q.dtype, **opts)
        inputs = (q, k, v) if inputs is None else inputs
        return check_grads(out, ref64, reflow, inputs, grad_out, names=names)

    return run


def _bench_module(name: str):
    """The module ``bench/<name>.py``, imported from its file."""
    path = Path(__file__).parents[1] / "bench" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def sweep_configs():
    """The module ``bench/sweep_configs.py`` (which configs the sweep times beyond the
    candidate lists, how it ranks them)."""
    return _bench_module("sweep_configs")


@pytest.fixture(scope="session")
def bench_dispatch():
    """The module ``bench/bench_dispatch.py`` (its command line and cases)."""
    return _bench_module("bench_dispatch")


@pytest.fixture(scope="session")
def bench_flash_attn():
    """The module ``bench/bench_flash_attn.py`` (the full benchmark's timing of a case)."""
    return _bench_module("bench_flash_attn")


@pytest.fixture(scope="session")
def trace_forward():
    """The module ``bench/trace_forward.py`` (the Gluon forward with clock marks)."""
    return _bench_module("trace_forward")


@pytest.fixture(scope="session")
def trace_backward():
    """The module ``bench/trace_backward.py`` (the Gluon backward with clock marks)."""
    return _bench_module("trace_backward")
