"""Exact attention with the FlashAttention-2 algorithm in Triton, forward and backward; a drop-in for the flash_attn functions."""

__all__: list[str] = []
__version__ = "0.1.0"
