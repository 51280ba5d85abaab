"""bench/host_offline.py: flash_attn_tri's host path timed without a GPU. Run in a process of
its own (it makes CPU tensors claim to be CUDA ones); checked here on the CPU, which also
runs the Hopper dispatch's Python end to end (checks, kernel choice, descriptors, the
launcher's keys and argument lists) down to the compiled launcher, and the tool's own check
that each case's second call, from its plans, launches what its first call launched."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

TOOL = Path(__file__).parents[1] / "bench" / "host_offline.py"
# (the tool turns the interpreter off itself; the suite turns it on without a GPU)
ENV = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}


def test_host_offline_times_the_hopper_dispatch_and_names_its_kernels():
    flags = ["--calls=3", "--repeats=1", "--head-dim=128,64", "--seqlen=1024,2048"]
    run = subprocess.run(
        [sys.executable, str(TOOL), *flags, "--causal=both"],
        capture_output=True,
        text=True,
        timeout=300,
        env=ENV,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    lines = {}
    for line in run.stdout.splitlines():
        if line.startswith("D="):
            case, _, kernels = line.partition("; kernels: ")
            d, causal, seqlen = case.split(":")[0].replace("=", " ").split()[1::2]
            lines[(int(d), causal == "True", int(seqlen))] = kernels.split()
            assert float(case.split("forward+backward")[1].split()[0]) > 0
    fwd_hopper, fwd_triton = "flash_fwd_hopper_kernel", "_fwd_kernel"
    split = ["flash_bwd_dq_hopper_kernel", "flash_bwd_dkdv_hopper_kernel"]
    fused = ["_bwd_preprocess_kernel", "flash_bwd_dkdv_hopper_kernel"]
    assert lines == {
        (128, True, 1024): [fwd_hopper, *split],
        (128, True, 2048): [fwd_hopper, *split],
        (128, False, 1024): [fwd_hopper, *fused],
        (128, False, 2048): [fwd_hopper, *fused],
        (64, True, 1024): [fwd_triton, *split],
        (64, True, 2048): [fwd_triton, *split],
        (64, False, 1024): [fwd_triton, *split],  # the fused kernel from 2048 tokens
        (64, False, 2048): [fwd_triton, *fused],
    }
    assert "bare autograd.Function" in run.stdout


def test_host_offline_refuses_unknown_flags():
    run = subprocess.run(
        [sys.executable, str(TOOL), "--frobnicate"], capture_output=True, text=True, timeout=120
    )
    assert run.returncode != 0
    assert "--frobnicate" in run.stderr
