"""Demo cases of flash-attn-tri (see :mod:`tri_shared.demo`): causal GQA attention, batched and
packed varlen, against the fp64 reference."""

import torch

from tri_shared.demo import DemoCase
from tri_shared.testing import randn

from .attention import flash_attn_func, flash_attn_varlen_func
from .reference import attention_ref, attention_varlen_ref


def cases(device: torch.device) -> list[DemoCase]:
    gpu = device.type == "cuda"
    dtype = torch.bfloat16 if gpu else torch.float16
    batch, seqlen, heads, heads_k, d = (4, 2048, 16, 4, 128) if gpu else (1, 128, 4, 2, 64)
    q = randn((batch, seqlen, heads, d), seed=0, dtype=dtype, device=device)
    k = randn((batch, seqlen, heads_k, d), seed=1, dtype=dtype, device=device)
    v = randn((batch, seqlen, heads_k, d), seed=2, dtype=dtype, device=device)
    lens = [seqlen // 2, 1, seqlen - 7] if gpu else [50, 1, 77]
    cu = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32, device=device)
    total = sum(lens)
    qv, kv, vv = (t.reshape(-1, *t.shape[2:])[:total] for t in (q, k, v))
    f64 = torch.float64
    limit = 1e-2 if gpu else 2e-3
    return [
        DemoCase(
            "flash_attn_tri.flash_attn_func",
            f"causal GQA {batch}x{seqlen}x{heads}/{heads_k}x{d} {str(dtype)[6:]}",
            lambda: flash_attn_func(q, k, v, causal=True),
            lambda: attention_ref(q.to(f64), k.to(f64), v.to(f64), causal=True, compute_dtype=f64)[
                0
            ],
            limit,
        ),
        DemoCase(
            "flash_attn_tri.flash_attn_varlen_func",
            f"varlen {lens} GQA {heads}/{heads_k}x{d} {str(dtype)[6:]}",
            lambda: flash_attn_varlen_func(qv, kv, vv, cu, cu, max(lens), max(lens), causal=True),
            lambda: attention_varlen_ref(
                qv.to(f64), kv.to(f64), vv.to(f64), cu, cu, causal=True, compute_dtype=f64
            )[0],
            limit,
        ),
    ]
