"""Root test configuration: CPU (Triton interpreter) or GPU mode, chosen before any kernel
module is imported."""

import os

import torch

ON_GPU = torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET", "0") in ("", "0")
if not ON_GPU:
    # Triton reads this when a @triton.jit function is defined, so it must be set before any
    # package under test is imported; conftest.py is loaded first.
    os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402


def pytest_report_header(config):
    mode = f"GPU {torch.cuda.get_device_name()}" if ON_GPU else "CPU, Triton interpreter"
    return f"kernel mode: {mode}"


def pytest_collection_modifyitems(config, items):
    if ON_GPU:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (interpreter mode: no CUDA device found)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def device() -> torch.device:
    """The device kernels run on: ``cuda`` on a GPU machine, else ``cpu`` (interpreter)."""
    return torch.device("cuda" if ON_GPU else "cpu")


@pytest.fixture(scope="session")
def on_gpu() -> bool:
    return ON_GPU
