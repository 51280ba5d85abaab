"""Triton utilities shared by the operator packages.

Modules: :mod:`~tri_shared.softmax` (online softmax in base 2), :mod:`~tri_shared.offsets`
(tile offsets and pointers), :mod:`~tri_shared.launch` (grids, autotune configs, device
queries), :mod:`~tri_shared.checks` (input validation), :mod:`~tri_shared.testing` and
:mod:`~tri_shared.bench`.
"""

from .row_softmax import row_softmax

__all__ = ["row_softmax"]
__version__ = "0.1.0"
