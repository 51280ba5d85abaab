"""Matrix products inside kernels, with one rule for fp32 inputs across the packages.

fp32 inputs get exact fp32 products (``input_precision="ieee"``): on the GPU ``tl.dot`` would
otherwise round them to tf32 (about 1e-3 relative error), and the fp32 tests hold kernels to
fp32 accuracy. fp16/bf16 inputs go to the tensor cores as they are; the setting does not
apply to them. Products accumulate in fp32 either way.
"""

import torch
import triton
import triton.language as tl


def ieee_dots(dtype: torch.dtype) -> bool:
    """The ``IEEE`` flag kernels take for inputs of ``dtype``: True for fp32."""
    return dtype == torch.float32


@triton.jit
def dot(a, b, IEEE: tl.constexpr, acc=None):
    """``a @ b`` (+ ``acc``) in fp32; ``IEEE``: exact fp32 products (see the module)."""
    if IEEE:
        return tl.dot(a, b, acc, input_precision="ieee")
    return tl.dot(a, b, acc)
