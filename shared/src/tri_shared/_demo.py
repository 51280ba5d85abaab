"""Demo cases of tri-shared's own kernel (see :mod:`tri_shared.demo`)."""

import torch

from .demo import DemoCase
from .row_softmax import row_softmax
from .testing import randn


def cases(device: torch.device) -> list[DemoCase]:
    rows, cols = (4096, 1000) if device.type == "cuda" else (64, 1000)
    x = randn((rows, cols), seed=0, device=device, scale=3.0)
    return [
        DemoCase(
            "tri_shared.row_softmax",
            f"{rows}x{cols} fp32",
            lambda: row_softmax(x),
            lambda: torch.softmax(x.double(), -1),
            1e-5,
        )
    ]
