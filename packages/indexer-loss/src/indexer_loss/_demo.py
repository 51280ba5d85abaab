"""Demo cases of indexer-loss (see :mod:`tri_shared.demo`): each operator contributes a list
from its own ``_<op>_cases(device)`` function; ``cases`` concatenates them."""

from __future__ import annotations

import torch

from tri_shared.demo import DemoCase
from tri_shared.testing import randint, randn

from .dense import compute_index_loss_dense
from .reference import index_loss_dense_ref, index_loss_sparse_ref, sparse_attention_target_ref
from .sparse import compute_index_loss_sparse, sparse_attention_target


def _sparse_cases(device: torch.device) -> list[DemoCase]:
    if device.type == "cuda":
        H, S, L, topk, D, dtype, tol = 64, 1024, 2048, 512, 128, torch.bfloat16, 1e-2
    else:
        H, S, L, topk, D, dtype, tol = 8, 32, 64, 48, 64, torch.float32, 1e-5
    off = L - S
    query = randn((1, H, S, D), seed=0, dtype=dtype, device=device)
    key = randn((1, L, D), seed=1, dtype=dtype, device=device)
    index_score = randn((1, S, topk), seed=2, dtype=dtype, device=device)
    indices = randint(-1, L, (1, S, topk), seed=3, device=device)
    scaling = D**-0.5
    shape = f"H={H} S={S} L={L} topk={topk} D={D} {str(dtype).replace('torch.', '')}"
    return [
        DemoCase(
            "indexer_loss.compute_index_loss_sparse",
            shape,
            lambda: compute_index_loss_sparse(query, key, index_score, indices, scaling, off),
            lambda: index_loss_sparse_ref(query, key, index_score, indices, scaling, off),
            tol,
        ),
        DemoCase(
            "indexer_loss.sparse_attention_target",
            shape,
            lambda: sparse_attention_target(query, key, indices, scaling, off),
            lambda: sparse_attention_target_ref(query, key, indices, scaling, off),
            tol,
        ),
    ]


def _dense_cases(device: torch.device) -> list[DemoCase]:
    if device.type == "cuda":
        H, S, L, D, dtype, tol = 64, 1024, 2048, 128, torch.bfloat16, 1e-2
    else:
        H, S, L, D, dtype, tol = 4, 48, 80, 64, torch.float32, 1e-5
    off = L - S
    query = randn((1, H, S, D), seed=10, dtype=dtype, device=device)
    key = randn((1, L, D), seed=11, dtype=dtype, device=device)
    index_score = randn((1, S, L), seed=12, dtype=dtype, device=device)
    scaling = D**-0.5
    return [
        DemoCase(
            "indexer_loss.compute_index_loss_dense",
            f"H={H} S={S} L={L} D={D} {str(dtype).replace('torch.', '')}",
            lambda: compute_index_loss_dense(query, key, index_score, scaling, off),
            lambda: index_loss_dense_ref(query, key, index_score, scaling, off),
            tol,
        )
    ]


def cases(device: torch.device) -> list[DemoCase]:
    """All demo cases of the package (add an operator's list here)."""
    return [*_sparse_cases(device), *_dense_cases(device)]
