"""Gated DeltaNet kernels in Triton: the fused sigmoid-gating delta-rule update for decode
and chunked prefill on a shared state pool."""

from .chunk import chunk_gated_delta_rule, fused_sigmoid_gating_delta_rule_prefill
from .fused_sigmoid_gating_recurrent import fused_sigmoid_gating_delta_rule_update

__all__: list[str] = [
    "chunk_gated_delta_rule",
    "fused_sigmoid_gating_delta_rule_prefill",
    "fused_sigmoid_gating_delta_rule_update",
]
__version__ = "0.1.0"
