"""Exact attention with the FlashAttention-2 algorithm in Triton, forward and backward; a drop-in
for the flash_attn functions."""

from .attention import (
    flash_attn_func,
    flash_attn_kvpacked_func,
    flash_attn_qkvpacked_func,
    flash_attn_varlen_func,
)

__all__ = [
    "flash_attn_func",
    "flash_attn_kvpacked_func",
    "flash_attn_qkvpacked_func",
    "flash_attn_varlen_func",
]
__version__ = "0.1.0"
