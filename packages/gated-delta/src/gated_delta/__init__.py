"""Gated DeltaNet kernels in Triton: the fused sigmoid-gating delta-rule update for decode and chunked prefill on a shared state pool."""

__all__: list[str] = []
__version__ = "0.1.0"
